package proxy

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"strconv"
	"sync"
	"time"

	"github.com/modproxy/modproxy/cache"
	"github.com/modproxy/modproxy/cache/gate"
)

// errStreamFailed is the error of every upstream tried after a zip that had
// already been streamed to clients failed: those clients are committed to
// that copy, so the flight ends.
var errStreamFailed = errors.New("download failed after streaming to clients began")

// zipFlight is one in-progress zip download shared by every client that
// asks for the zip meanwhile.
//
// A download goes to a spool file. Clients wait while the first
// HoldBackBytes/HoldBackTime of it arrive: a zip that completes in that
// window (most module zips) is checked, verified and committed before a
// byte is sent, so a bad copy still gets a clean error status and the next
// upstream's copy. A larger or slower zip is streamed to the clients from
// the spool as it arrives; its last byte is withheld until it is verified
// and committed, and the clients' connections are aborted if it fails, so no
// client ever sees a clean end of a bad zip.
type zipFlight struct {
	mu        sync.Mutex
	changed   chan struct{} // closed and replaced on every state change
	streaming bool          // clients may read the spool
	spool     string        // the spool file of the streaming attempt
	written   int64         // bytes in the spool
	size      int64         // Content-Length of the streaming attempt, or -1
	done      bool
	err       error
	rt        route
}

func newZipFlight() *zipFlight {
	return &zipFlight{changed: make(chan struct{}), size: -1}
}

// update changes the flight's state under its lock and wakes waiters.
func (fl *zipFlight) update(fn func()) {
	fl.mu.Lock()
	fn()
	close(fl.changed)
	fl.changed = make(chan struct{})
	fl.mu.Unlock()
}

// ZipResult is a zip ready to serve: either a reader of the stored zip, or a
// stream that follows a download in progress.
type ZipResult struct {
	Reader cache.ArtifactReader // non-nil when the zip is stored
	Cache  string
	Route  route
	flight *zipFlight
	spool  *os.File
}

// Close releases the reader or spool file.
func (z *ZipResult) Close() error {
	if z.Reader != nil {
		return z.Reader.Close()
	}
	if z.spool != nil {
		return z.spool.Close()
	}
	return nil
}

