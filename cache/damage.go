package cache

import (
	"errors"
	"fmt"
	"runtime/debug"

	"go.etcd.io/bbolt"

	"github.com/modproxy/modproxy/internal/oneline"
)

// A damaged store file must never crash the process. bbolt trusts the
// pages it reads: a damaged page makes it panic (an assertion, an index out
// of range) or fault (a page number beyond the mapped file). Every
// transaction of this package therefore runs through view or update, which
// turn both into an error wrapping ErrCorrupt. Open checks the page
// structure first (checkFile), because bbolt rebuilds its freelist at Open
// in a goroutine of its own whose panics nobody can recover.

// view runs fn in a read transaction, recovering bbolt's panics.
func (s *Store) view(fn func(*bbolt.Tx) error) (err error) {
	defer debug.SetPanicOnFault(debug.SetPanicOnFault(true))
	defer func() {
		if p := recover(); p != nil {
			err = s.damaged("read", p)
		}
	}()
	return s.db.View(fn)
}

// update runs fn in a write transaction, recovering bbolt's panics. After a
// recovered panic the store refuses further writes: bbolt's in-memory state
// (freelist, pages being written) can no longer be trusted, and writing on
// would spread the damage. Reads go on.
func (s *Store) update(fn func(*bbolt.Tx) error) (err error) {
	if err := s.writeBlocked.Load(); err != nil {
		return *err
	}
	defer debug.SetPanicOnFault(debug.SetPanicOnFault(true))
	defer func() {
		if p := recover(); p != nil {
			err = s.damaged("write", p)
			s.writeBlocked.CompareAndSwap(nil, &err)
		}
	}()
	return s.db.Update(fn)
}

// pageDamage is a recovered bbolt failure; it wraps ErrCorrupt and was
// counted when it was recovered.
type pageDamage struct{ msg string }

func (e *pageDamage) Error() string { return e.msg }
func (e *pageDamage) Unwrap() error { return ErrCorrupt }

func (s *Store) damaged(op string, p any) error {
	s.corruptions.Add(1)
	return &pageDamage{fmt.Sprintf("%v: store file %s is damaged (bbolt failed during a %s: %v); run `modproxy verify --db %s --salvage NEW.db` to copy what is readable",
		ErrCorrupt, s.path, op, p, s.path)}
}

// Corruptions returns the number of times damage was detected since Open:
// chunks failing their checksum, undecodable records, recovered bbolt
// failures. It backs modproxy_store_corruptions_total.
func (s *Store) Corruptions() int64 { return s.corruptions.Load() }

// readFailed handles an error from reading the artifact k with record rec.
// Damage is counted; with Options.QuarantineCorrupt the artifact is
// quarantined (if rec is still the published one), and the returned error
// then wraps ErrNotFound as well, because the artifact is no longer in the
// store: a caller that refetches on a miss refetches it.
func (s *Store) readFailed(k Key, rec *record, err error) error {
	if !errors.Is(err, ErrCorrupt) {
		return err
	}
	var pd *pageDamage
	if errors.As(err, &pd) {
		rec = nil // counted already; the page, not one blob, is damaged
	} else if !s.damageOnce(rec) {
		return err
	}
	if !s.quarantineCorrupt || s.readOnly {
		return err
	}
	var blob uint64 // 0: the record itself is damaged; quarantine whatever is published
	if rec != nil {
		blob = rec.blob
	}
	if qerr := s.quarantineBlob(k, blob, "store corruption: "+oneline.Of(err)); qerr != nil {
		if errors.Is(qerr, ErrNotFound) {
			// Quarantined or replaced meanwhile (another reader saw it too).
			return fmt.Errorf("%w (already quarantined: %w)", err, ErrNotFound)
		}
		return fmt.Errorf("%w; quarantine failed: %w", err, qerr)
	}
	return fmt.Errorf("%w (artifact quarantined: %w)", err, ErrNotFound)
}

// damageOnce counts damage to the blob of rec once per blob, so that eight
// clients reading one bad chunk count one corruption. It reports whether
// this call was the first.
func (s *Store) damageOnce(rec *record) bool {
	if rec == nil || rec.blob == 0 {
		s.corruptions.Add(1)
		return true
	}
	if _, seen := s.damagedBlobs.LoadOrStore(rec.blob, struct{}{}); seen {
		return false
	}
	s.corruptions.Add(1)
	return true
}

// quarantineBlob quarantines k only if its published record still points
// at blob, so that a copy refetched meanwhile is left alone.
func (s *Store) quarantineBlob(k Key, blob uint64, reason string) error {
	key := appendArtifactKey(nil, k)
	return s.update(func(tx *bbolt.Tx) error {
		v := tx.Bucket(bucketArtifacts).Get(key)
		if v == nil {
			return ErrNotFound
		}
		if b, err := recordBlob(v); blob != 0 && err == nil && b != blob {
			return ErrNotFound
		}
		return s.quarantineTx(tx, k, key, v, reason)
	})
}
