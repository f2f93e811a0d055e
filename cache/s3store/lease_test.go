package s3store

import (
	"bytes"
	"context"
	"errors"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/service/s3"

	"github.com/modproxy/modproxy/cache"
	"github.com/modproxy/modproxy/cache/internal/grant"
	"github.com/modproxy/modproxy/internal/tests3"
)

func leaseStores(t *testing.T, n int, ttl time.Duration) []*Store {
	srv := tests3.Start(t)
	srv.SetEnv(t)
	bucket := srv.NewBucket(t)
	var out []*Store
	for range n {
		s, err := New(context.Background(), Config{Bucket: bucket, Prefix: "p/", Endpoint: srv.URL, PathStyle: true, TempDir: t.TempDir(), LeaseTTL: ttl})
		if err != nil {
			t.Fatal(err)
		}
		out = append(out, s)
	}
	return out
}

// Replicas x clients racing for one cold artifact: exactly one fetches,
// the others wait and find it stored.
func TestLeaseOneFetcher(t *testing.T) {
	const replicas, clients = 3, 20
	stores := leaseStores(t, replicas, 5*time.Second)
	k := cache.Key{Path: "example.com/m", Version: "v1.0.0", Kind: cache.KindZip}
	var fetches atomic.Int64
	var wg sync.WaitGroup
	start := make(chan struct{})
	for i := range replicas * clients {
		s := stores[i%replicas]
		wg.Add(1)
		go func() {
			defer wg.Done()
			<-start
			ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
			defer cancel()
			release, stored, err := s.AcquireFetch(ctx, k)
			if err != nil {
				t.Error(err)
				return
			}
			if stored {
				return
			}
			defer release()
			fetches.Add(1)
			time.Sleep(300 * time.Millisecond) // the upstream download
			if _, err := s.Put(k, bytes.NewReader([]byte("zip")), cache.Meta{}, grant.Write{}); err != nil {
				t.Error(err)
			}
		}()
	}
	close(start)
	wg.Wait()
	if n := fetches.Load(); n != 1 {
		t.Fatalf("%d fetches of one artifact by %d replicas x %d clients, want 1", n, replicas, clients)
	}
}

// A holder that dies (never renews, never releases) blocks the others for
// at most the lease TTL.
func TestLeaseOfCrashedHolderExpires(t *testing.T) {
	const ttl = 2 * time.Second
	stores := leaseStores(t, 2, ttl)
	k := cache.Key{Path: "example.com/m", Version: "v1.0.0", Kind: cache.KindZip}
	// The "crashed" replica's lease, written as AcquireFetch writes it but
	// with no renewal behind it.
	if _, err := stores[0].writeLease(stores[0].leaseKey(k), "crashed-replica", ""); err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	release, stored, err := stores[1].AcquireFetch(ctx, k)
	if err != nil || stored {
		t.Fatalf("acquire after a crashed holder: stored %v, %v", stored, err)
	}
	release()
	waited := time.Since(start)
	if waited < ttl-500*time.Millisecond {
		t.Errorf("took over after %v, before the lease's %v expired", waited, ttl)
	}
	if _, takeovers := stores[1].LeaseStats(); takeovers != 1 {
		t.Errorf("takeovers %d, want 1", takeovers)
	}
	// Released: the next replica gets it at once.
	release, stored, err = stores[0].AcquireFetch(ctx, k)
	if err != nil || stored {
		t.Fatalf("acquire after release: %v %v", stored, err)
	}
	release()
}

// A holder that keeps renewing keeps the lease past its TTL.
func TestLeaseRenewed(t *testing.T) {
	const ttl = 900 * time.Millisecond
	stores := leaseStores(t, 2, ttl)
	k := cache.Key{Path: "example.com/m", Version: "v1.0.0", Kind: cache.KindZip}
	release, _, err := stores[0].AcquireFetch(context.Background(), k)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 3*ttl)
	defer cancel()
	if _, _, err := stores[1].AcquireFetch(ctx, k); err == nil {
		t.Fatal("a renewed lease was taken over")
	}
	release()
}

// halfBody sends half its length, then blocks until the request is cut.
type halfBody struct {
	ctx  context.Context
	sent int
	half int
	cut  func()
}

func (h *halfBody) Read(p []byte) (int, error) {
	if h.sent >= h.half {
		h.cut() // the process dies with half the object sent
		<-h.ctx.Done()
		return 0, h.ctx.Err()
	}
	n := min(len(p), h.half-h.sent)
	for i := range p[:n] {
		p[i] = 'x'
	}
	h.sent += n
	return n, nil
}

// An upload cut in the middle (the writer killed) leaves no object: S3
// publishes an object only when its upload completes.
func TestUploadCutMidwayLeavesNoObject(t *testing.T) {
	s := leaseStores(t, 1, 0)[0]
	k := cache.Key{Path: "example.com/m", Version: "v1.0.0", Kind: cache.KindZip}
	hdr, err := encodeMeta(cache.Meta{Size: 4 << 20})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	body := &halfBody{ctx: ctx, half: 2 << 20, cut: cancel}
	_, err = s.c.PutObject(ctx, &s3.PutObjectInput{
		Bucket: &s.cfg.Bucket, Key: aws.String(s.artifactKey(k)), Body: body,
		ContentLength: aws.Int64(4 << 20), IfNoneMatch: aws.String("*"), Metadata: map[string]string{metaHeader: hdr},
	})
	if err == nil {
		t.Fatal("cut upload succeeded")
	}
	if _, err := s.Stat(k); !errors.Is(err, cache.ErrNotFound) {
		t.Fatalf("after a cut upload: %v, want no object", err)
	}
	// And the key is free for a whole upload.
	if _, err := s.Put(k, bytes.NewReader([]byte("whole")), cache.Meta{}, grant.Write{}); err != nil {
		t.Fatal(err)
	}
}
