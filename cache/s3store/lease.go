package s3store

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"sync"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/service/s3"

	"github.com/modproxy/modproxy/cache"
)

// DefaultLeaseTTL is how long a fetch lease lasts without renewal: the
// longest a crashed replica's lease blocks the others.
const DefaultLeaseTTL = 30 * time.Second

// leasePoll is how often a replica waiting on another's lease looks again.
const leasePoll = 200 * time.Millisecond

type leaseBody struct {
	Owner   string    `json:"owner"`
	Expires time.Time `json:"expires"`
}

func (s *Store) leaseKey(k cache.Key) string {
	return s.cfg.Prefix + "lease/" + k.Path + "/@v/" + k.Version + "." + string(k.Kind)
}

func (s *Store) leaseTTL() time.Duration {
	if s.cfg.LeaseTTL > 0 {
		return s.cfg.LeaseTTL
	}
	return DefaultLeaseTTL
}

func newOwner() string {
	var b [12]byte
	rand.Read(b[:])
	return hex.EncodeToString(b[:])
}

// writeLease puts the lease object, conditional on absence (etag "") or
// on replacing the object with etag; it returns the new ETag.
func (s *Store) writeLease(key, owner, etag string) (string, error) {
	body, _ := json.Marshal(leaseBody{Owner: owner, Expires: s.cfg.Now().Add(s.leaseTTL()).UTC()})
	in := &s3.PutObjectInput{Bucket: &s.cfg.Bucket, Key: aws.String(key), Body: bytes.NewReader(body), ContentLength: aws.Int64(int64(len(body)))}
	if etag == "" {
		in.IfNoneMatch = aws.String("*")
	} else {
		in.IfMatch = aws.String(etag)
	}
	ctx, cancel := s.ctx()
	defer cancel()
	out, err := s.c.PutObject(ctx, in)
	if err != nil {
		return "", err
	}
	return aws.ToString(out.ETag), nil
}

func (s *Store) readLease(key string) (leaseBody, string, error) {
	ctx, cancel := s.ctx()
	defer cancel()
	out, err := s.c.GetObject(ctx, &s3.GetObjectInput{Bucket: &s.cfg.Bucket, Key: aws.String(key)})
	if err != nil {
		return leaseBody{}, "", notFound(err)
	}
	defer out.Body.Close()
	var lb leaseBody
	if err := json.NewDecoder(out.Body).Decode(&lb); err != nil {
		// A damaged lease counts as expired: it must not block anyone.
		return leaseBody{}, aws.ToString(out.ETag), nil
	}
	return lb, aws.ToString(out.ETag), nil
}

// AcquireFetch waits until this replica may fetch k from the upstream, so
// that replicas sharing the bucket fetch each artifact once. It returns
// stored=true (and no release) as soon as k is in the bucket, stored by
// another replica; otherwise it holds k's lease, renewed in the background
// until release is called. A lease not renewed (its holder crashed or hung)
// is taken over once it has expired, so it blocks others for at most the
// lease TTL (plus the replicas' clock skew).
//
// The lease is an object written with If-None-Match: * (or, to take over
// an expired one, If-Match on its ETag): S3 lets exactly one of several
// racing replicas write it.
func (s *Store) AcquireFetch(ctx context.Context, k cache.Key) (release func(), stored bool, err error) {
	if err := validKey(k); err != nil {
		return nil, false, fmt.Errorf("lease %s: %w", k, err)
	}
	key := s.leaseKey(k)
	owner := newOwner()
	for {
		if _, err := s.head(s.artifactKey(k)); err == nil {
			return nil, true, nil
		} else if !errors.Is(err, cache.ErrNotFound) {
			return nil, false, fmt.Errorf("lease %s: %w", k, err)
		}
		etag, err := s.writeLease(key, owner, "")
		if err == nil {
			// Stored between the check and the lease? Then no fetch.
			if _, err := s.head(s.artifactKey(k)); err == nil {
				s.dropLease(key, owner)
				return nil, true, nil
			}
			return s.holdLease(key, owner, etag), false, nil
		}
		if !conflict(err) {
			return nil, false, fmt.Errorf("lease %s: %w", k, err)
		}
		lb, cur, err := s.readLease(key)
		switch {
		case errors.Is(err, cache.ErrNotFound):
			continue // released meanwhile: try again at once
		case err != nil:
			return nil, false, fmt.Errorf("lease %s: %w", k, err)
		case !s.cfg.Now().Before(lb.Expires):
			if etag, err := s.writeLease(key, owner, cur); err == nil {
				s.expiredTakeovers.Add(1)
				return s.holdLease(key, owner, etag), false, nil
			} else if !conflict(err) && statusOf(err) != 404 {
				return nil, false, fmt.Errorf("lease %s: take over an expired lease: %w", k, err)
			}
			continue
		}
		s.leaseWaits.Add(1)
		select {
		case <-ctx.Done():
			return nil, false, fmt.Errorf("lease %s: waiting for another replica's fetch: %w", k, ctx.Err())
		case <-time.After(leasePoll):
		}
	}
}

// holdLease renews the lease every third of its TTL until release.
func (s *Store) holdLease(key, owner, etag string) func() {
	stop := make(chan struct{})
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		t := time.NewTicker(s.leaseTTL() / 3)
		defer t.Stop()
		for {
			select {
			case <-stop:
				return
			case <-t.C:
				next, err := s.writeLease(key, owner, etag)
				if err != nil {
					return // taken over (we were too slow) or S3 failing: stop claiming
				}
				etag = next
			}
		}
	}()
	var once sync.Once
	return func() {
		once.Do(func() {
			close(stop)
			wg.Wait()
			s.dropLease(key, owner)
		})
	}
}

// dropLease deletes the lease if it is still owner's.
func (s *Store) dropLease(key, owner string) {
	lb, _, err := s.readLease(key)
	if err != nil || lb.Owner != owner {
		return
	}
	ctx, cancel := s.ctx()
	defer cancel()
	// Not conditional (moto and several S3-compatible services lack
	// conditional deletes): a takeover in the instant between the read and
	// the delete loses its lease, which costs at most one duplicate fetch.
	s.c.DeleteObject(ctx, &s3.DeleteObjectInput{Bucket: &s.cfg.Bucket, Key: aws.String(key)})
}

// LeaseStats counts lease waits (polls while another replica fetched)
// and takeovers of expired leases.
func (s *Store) LeaseStats() (waits, takeovers int64) {
	return s.leaseWaits.Load(), s.expiredTakeovers.Load()
}
