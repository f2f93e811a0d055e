package proxy

import (
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/modproxy/modproxy/cache"
	"github.com/modproxy/modproxy/cache/gate"
)

// errStreamFailed is the error of an upstream that could not resume a zip
// that had already been streamed to clients when its download failed (a
// copy of another size, a bad Content-Range, a local spool error). The
// flight goes on to the next upstream the list allows, which resumes in
// turn; when none can, the clients' connections are aborted.
var errStreamFailed = errors.New("download failed after streaming to clients began")

// zipFlight is one in-progress zip download shared by every client that
// asks for the zip meanwhile.
//
// A download goes to a spool file. Clients wait while the first
// HoldBackBytes/HoldBackTime of it arrive: a zip that completes in that
// window (most module zips) is checked and verified before a byte is
// sent, so a bad copy still gets a clean error status and the next
// upstream's copy. A larger or slower zip is streamed to the clients from
// the spool as it arrives; its last byte is withheld until it is verified,
// and the clients' connections are aborted if it fails, so no client ever
// sees a clean end of a bad zip. Either way, the clients read a verified
// zip from the spool while it is committed to the store.
//
// A flight runs on its own context: when every client waiting for it (or
// following its stream) has left, it is cancelled and forgotten, unless a
// prewarm asked for it. It holds one of the Fetcher's download slots while
// it talks to upstreams, and its spool file's bytes count against the spool
// quota until the file is removed.
type zipFlight struct {
	ctx    context.Context
	cancel context.CancelFunc

	mu        sync.Mutex
	changed   chan struct{} // closed and replaced on every state change
	streaming bool          // clients may read the spool
	spool     string        // the spool file clients read (streaming or pass-through)
	written   int64         // bytes in the spool
	size      int64         // Content-Length of the streaming attempt, or -1
	done      bool
	err       error
	// verified: the spool holds the whole zip and the gate accepted it.
	// Followers may take its last byte; the store commit that follows is
	// not the client's wait (a 50 MB zip spent ~0.2 s there). Nor is it
	// cancelled when the last client leaves: the zip is complete.
	verified atomic.Bool
	rt       route
	// unstored: the zip was verified but the store had no room; clients
	// are served the spool file, which stays until the last of them opened
	// it.
	unstored bool

	// Guarded by Fetcher.zipMu.
	waiting   int         // clients inside Fetcher.Zip
	following int         // clients reading the spool (streaming or unstored)
	keep      bool        // a prewarm asked: never cancelled for want of clients
	finished  bool        // runZip returned
	owned     *os.File    // the spool file clients read, held open (and locked) until removed
	lease     *spoolLease // its share of the spool quota
}

func newZipFlight(parent context.Context) *zipFlight {
	ctx, cancel := context.WithCancel(parent)
	return &zipFlight{ctx: ctx, cancel: cancel, changed: make(chan struct{}), size: -1}
}

// update changes the flight's state under its lock and wakes waiters.
func (fl *zipFlight) update(fn func()) {
	fl.mu.Lock()
	fn()
	close(fl.changed)
	fl.changed = make(chan struct{})
	fl.mu.Unlock()
}

// ZipMode says what a caller of Fetcher.Zip may receive while the zip is
// still downloading.
type ZipMode int

const (
	// ZipWait returns only a complete zip (HEAD requests).
	ZipWait ZipMode = iota
	// ZipStream follows a download in progress: for clients that see an
	// aborted connection as an error (HTTP/1.1 chunked, HTTP/2).
	ZipStream
	// ZipStreamSized follows a download only when its size is known, so
	// that a withheld last byte marks a failure; otherwise it waits for
	// the committed zip. For HTTP/1.0 clients, whose answer of unknown
	// length ends with a close that looks complete.
	ZipStreamSized
	// ZipPrewarm waits for the complete zip, and the download goes on
	// even if the caller leaves.
	ZipPrewarm
)

