package proxy

import (
	"context"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"strings"
	"time"

	"github.com/modproxy/modproxy/cache"
	"github.com/modproxy/modproxy/cache/gate"
	"github.com/modproxy/modproxy/sumdb"
)

// reverifier verifies, in the background, the .mod and .zip artifacts
// stored in state unverified (under VerifyFailOpen while the database was
// unreachable) once the database answers again. A mismatch
// quarantines the artifact (the next request fetches and verifies it
// anew), is counted and logged at Error.
//
// It runs one pass at start (artifacts of an earlier run) and, after each
// fail-open store, passes every retry interval until one finds the
// database reachable. Passes are sequential and each verification bounded
// by verifyTimeout, so the load is one lookup (and one spooled zip) at a
// time. It is owned by the Fetcher: Fetcher.Close stops it.
//
// An artifact verified here keeps its state (the store has no update of
// committed metadata); a mutable entry "reverified/<key>" records the hash
// it matched, for the SHA-256 of the content it checked.
type reverifier struct {
	store    Store
	v        Verifier
	health   Health
	log      *slog.Logger
	m        *Metrics
	spoolDir string
	retry    time.Duration
	notifyC  chan struct{}
}

// verifyTimeout bounds one background verification.
const verifyTimeout = 2 * time.Minute

func newReverifier(f *Fetcher, retry time.Duration) *reverifier {
	return &reverifier{
		store:    f.store,
		v:        f.cfg.Verifier,
		health:   f.health,
		log:      f.log,
		m:        f.m,
		spoolDir: f.cfg.SpoolDir,
		retry:    retry,
		notifyC:  make(chan struct{}, 1),
	}
}

// notify tells the reverifier that an artifact was stored unverified.
func (r *reverifier) notify() {
	select {
	case r.notifyC <- struct{}{}:
	default:
	}
}

// run passes until ctx is done.
func (r *reverifier) run(ctx context.Context) {
	pending := r.startPending()
	var timer *time.Timer
	var timerC <-chan time.Time
	defer func() {
		if timer != nil {
			timer.Stop()
		}
	}()
	for {
		if pending {
			done, err := r.pass(ctx)
			if ctx.Err() != nil {
				return
			}
			if err != nil {
				r.log.Warn("background re-verification of unverified artifacts stopped", "err", err)
			}
			pending = !done
			if pending && timerC == nil {
				timer = time.NewTimer(r.retry)
				timerC = timer.C
			}
		}
		select {
		case <-ctx.Done():
			return
		case <-r.notifyC:
			// The database was unreachable just now: try after the
			// retry interval, not at once.
			if timerC == nil {
				timer = time.NewTimer(r.retry)
				timerC = timer.C
			}
		case <-timerC:
			timerC = nil
			pending = true
		}
	}
}

// pass verifies every unverified artifact once. done is false when the
// database could not be asked (the pass stopped early, to be retried).
func (r *reverifier) pass(ctx context.Context) (done bool, err error) {
	type item struct {
		k cache.Key
		m cache.Meta
	}
	// Read before the walk: a pass that leaves nothing to verify marks
	// the store clean only if no unverified commit changed it since.
	var mark []byte
	if e, err := r.store.GetEntry(gate.UnverifiedMarker); err == nil {
		mark = e.Value
	} else if !errors.Is(err, cache.ErrNotFound) {
		return false, fmt.Errorf("reading %s: %w", gate.UnverifiedMarker, err)
	}
	var todo []item
	err = r.store.Walk(func(k cache.Key, m cache.Meta) error {
		if (k.Kind == cache.KindMod || k.Kind == cache.KindZip) && m.State == cache.StateUnverified && !r.v.Exempt(k.Path) && !r.checked(k, m) {
			todo = append(todo, item{k, m})
		}
		return ctx.Err()
	})
	if err != nil {
		return false, fmt.Errorf("walking store: %w", err)
	}
	if len(todo) > 0 {
		r.log.Info("verifying artifacts stored unverified", "count", len(todo))
	}
	unsettled := 0
	for i, it := range todo {
		if ctx.Err() != nil {
			return false, ctx.Err()
		}
		reachable, settled := r.verifyOne(ctx, it.k, it.m)
		if !reachable {
			r.log.Info("checksum database unreachable: background verification paused", "done", i, "left", len(todo)-i, "retry", r.retry)
			return false, nil
		}
		if !settled {
			unsettled++
		}
	}
	if len(todo) > 0 {
		r.log.Info("background verification pass done", "count", len(todo), "unsettled", unsettled)
	}
	// Artifacts the database does not know, or that failed otherwise, are
	// looked at again at the next start.
	if unsettled == 0 && string(mark) != gate.MarkerClean {
		if _, err := r.store.SwapEntry(gate.UnverifiedMarker, mark, []byte(gate.MarkerClean)); err != nil {
			r.log.Warn("cannot mark the store clean of unverified artifacts; the next start walks it again", "err", err)
		}
	}
	return true, nil
}