// Zip returns the zip named by req: from the store, or from a download
// shared with concurrent requests. stream is false for a client that must
// not be streamed to (HEAD), which waits for the committed zip instead.
func (f *Fetcher) Zip(ctx context.Context, req Request, stream bool) (*ZipResult, error) {
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
		fl = newZipFlight()
		f.zipFlights[key] = fl
		f.wg.Add(1)
		go func() {
			defer f.wg.Done()
			f.runZip(key, req, fl)
			f.retireZip(key, fl)
		}()
	} else {
		f.m.fetchShared.WithLabelValues(string(KindZip)).Inc()
	}
	f.zipMu.Unlock()

	for {
		fl.mu.Lock()
		done, streaming, ch := fl.done, fl.streaming, fl.changed
		if streaming && stream && !done {
			spool, err := os.Open(fl.spool)
			fl.mu.Unlock()
			if err != nil {
				return nil, fmt.Errorf("follow download of %s: %w", req, err)
			}
			return &ZipResult{Cache: "miss", flight: fl, spool: spool}, nil
		}
		ferr, rt := fl.err, fl.rt
		fl.mu.Unlock()
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

// runZip downloads, checks, verifies and stores one zip, trying upstreams
// in turn, and publishes the outcome to fl.
func (f *Fetcher) runZip(key cache.Key, req Request, fl *zipFlight) {
	if l, ok := f.store.(FetchLeaser); ok {
		release, stored, err := l.AcquireFetch(f.ctx, key)
		if err != nil || stored {
			// stored: another replica fetched it; waiters read the store.
			var herr error
			if err != nil {
				herr = &HTTPError{Status: http.StatusBadGateway, Err: err, Msg: fmt.Sprintf("%s.zip: cannot coordinate the fetch with the other replicas: %v", req, err)}
				f.log.Warn("zip fetch lease failed", "module", req.Module, "version", req.Version, "err", err)
			} else {
				f.m.fetchShared.WithLabelValues(string(KindZip)).Inc()
			}
			fl.update(func() { fl.done, fl.err = true, herr })
			return
		}
		defer release()
	}
	ups, private := f.upstreamsFor(req.Module)
	// The .mod's verification normally stored the record already; only
	// without it is the lookup worth starting alongside the download.
	if m, err := f.store.Stat(cache.Key{Path: req.Module, Version: req.Version, Kind: cache.KindMod}); err != nil || m.State != cache.StateVerified {
		f.lookupAhead(f.ctx, req, private)
	}
	_, rt, errs := tryUpstreams(f.ctx, f, ups, false, req, func(ctx context.Context, u Upstream) (cache.Meta, error) {
		return f.downloadZip(ctx, key, req, u, fl)
	})
	var ferr error
	if rt.upstream == "" {
		herr := upstreamFailure(req, errs)
		if len(ups) == 0 {
			herr = notFoundf("%s is private and no private upstream is configured", req.Module)
		}
		f.neg.put(req.String()+".zip", herr) // errors only for a short backoff
		ferr = herr
		f.m.fetches.WithLabelValues(string(KindZip), "error").Inc()
		f.log.Warn("zip fetch failed", "module", req.Module, "version", req.Version, "err", herr.Msg)
	} else {
		f.m.fetches.WithLabelValues(string(KindZip), "ok").Inc()
	}
	// Retired before its outcome is published: a client that hears of a
	// failure and asks again must start a new download, not join this one.
	f.retireZip(key, fl)
	var spool string
	fl.update(func() {
		fl.done, fl.err, fl.rt = true, ferr, rt
		spool = fl.spool
	})
	if spool != "" {
		// Followers hold open descriptors; unlinking is safe.
		os.Remove(spool)
	}
}

// retireZip removes fl from the in-flight zips, unless a newer flight for
// key has replaced it.
func (f *Fetcher) retireZip(key cache.Key, fl *zipFlight) {
	f.zipMu.Lock()
	if f.zipFlights[key] == fl {
		delete(f.zipFlights, key)
	}
	f.zipMu.Unlock()
}

// downloadZip is one upstream attempt of runZip.
func (f *Fetcher) downloadZip(ctx context.Context, key cache.Key, req Request, u Upstream, fl *zipFlight) (_ cache.Meta, err error) {
	fl.mu.Lock()
	committed := fl.streaming
	fl.mu.Unlock()
	if committed {
		return cache.Meta{}, &UpstreamError{Upstream: u.Name(), Err: errStreamFailed}
	}
	resp, err := f.get(ctx, u, req.URLPath())
	if err != nil {
		return cache.Meta{}, err
	}
	defer resp.Body.Close()
	if resp.ContentLength > gate.MaxZip {
		return cache.Meta{}, &UpstreamError{Upstream: u.Name(), Err: fmt.Errorf("%w: zip of %s is %d bytes, over the %d-byte limit", errBadContent, req, resp.ContentLength, gate.MaxZip)}
	}
	spool, err := os.CreateTemp(f.cfg.SpoolDir, "modproxy-zip-*")
	if err != nil {
		return cache.Meta{}, fmt.Errorf("spool zip of %s: %w", req, err)
	}
	streamed := false
	defer func() {
		spool.Close()
		if !streamed {
			os.Remove(spool.Name())
		} else if err != nil {
			// Clients already have bytes of this copy: the flight ends
			// with it (see errStreamFailed) and their connections abort.
			f.log.Warn("zip failed after streaming began; aborting its clients", "module", req.Module, "version", req.Version, "err", err)
		}
	}()

	start := time.Now()
	buf := make([]byte, 256<<10)
	var written int64
	for {
		n, rerr := resp.Body.Read(buf)
		if n > 0 {
			if written+int64(n) > gate.MaxZip {
				return cache.Meta{}, &UpstreamError{Upstream: u.Name(), Err: fmt.Errorf("%w: zip of %s exceeds the %d-byte limit", errBadContent, req, gate.MaxZip)}
			}
			if _, err := spool.Write(buf[:n]); err != nil {
				return cache.Meta{}, fmt.Errorf("spool zip of %s: %w", req, err)
			}
			written += int64(n)
			if !streamed && (written >= f.cfg.HoldBackBytes || time.Since(start) >= f.cfg.HoldBackTime) {
				streamed = true
				fl.update(func() {
					fl.streaming, fl.spool, fl.size, fl.written = true, spool.Name(), resp.ContentLength, written
				})
			} else if streamed {
				fl.update(func() { fl.written = written })
			}
		}
		if rerr == io.EOF {
			break
		}
		if rerr != nil {
			return cache.Meta{}, &UpstreamError{Upstream: u.Name(), Err: fmt.Errorf("read zip of %s: %w", req, rerr)}
		}
	}
	if resp.ContentLength >= 0 && written != resp.ContentLength {
		return cache.Meta{}, &UpstreamError{Upstream: u.Name(), Err: fmt.Errorf("zip of %s truncated: %d of %d bytes", req, written, resp.ContentLength)}
	}
	t, err := f.gate.CheckZipFile(ctx, key, spool.Name(), gate.Origin{Upstream: u.Name()})
	if err != nil {
		return cache.Meta{}, &UpstreamError{Upstream: u.Name(), Err: err}
	}
	f.noteUnverified(req, t)
	stored, err := f.gate.Commit(t)
	if err != nil {
		return cache.Meta{}, fmt.Errorf("store %s: %w", req, err)
	}
	return stored, nil
}

// serveStream copies a download in progress to w, withholding the last
// byte until the zip is committed. headerSent reports whether the response
// had begun when it returned: a download that fails before this client
// got a byte can still be answered with a clean error status; one that
// fails later must abort the connection.
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
		avail, done, ferr, ch := fl.written, fl.done, fl.err, fl.changed
		fl.mu.Unlock()
		if done && ferr != nil {
			return headerSent, ferr
		}
		limit := avail
		if !done && size >= 0 && limit >= size {
			limit = size - 1 // the last byte waits for verification
		}
		if done {
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
				if done {
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