// ZipResult is a zip ready to serve: either a reader of the stored zip, or a
// stream that follows a download in progress, or a complete zip the store
// had no room for (Unstored).
type ZipResult struct {
	Reader cache.ArtifactReader // non-nil when the zip is stored
	Cache  string
	Route  route
	// Unstored: a verified zip served from the spool because the store's
	// disk was full; Size is its length.
	Unstored bool
	Size     int64
	flight   *zipFlight
	spool    *os.File
	release  func()
}

// Close releases the reader or spool file.
func (z *ZipResult) Close() error {
	if z.Reader != nil {
		return z.Reader.Close()
	}
	var err error
	if z.spool != nil {
		err = z.spool.Close()
	}
	if z.release != nil {
		z.release()
		z.release = nil
	}
	return err
}

// Zip returns the zip named by req: from the store, or from a download
// shared with concurrent requests; mode says whether the caller may follow
// a download in progress.
func (f *Fetcher) Zip(ctx context.Context, req Request, mode ZipMode) (*ZipResult, error) {
	key := cache.Key{Path: req.Module, Version: req.Version, Kind: cache.KindZip}
	r, err := f.store.Open(key)
	if err == nil {
		return &ZipResult{Reader: r, Cache: "hit"}, nil
	}
	if !errors.Is(err, cache.ErrNotFound) {
		return nil, fmt.Errorf("read %s from store: %w", req, err)
	}
	if f.cfg.Offline {
		return nil, notFoundf("%s.zip is not in the store (offline mode)", req)
	}
	negKey := req.String() + ".zip"
	if herr := f.neg.get(negKey); herr != nil {
		return nil, herr
	}

	f.zipMu.Lock()
	fl, joined := f.zipFlights[key]
	if !joined {
		if !f.startWork() {
			f.zipMu.Unlock()
			return nil, fmt.Errorf("fetch %s.zip: %w", req, errFetcherClosed)
		}
		fl = newZipFlight(f.ctx)
		f.zipFlights[key] = fl
		go func() {
			defer f.wg.Done()
			f.runZip(key, req, fl)
		}()
	} else {
		f.m.fetchShared.WithLabelValues(string(KindZip)).Inc()
	}
	fl.waiting++
	fl.keep = fl.keep || mode == ZipPrewarm
	f.zipMu.Unlock()

	follows := false
	defer func() { f.leaveZip(key, fl, follows) }()
	for {
		fl.mu.Lock()
		done, streaming, ch, size := fl.done, fl.streaming, fl.changed, fl.size
		ferr, rt, unstored, spoolName, written := fl.err, fl.rt, fl.unstored, fl.spool, fl.written
		// Unstored is set once the zip is verified, whole in the spool
		// (commitZip): it is served from there whether or not the flight
		// has ended. Following it as a stream instead gave a client that
		// joined in between an unstored answer of no length: an empty 200.
		if streaming && !done && !unstored && (mode == ZipStream || mode == ZipStreamSized && size >= 0) {
			// The route is known once the zip is verified (commitZip).
			spool, err := os.Open(fl.spool)
			fl.mu.Unlock()
			if err != nil {
				return nil, fmt.Errorf("follow download of %s: %w", req, err)
			}
			follows = true
			return &ZipResult{Cache: "miss", Route: rt, flight: fl, spool: spool, release: f.unfollow(key, fl)}, nil
		}
		fl.mu.Unlock()
		if unstored && mode == ZipPrewarm {
			// Prewarm is there to store: a zip it cannot keep failed.
			return nil, insufficientStorage("%s.zip was verified but not stored: the store's disk is full", req)
		}
		if unstored {
			spool, err := os.Open(spoolName)
			if err != nil {
				return nil, fmt.Errorf("read unstored download of %s: %w", req, err)
			}
			follows = true
			return &ZipResult{Cache: "miss", Route: rt, Unstored: true, Size: written, spool: spool, release: f.unfollow(key, fl)}, nil
		}
		if done {
			if ferr != nil {
				return nil, ferr
			}
			r, err := f.store.Open(key)
			if err != nil {
				return nil, fmt.Errorf("read %s from store after download: %w", req, err)
			}
			return &ZipResult{Reader: r, Cache: "miss", Route: rt}, nil
		}
		select {
		case <-ch:
		case <-ctx.Done():
			return nil, ctx.Err()
		}
	}
}