// startPending reports whether the store may hold unverified artifacts
// of an earlier run (see gate.UnverifiedMarker): only a clean marker lets
// the start skip its walk.
func (r *reverifier) startPending() bool {
	e, err := r.store.GetEntry(gate.UnverifiedMarker)
	return err != nil || string(e.Value) != gate.MarkerClean
}

// checkedKey is the mutable entry recording a background verification.
func checkedKey(k cache.Key) string {
	return "reverified/" + k.Path + "@" + k.Version + "." + string(k.Kind)
}

// checked reports whether this content of k was verified here before.
func (r *reverifier) checked(k cache.Key, m cache.Meta) bool {
	e, err := r.store.GetEntry(checkedKey(k))
	if err != nil {
		return false
	}
	sum, _, _ := strings.Cut(string(e.Value), " ")
	return sum == hex.EncodeToString(m.SHA256[:])
}

// verifyOne verifies one artifact; reachable is false when the database
// could not be asked, so that the pass stops; settled is true when the
// artifact is verified or quarantined, so that no start need look at it
// again.
func (r *reverifier) verifyOne(ctx context.Context, k cache.Key, m cache.Meta) (reachable, settled bool) {
	ctx, cancel := context.WithTimeout(ctx, verifyTimeout)
	defer cancel()
	hash, err := r.verify(ctx, k)
	kind := string(k.Kind)
	switch {
	case err == nil:
		r.m.reverified.WithLabelValues(kind, "ok").Inc()
		if perr := r.store.PutEntry(checkedKey(k), []byte(hex.EncodeToString(m.SHA256[:])+" "+hash)); perr != nil {
			r.log.Warn("cannot record background verification", "module", k.Path, "version", k.Version, "kind", kind, "err", perr)
		}
		r.log.Debug("verified artifact stored unverified", "module", k.Path, "version", k.Version, "kind", kind, "hash", hash)
		return true, true
	case errors.Is(err, sumdb.ErrMismatch), errors.Is(err, gate.ErrContent):
		r.m.reverified.WithLabelValues(kind, "mismatch").Inc()
		if r.health != nil && m.Upstream != "" {
			r.health.ReportChecksumFailure(m.Upstream)
		}
		qerr := r.store.Quarantine(k, "background verification: "+err.Error())
		r.log.Error("artifact stored unverified (fail-open) disagrees with the checksum database: quarantined",
			"module", k.Path, "version", k.Version, "kind", kind, "upstream", m.Upstream, "err", err, "quarantine_err", qerr)
		return true, qerr == nil
	case errors.Is(err, sumdb.ErrNotFound):
		r.m.reverified.WithLabelValues(kind, "not_found").Inc()
		r.log.Warn("artifact stored unverified is not in the checksum database", "module", k.Path, "version", k.Version, "kind", kind, "err", err)
	case errors.Is(err, sumdb.ErrUnavailable), errors.Is(err, sumdb.ErrSecurity),
		errors.Is(err, context.DeadlineExceeded), errors.Is(err, context.Canceled):
		r.m.reverified.WithLabelValues(kind, "unavailable").Inc()
		r.log.Debug("checksum database not reachable for background verification", "err", err)
		return false, false
	default:
		r.m.reverified.WithLabelValues(kind, "error").Inc()
		r.log.Warn("background verification failed", "module", k.Path, "version", k.Version, "kind", kind, "err", err)
	}
	return true, false
}

// verify runs the gate's content checks on a stored artifact and asks the
// Verifier about its hash.
func (r *reverifier) verify(ctx context.Context, k cache.Key) (string, error) {
	var (
		hash string
		err  error
	)
	if k.Kind == cache.KindMod {
		data, _, rerr := r.store.Get(k)
		if rerr != nil {
			return "", fmt.Errorf("reading %s: %w", k, rerr)
		}
		hash, err = gate.CheckMod(k.Path, k.Version, data)
	} else {
		hash, err = gate.HashZip(k, func() (io.ReadCloser, error) { return r.store.Open(k) }, r.spoolDir)
	}
	if err != nil {
		return "", err
	}
	if _, err := r.v.VerifyHash(ctx, string(k.Kind), k.Path, k.Version, hash); err != nil {
		return "", err
	}
	return hash, nil
}
