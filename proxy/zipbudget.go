package proxy

import (
	"context"
	"fmt"
	"net/http"
	"sync/atomic"
	"time"
)

// Defaults of the zip download budget (Config.MaxZipDownloads and friends).
const (
	DefaultMaxZipDownloads = 16
	DefaultZipQueue        = 256
	DefaultZipQueueWait    = 30 * time.Second
	// zipRetryAfter is the Retry-After of a download refused for want of
	// a slot or spool space: long enough for a slot to turn over.
	zipRetryAfter = 10 * time.Second
)

// downloadSlots bounds concurrent upstream zip downloads. A download over
// the limit waits in a bounded queue for a bounded time, then is refused
// with 503 and Retry-After: better a client that retries than a proxy that
// runs out of sockets, memory or spool disk.
type downloadSlots struct {
	slots    chan struct{}
	queued   atomic.Int64
	maxQueue int64
	wait     time.Duration
	m        *Metrics
}

func newDownloadSlots(n, queue int, wait time.Duration, m *Metrics) *downloadSlots {
	return &downloadSlots{slots: make(chan struct{}, n), maxQueue: int64(queue), wait: wait, m: m}
}

// acquire takes a slot, waiting in the queue if need be. The returned
// release gives it back. It fails with a 503 *HTTPError when the queue is
// full or the wait is over, and with ctx's error when ctx ends first.
func (s *downloadSlots) acquire(ctx context.Context) (release func(), err error) {
	release = func() {
		<-s.slots
		s.m.zipInFlight.Dec()
	}
	select {
	case s.slots <- struct{}{}:
		s.m.zipInFlight.Inc()
		return release, nil
	default:
	}
	if s.queued.Add(1) > s.maxQueue {
		s.queued.Add(-1)
		s.m.zipRejected.WithLabelValues("queue_full").Inc()
		return nil, busyf("zip download refused: %d downloads running and %d queued; retry later", cap(s.slots), s.maxQueue)
	}
	s.m.zipQueued.Inc()
	defer func() {
		s.queued.Add(-1)
		s.m.zipQueued.Dec()
	}()
	t := time.NewTimer(s.wait)
	defer t.Stop()
	select {
	case s.slots <- struct{}{}:
		s.m.zipInFlight.Inc()
		return release, nil
	case <-t.C:
		s.m.zipRejected.WithLabelValues("queue_timeout").Inc()
		return nil, busyf("zip download refused: no download slot free within %s (%d running); retry later", s.wait, cap(s.slots))
	case <-ctx.Done():
		return nil, ctx.Err()
	}
}

// busyf is a 503 with Retry-After: the proxy is at its limit, not broken.
func busyf(format string, args ...any) *HTTPError {
	return &HTTPError{Status: http.StatusServiceUnavailable, Msg: fmt.Sprintf(format, args...), RetryAfter: zipRetryAfter}
}

// spoolQuota accounts for the bytes of every spool file and bounds them
// (limit 0: accounted, unbounded).
type spoolQuota struct {
	limit int64
	used  atomic.Int64
	m     *Metrics
}

// spoolLease is the share of the quota held by one spool file.
type spoolLease struct {
	q *spoolQuota
	n atomic.Int64
}

func (q *spoolQuota) lease() *spoolLease { return &spoolLease{q: q} }

// grow adds n bytes to the lease, or reports false (adding nothing) when
// that would exceed the quota.
func (l *spoolLease) grow(n int64) bool {
	q := l.q
	for {
		used := q.used.Load()
		if q.limit > 0 && used+n > q.limit {
			return false
		}
		if q.used.CompareAndSwap(used, used+n) {
			l.n.Add(n)
			q.m.spoolBytes.Add(float64(n))
			return true
		}
	}
}

// release gives the lease's bytes back; the spool file is gone (or about
// to be: followers may still hold descriptors of an unlinked file).
func (l *spoolLease) release() {
	if l == nil {
		return
	}
	n := l.n.Swap(0)
	l.q.used.Add(-n)
	l.q.m.spoolBytes.Sub(float64(n))
}

// spoolFull is the error of a download that does not fit the spool quota.
func (q *spoolQuota) full(size int64) *HTTPError {
	if size > q.limit {
		return &HTTPError{Status: http.StatusInsufficientStorage,
			Msg: fmt.Sprintf("insufficient storage: zip of %d bytes is larger than the whole spool quota (%d bytes)", size, q.limit)}
	}
	q.m.zipRejected.WithLabelValues("spool_quota").Inc()
	return busyf("zip download refused: the spool quota (%d bytes) is in use by other downloads; retry later", q.limit)
}