// leaveZip is a client leaving Fetcher.Zip, either with its own descriptor
// of the spool (follows) or done with the flight.
func (f *Fetcher) leaveZip(key cache.Key, fl *zipFlight, follows bool) {
	f.zipMu.Lock()
	defer f.zipMu.Unlock()
	fl.waiting--
	if follows {
		fl.following++
	}
	f.settleLocked(key, fl)
}

// unfollow returns the release of a client reading the spool.
func (f *Fetcher) unfollow(key cache.Key, fl *zipFlight) func() {
	return func() {
		f.zipMu.Lock()
		defer f.zipMu.Unlock()
		fl.following--
		f.settleLocked(key, fl)
	}
}

// settleLocked cancels a flight nobody wants any more and removes the spool
// of a finished one once no client is about to open it. f.zipMu is held.
func (f *Fetcher) settleLocked(key cache.Key, fl *zipFlight) {
	if fl.finished {
		if fl.waiting == 0 {
			f.dropSpoolLocked(fl)
		}
		return
	}
	if fl.waiting+fl.following > 0 || fl.keep || fl.verified.Load() || fl.ctx.Err() != nil {
		return
	}
	// Every client left: stop the download, and let the next request for
	// this zip start afresh rather than join a dying flight.
	if f.zipFlights[key] == fl {
		delete(f.zipFlights, key)
	}
	fl.cancel()
	f.m.zipCanceled.Inc()
}

// dropSpoolLocked removes the flight's spool file; followers keep reading
// through their own descriptors. f.zipMu is held.
func (f *Fetcher) dropSpoolLocked(fl *zipFlight) {
	if fl.owned == nil {
		return
	}
	if err := os.Remove(fl.owned.Name()); err != nil && !errors.Is(err, os.ErrNotExist) {
		f.log.Warn("cannot remove spool file", "file", fl.owned.Name(), "err", err)
	}
	fl.owned.Close()
	fl.owned = nil
	fl.lease.release()
}

// runZip downloads, checks, verifies and stores one zip, trying upstreams
// in turn, and publishes the outcome to fl.
func (f *Fetcher) runZip(key cache.Key, req Request, fl *zipFlight) {
	defer fl.cancel()
	var ferr error
	var rt route
	storedElsewhere := false
	if l, ok := f.store.(FetchLeaser); ok {
		// Before a download slot: waiting for another replica's fetch
		// must not hold one.
		release, stored, err := l.AcquireFetch(fl.ctx, key)
		switch {
		case err != nil && fl.ctx.Err() != nil:
			ferr = fl.ctx.Err()
		case err != nil:
			ferr = &HTTPError{Status: http.StatusBadGateway, Err: err, Msg: fmt.Sprintf("%s.zip: cannot coordinate the fetch with the other replicas: %v", req, err)}
		case stored:
			// Another replica fetched it; waiters read the store.
			storedElsewhere = true
			f.m.fetchShared.WithLabelValues(string(KindZip)).Inc()
		default:
			defer release()
		}
	}
	if ferr != nil || storedElsewhere {
		// Nothing to download.
	} else if release, err := f.slots.acquire(fl.ctx); err != nil {
		ferr = err
	} else {
		ups, private := f.upstreamsFor(req.Module)
		// The .mod's verification normally stored the record already; only
		// without it is the lookup worth starting alongside the download.
		if m, err := f.store.Stat(cache.Key{Path: req.Module, Version: req.Version, Kind: cache.KindMod}); err != nil || m.State != cache.StateVerified {
			f.lookupAhead(f.ctx, req, private)
		}
		vz, rt1, errs := tryUpstreams(fl.ctx, f, ups, false, req, func(ctx context.Context, u Upstream) (verifiedZip, error) {
			return f.downloadZip(ctx, key, req, u, fl)
		})
		release()
		if rt = rt1; rt.upstream == "" {
			ferr = f.zipFailure(req, ups, errs, fl.ctx.Err() != nil)
		} else {
			f.commitZip(req, fl, vz, rt)
		}
	}
	switch {
	case storedElsewhere:
	case ferr == nil:
		f.m.fetches.WithLabelValues(string(KindZip), "ok").Inc()
	case fl.ctx.Err() != nil && f.ctx.Err() == nil:
		f.log.Debug("zip download cancelled: every client left", "module", req.Module, "version", req.Version)
	default:
		f.m.fetches.WithLabelValues(string(KindZip), "error").Inc()
		f.log.Warn("zip fetch failed", "module", req.Module, "version", req.Version, "err", oneLine(ferr.Error()))
	}
	// Finished before done: a client that sees done and leaves must not
	// take the flight for one still running and cancel it.
	f.zipMu.Lock()
	fl.finished = true
	if f.zipFlights[key] == fl {
		delete(f.zipFlights, key)
	}
	f.zipMu.Unlock()
	fl.update(func() { fl.done, fl.err, fl.rt = true, ferr, rt })
	f.zipMu.Lock()
	f.settleLocked(key, fl)
	f.zipMu.Unlock()
}

// zipFailure sums up a failed zip flight for its clients. A refusal of the
// proxy's own (busy, no space) is answered as such, not as an upstream
// failure. The upstreams' answer is remembered by the negative cache's rule
// (not found for the negative TTL, errors for a short backoff), unless the
// flight was cancelled because every client left.
func (f *Fetcher) zipFailure(req Request, ups []Upstream, errs []error, cancelled bool) error {
	for _, err := range errs {
		if herr, ok := err.(*HTTPError); ok {
			return herr
		}
	}
	herr := fetchFailure(req, ups, errs)
	if !cancelled {
		f.neg.put(req.String()+".zip", herr)
	}
	return herr
}

// downloadZip is one upstream attempt of runZip. When an earlier attempt
// had begun streaming to clients before it failed (a stalled flow, a
// reset), this attempt resumes the flight's spool from where it stopped:
// with "Range: bytes=N-" where the upstream supports it, else by skipping
// the first N bytes of the whole file. The clients' streams go on; the copy
// is checked and verified as a whole before its last byte is released, so a
// mismatched copy still fails them.
func (f *Fetcher) downloadZip(ctx context.Context, key cache.Key, req Request, u Upstream, fl *zipFlight) (_ verifiedZip, err error) {
	fl.mu.Lock()
	committed, have, size := fl.streaming, fl.written, fl.size
	fl.mu.Unlock()
	if committed {
		return f.resumeZip(ctx, key, req, u, fl, have, size)
	}
	resp, err := f.get(ctx, u, req.URLPath())
	if err != nil {
		return verifiedZip{}, err
	}
	defer resp.Body.Close()
	if resp.ContentLength > gate.MaxZip {
		return verifiedZip{}, &UpstreamError{Upstream: u.Name(), Err: fmt.Errorf("%w: zip of %s is %d bytes, over the %d-byte limit", errBadContent, req, resp.ContentLength, gate.MaxZip)}
	}
	lease := f.quota.lease()
	if resp.ContentLength > 0 {
		// Reserve a known size up front: refusing now is cheaper than
		// refusing at 90%.
		if !lease.grow(resp.ContentLength) {
			return verifiedZip{}, f.quota.full(resp.ContentLength)
		}
		if err := f.disk.room(f.cfg.SpoolDir, resp.ContentLength); err != nil {
			lease.release()
			return verifiedZip{}, insufficientStorage("cannot spool zip of %s: %v", req, err)
		}
	}
	spool, err := os.CreateTemp(f.cfg.SpoolDir, spoolPrefix+"*")
	if err != nil {
		lease.release()
		if isNoSpace(err) {
			f.disk.markFull(f.cfg.SpoolDir, oneLine(err.Error()))
			return verifiedZip{}, insufficientStorage("cannot spool zip of %s: %v", req, err)
		}
		return verifiedZip{}, fmt.Errorf("spool zip of %s: %w", req, err)
	}
	if _, err := lockSpool(spool); err != nil {
		f.log.Warn("cannot lock spool file; a restart may remove it while in use", "file", spool.Name(), "err", err)
	}
	return f.receiveZip(ctx, key, req, u, fl, resp.Body, resp.ContentLength, spool, lease, 0)
}

// resumeZip continues the flight's streaming spool, of which have bytes (of
// size, -1 unknown) are in place, from upstream u.
func (f *Fetcher) resumeZip(ctx context.Context, key cache.Key, req Request, u Upstream, fl *zipFlight, have, size int64) (verifiedZip, error) {
	fail := func(err error) (verifiedZip, error) {
		return verifiedZip{}, &UpstreamError{Upstream: u.Name(), Err: fmt.Errorf("%w: resuming at byte %d: %w", errStreamFailed, have, err)}
	}
	f.zipMu.Lock()
	spool, lease := fl.owned, fl.lease
	f.zipMu.Unlock()
	if spool == nil {
		return fail(errors.New("the spool is gone"))
	}
	hreq, err := http.NewRequestWithContext(ctx, http.MethodGet, u.URL+"/"+req.URLPath(), nil)
	if err != nil {
		return fail(err)
	}
	hreq.Header.Set("User-Agent", "modproxy")
	hreq.Header.Set("Range", fmt.Sprintf("bytes=%d-", have))
	resp, err := f.cfg.Client.Do(hreq)
	if err != nil {
		return verifiedZip{}, &UpstreamError{Upstream: u.Name(), Err: err}
	}
	defer resp.Body.Close()
	how := "range"
	switch resp.StatusCode {
	case http.StatusPartialContent:
		var first, last, total int64
		if _, err := fmt.Sscanf(resp.Header.Get("Content-Range"), "bytes %d-%d/%d", &first, &last, &total); err != nil ||
			first != have || (size >= 0 && total != size) || last != total-1 {
			return fail(fmt.Errorf("Content-Range %q does not continue %d bytes of %d", resp.Header.Get("Content-Range"), have, size))
		}
	case http.StatusOK:
		if size >= 0 && resp.ContentLength >= 0 && resp.ContentLength != size {
			return fail(fmt.Errorf("a %d-byte copy cannot continue a %d-byte one", resp.ContentLength, size))
		}
		// No range support: the whole file, of which the first bytes are
		// already in the spool.
		how = "full_body"
		if _, err := io.CopyN(io.Discard, resp.Body, have); err != nil {
			return verifiedZip{}, &UpstreamError{Upstream: u.Name(), Err: fmt.Errorf("read zip of %s: %w", req, err)}
		}
	default:
		msg, _ := io.ReadAll(io.LimitReader(resp.Body, 1024))
		line, _, _ := strings.Cut(strings.TrimSpace(string(msg)), "\n")
		return verifiedZip{}, &StatusError{Upstream: u.Name(), Status: resp.StatusCode, Msg: line}
	}
	// Bytes past have were never published to the clients: drop them.
	if err := spool.Truncate(have); err != nil {
		return fail(err)
	}
	if _, err := spool.Seek(have, io.SeekStart); err != nil {
		return fail(err)
	}
	if f.health != nil {
		f.health.RecordDecision(u.Name(), "resumed", how)
	}
	f.log.Info("resuming a streaming zip from the next upstream", "module", req.Module, "version", req.Version, "upstream", u.Name(), "at", have, "how", how)
	return f.receiveZip(ctx, key, req, u, fl, resp.Body, size, spool, lease, have)
}

// receiveZip copies a zip body into spool (which already holds have bytes
// of a streaming download, owned by the flight, or none), publishes
// progress to fl, then checks, verifies and stores the whole. size is the
// zip's length, -1 unknown.
func (f *Fetcher) receiveZip(ctx context.Context, key cache.Key, req Request, u Upstream, fl *zipFlight, body io.Reader, size int64, spool *os.File, lease *spoolLease, have int64) (_ verifiedZip, err error) {
	owned := have > 0 // the flight holds the spool (clients read it)
	defer func() {
		if owned {
			if err != nil {
				// Clients already have bytes of this copy: they wait for the
				// next upstream to resume it, or abort with the flight.
				f.log.Warn("zip failed after streaming began", "module", req.Module, "version", req.Version, "err", err)
			}
			return
		}
		os.Remove(spool.Name())
		spool.Close()
		lease.release()
	}()
	own := func() {
		f.zipMu.Lock()
		fl.owned, fl.lease, owned = spool, lease, true
		f.zipMu.Unlock()
	}

	start := time.Now()
	buf := make([]byte, 256<<10)
	written := have
	// The digest the store checks the commit against, taken as the bytes
	// arrive rather than by reading the spool once more; a resumed copy's
	// first have bytes come from the spool.
	digest := sha256.New()
	if _, err := io.Copy(digest, io.NewSectionReader(spool, 0, have)); err != nil {
		return verifiedZip{}, fmt.Errorf("read spooled zip of %s: %w", req, err)
	}
	// Followers are woken per notifyBytes, not per read: a TLS body reads
	// a 16 KiB record at a time, and waking every follower for each (a
	// pread, a socket write and a flush) cost more CPU than the download.
	// Bytes they have not been told of are announced notifyEvery later by
	// wake, so that an upstream that stalls does not hold them back.
	notified := written
	var latest atomic.Int64 // bytes in the spool, for wake
	var armed atomic.Bool
	wake := time.AfterFunc(time.Hour, func() {
		armed.Store(false)
		fl.update(func() { fl.written = max(fl.written, latest.Load()) })
	})
	wake.Stop()
	defer func() {
		wake.Stop()
		// Whatever the outcome: a resume continues from fl.written.
		if owned && notified != written {
			fl.update(func() { fl.written = max(fl.written, written) })
		}
	}()
	for {
		n, rerr := body.Read(buf)
		if n > 0 {
			if written+int64(n) > gate.MaxZip {
				return verifiedZip{}, &UpstreamError{Upstream: u.Name(), Err: fmt.Errorf("%w: zip of %s exceeds the %d-byte limit", errBadContent, req, gate.MaxZip)}
			}
			if more := written + int64(n) - lease.n.Load(); more > 0 && !lease.grow(more) {
				return verifiedZip{}, f.quota.full(written + int64(n))
			}
			if _, err := spool.Write(buf[:n]); err != nil {
				if isNoSpace(err) {
					f.disk.markFull(f.cfg.SpoolDir, oneLine(err.Error()))
					return verifiedZip{}, insufficientStorage("cannot spool zip of %s: %v", req, err)
				}
				return verifiedZip{}, fmt.Errorf("spool zip of %s: %w", req, err)
			}
			digest.Write(buf[:n])
			written += int64(n)
			if !owned && (written >= f.cfg.HoldBackBytes || time.Since(start) >= f.cfg.HoldBackTime) {
				own()
				fl.update(func() {
					fl.streaming, fl.spool, fl.size, fl.written = true, spool.Name(), size, written
				})
			} else if owned {
				latest.Store(written)
				if written-notified >= notifyBytes {
					notified = written
					fl.update(func() { fl.written = written })
				} else if armed.CompareAndSwap(false, true) {
					wake.Reset(notifyEvery)
				}
			}
		}
		if rerr == io.EOF {
			break
		}
		if rerr != nil {
			return verifiedZip{}, &UpstreamError{Upstream: u.Name(), Err: fmt.Errorf("read zip of %s: %w", req, rerr)}
		}
	}
	if size >= 0 && written != size {
		return verifiedZip{}, &UpstreamError{Upstream: u.Name(), Err: fmt.Errorf("zip of %s truncated: %d of %d bytes", req, written, size)}
	}
	var sum [sha256.Size]byte
	digest.Sum(sum[:0])
	t, err := f.gate.CheckSpooledZip(ctx, key, spool.Name(), written, sum, gate.Origin{Upstream: u.Name()})
	if err != nil {
		return verifiedZip{}, &UpstreamError{Upstream: u.Name(), Err: err}
	}
	f.noteUnverified(req, t)
	if !owned {
		own() // the flight serves it from the spool while it is committed
	}
	return verifiedZip{ticket: t, size: written}, nil
}

// maxZipCommits bounds concurrent zip commits (Fetcher.zipCommits).
const maxZipCommits = 2

// verifiedZip is a zip download that passed the gate, in the flight's
// spool file.
type verifiedZip struct {
	ticket *gate.Ticket
	size   int64
}

// commitZip releases a verified zip to its clients, then stores it. The
// clients read it from the spool: the commit (~0.2 s for 50 MB) is not
// their wait. One that fails passes the zip through unstored; its
// followers may have all of it already, so it is not fetched again.
func (f *Fetcher) commitZip(req Request, fl *zipFlight, vz verifiedZip, rt route) {
	f.zipMu.Lock()
	spool := fl.owned
	f.zipMu.Unlock()
	// Staging a zip the store's disk cannot hold would grow the store file
	// until the disk is full, and leave it that large: check first, so
	// that the clients are told it is not stored.
	var err error
	if dir := storeDir(f.store); dir != "" {
		err = f.disk.room(dir, vz.size+vz.size/16)
	}
	if err != nil {
		f.noRoom(req, err)
	} else {
		f.m.commitsPending.Inc()
		defer f.m.commitsPending.Dec()
	}
	fl.update(func() {
		if !fl.streaming {
			fl.streaming, fl.spool, fl.size = true, spool.Name(), vz.size
		}
		fl.rt, fl.written, fl.unstored = rt, vz.size, err != nil
		fl.verified.Store(true)
	})
	if h := f.cfg.afterRelease; h != nil {
		h(req)
	}
	if err != nil {
		return
	}
	f.zipCommits <- struct{}{}
	if h := f.cfg.beforeCommit; h != nil {
		h(req)
	}
	_, err = f.gate.Commit(vz.ticket)
	<-f.zipCommits
	if err != nil {
		f.noRoom(req, err)
		fl.update(func() { fl.unstored = true })
	}
}

// A download in progress wakes its followers when it has notifyBytes more,
// or notifyEvery after a byte they were not told of.
const (
	notifyBytes = 256 << 10
	notifyEvery = 5 * time.Millisecond
)

// serveStream copies a download in progress to w, withholding the last
// byte until the gate has checked and verified the whole zip. headerSent
// reports whether the response had begun when it returned: a download that
// fails before this client got a byte can still be answered with a clean
// error status; one that fails later must abort the connection.
func (z *ZipResult) serveStream(ctx context.Context, w http.ResponseWriter) (headerSent bool, err error) {
	fl := z.flight
	fl.mu.Lock()
	size := fl.size
	fl.mu.Unlock()
	rc := http.NewResponseController(w)
	var sent int64
	buf := make([]byte, 256<<10)
	for {
		fl.mu.Lock()
		avail, done, ferr, ch, verified := fl.written, fl.done, fl.err, fl.changed, fl.verified.Load()
		fl.mu.Unlock()
		whole := done || verified
		if done && ferr != nil && !verified {
			return headerSent, ferr
		}
		limit := avail
		if !whole && size >= 0 && limit >= size {
			limit = size - 1 // the last byte waits for verification
		}
		if whole {
			limit = -1 // everything that is in the file
		}
		for limit < 0 || sent < limit {
			want := int64(len(buf))
			if limit >= 0 && limit-sent < want {
				want = limit - sent
			}
			n, err := z.spool.ReadAt(buf[:want], sent)
			if n > 0 {
				if !headerSent {
					if size >= 0 {
						w.Header().Set("Content-Length", strconv.FormatInt(size, 10))
					}
					w.WriteHeader(http.StatusOK)
					headerSent = true
				}
				if _, werr := w.Write(buf[:n]); werr != nil {
					return headerSent, werr
				}
				sent += int64(n)
			}
			if err == io.EOF {
				if whole {
					if !headerSent { // an empty zip: still a whole answer
						w.WriteHeader(http.StatusOK)
					}
					return true, nil
				}
				break
			}
			if err != nil {
				return headerSent, fmt.Errorf("read spool: %w", err)
			}
		}
		if headerSent {
			if err := rc.Flush(); err != nil {
				return headerSent, err
			}
		}
		select {
		case <-ch:
		case <-ctx.Done():
			return headerSent, ctx.Err()
		}
	}
}
