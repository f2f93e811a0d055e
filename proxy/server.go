package proxy

import (
	"bytes"
	"context"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"strconv"
	"strings"
	"time"

	"github.com/modproxy/modproxy/cache"
)

// Server answers the GOPROXY protocol and the operational endpoints.
type Server struct {
	f   *Fetcher
	log *slog.Logger
	m   *Metrics
	mux *http.ServeMux
	// SumDB, when set, serves /sumdb/… (the checksum-database proxy).
	sumdb http.Handler
}

// ServerOptions are the parts of a Server that are not the Fetcher's.
type ServerOptions struct {
	SumDB http.Handler
	// Extra handlers mounted as-is (e.g. "/metrics", "/debug/upstreams").
	Extra map[string]http.Handler
}

// NewServer returns a Server over f.
func NewServer(f *Fetcher, opts ServerOptions) *Server {
	s := &Server{f: f, log: f.log, m: f.m, sumdb: opts.SumDB, mux: http.NewServeMux()}
	s.mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "text/plain; charset=utf-8")
		fmt.Fprintln(w, "ok")
	})
	s.mux.HandleFunc("GET /readyz", s.readyz)
	for p, h := range opts.Extra {
		s.mux.Handle(p, h)
	}
	s.mux.HandleFunc("/", s.serveModule)
	return s
}

func (s *Server) readyz(w http.ResponseWriter, r *http.Request) {
	w.Header().Set("Content-Type", "text/plain; charset=utf-8")
	pingErr := s.f.store.Ping()
	if pingErr != nil && !isNoSpace(pingErr) {
		w.WriteHeader(http.StatusServiceUnavailable)
		fmt.Fprintf(w, "store not writable: %s\n", oneLine(pingErr.Error()))
		return
	}
	// A full disk is rechecked on every probe, so readiness comes back
	// when space is freed, without a restart.
	why := s.f.disk.problem()
	if pingErr != nil && why == "" {
		why = "the store's heartbeat write failed: " + oneLine(pingErr.Error())
	}
	if why != "" {
		w.WriteHeader(http.StatusServiceUnavailable)
		fmt.Fprintf(w, "disk full: %s\n", why)
		return
	}
	fmt.Fprintln(w, "ready")
}

// ServeHTTP logs every request, recovers from panics and dispatches.
func (s *Server) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	start := time.Now()
	rec := &recorder{ResponseWriter: w, status: http.StatusOK}
	defer func() {
		if p := recover(); p != nil {
			if p == http.ErrAbortHandler {
				s.logRequest(r, rec, start, "aborted")
				panic(p)
			}
			s.log.Error("panic serving request", "path", r.URL.Path, "panic", fmt.Sprint(p))
			if !rec.wrote {
				http.Error(rec, "internal error", http.StatusInternalServerError)
			}
		}
		s.logRequest(r, rec, start, "")
	}()
	s.mux.ServeHTTP(rec, r)
}

// StatusClientClosed is the status logged and counted for a request whose
// client went away before its answer was complete (nginx's 499); it is
// never sent.
const StatusClientClosed = 499

func (s *Server) logRequest(r *http.Request, rec *recorder, start time.Time, note string) {
	d := time.Since(start)
	if r.Context().Err() != nil {
		// Still inside the handler, a cancelled request context means the
		// client's connection is gone: whatever status was begun, the
		// client did not get a whole answer.
		rec.status = StatusClientClosed
		if note == "" {
			note = "client went away"
		}
	}
	h := rec.Header()
	c := h.Get(headerCache)
	attrs := make([]slog.Attr, 0, 9)
	attrs = append(attrs,
		slog.String("method", r.Method), slog.String("path", r.URL.Path), slog.Int("status", rec.status),
		slog.Int64("bytes", rec.bytes), slog.Duration("duration", d))
	if c != "" {
		attrs = append(attrs, slog.String("cache", c))
	}
	if u := h.Get(headerUpstream); u != "" {
		attrs = append(attrs, slog.String("upstream", u))
	}
	if note != "" {
		attrs = append(attrs, slog.String("note", note))
	}
	s.log.LogAttrs(r.Context(), slog.LevelInfo, "request", attrs...)
	if rec.kind != "" {
		if c == "" {
			c = "bypass"
		}
		s.m.requests.WithLabelValues(rec.kind, strconv.Itoa(rec.status), c).Inc()
		s.m.duration.WithLabelValues(rec.kind, c).Observe(d.Seconds())
	}
}

// recorder captures what was written for logs and metrics.
type recorder struct {
	http.ResponseWriter
	status int
	bytes  int64
	wrote  bool
	kind   string
}

func (r *recorder) WriteHeader(code int) {
	if !r.wrote {
		r.status, r.wrote = code, true
	}
	r.ResponseWriter.WriteHeader(code)
}

func (r *recorder) Write(p []byte) (int, error) {
	r.wrote = true
	n, err := r.ResponseWriter.Write(p)
	r.bytes += int64(n)
	return n, err
}

func (r *recorder) Unwrap() http.ResponseWriter { return r.ResponseWriter }

// Cache-Control values: artifacts never change; list and @latest do.
const (
	immutableCache = "public, max-age=31536000, immutable"
	// staleCache is for a stale list or @latest: a client or cache in
	// front of the proxy asks again soon, and sees the refreshed answer.
	staleCache = "public, max-age=5"
)

// warnUnstored marks an answer passed through without being stored
// (RFC 9111 §5.5: 199 is a miscellaneous warning).
const warnUnstored = `199 modproxy "not stored: the store's disk is full"`

func (s *Server) serveModule(w http.ResponseWriter, r *http.Request) {
	if strings.HasPrefix(r.URL.Path, "/sumdb/") {
		if s.sumdb == nil {
			http.Error(w, "not found: checksum database proxying is disabled", http.StatusNotFound)
			return
		}
		if rec, ok := w.(*recorder); ok {
			rec.kind = "sumdb"
		}
		s.sumdb.ServeHTTP(w, r)
		return
	}
	if r.Method != http.MethodGet && r.Method != http.MethodHead {
		w.Header().Set("Allow", "GET, HEAD")
		http.Error(w, "method not allowed", http.StatusMethodNotAllowed)
		return
	}
	if r.URL.Path == "/" {
		w.Header().Set("Content-Type", "text/plain; charset=utf-8")
		fmt.Fprintln(w, "modproxy: a caching Go module proxy. Use GOPROXY=<this URL>.")
		return
	}
	req, err := ParsePath(r.URL.Path)
	if err != nil {
		var pe *PathError
		if errors.As(err, &pe) && pe.NotFound {
			s.fail(w, notFoundf("%s", oneLine(pe.Err.Error())))
			return
		}
		s.fail(w, &HTTPError{Status: http.StatusBadRequest, Msg: oneLine(err.Error())})
		return
	}
	if rec, ok := w.(*recorder); ok {
		rec.kind = string(req.Kind)
	}
	req.Stored = r.Header.Get(HeaderWantStored) != ""
	ctx := r.Context()
	switch {
	case req.Kind == KindZip:
		s.serveZip(w, r, req)
	case req.Query:
		a, err := s.f.Query(ctx, req)
		s.serveSmall(w, r, req, a, err)
	case req.Kind == KindInfo || req.Kind == KindMod:
		a, err := s.f.ClientSmall(ctx, req)
		s.serveSmall(w, r, req, a, err)
	default:
		a, err := s.f.Mutable(ctx, req)
		if err == nil && a.Cache == "stale" {
			s.m.staleServed.WithLabelValues(string(req.Kind)).Inc()
		}
		s.serveSmall(w, r, req, a, err)
	}
}

func contentType(k Kind) string {
	switch k {
	case KindInfo, KindLatest:
		return "application/json"
	case KindZip:
		return "application/zip"
	}
	return "text/plain; charset=utf-8"
}

func etag(sum [32]byte) string { return `"` + hex.EncodeToString(sum[:16]) + `"` }

func setRoute(h http.Header, rt route) {
	if rt.upstream != "" {
		h.Set(headerUpstream, rt.upstream)
		h.Set(headerDecision, rt.reason)
	}
}

func (s *Server) serveSmall(w http.ResponseWriter, r *http.Request, req Request, a *Artifact, err error) {
	if err != nil {
		s.fail(w, err)
		return
	}
	h := w.Header()
	h.Set("Content-Type", contentType(req.Kind))
	h.Set(headerCache, a.Cache)
	setRoute(h, a.Route)
	if a.Unstored {
		h.Set("Warning", warnUnstored)
	}
	switch {
	case req.Query:
		h.Set("Cache-Control", "no-cache")
	case req.Kind == KindList || req.Kind == KindLatest:
		h.Set("Cache-Control", fmt.Sprintf("public, max-age=%d", int(s.f.cfg.ListTTL.Seconds())))
		if a.Cache == "stale" {
			h.Set("Cache-Control", staleCache)
			h.Set("Warning", `110 modproxy "Response is Stale"`)
			h.Set("X-Modproxy-Stale", a.Modified.UTC().Format(time.RFC3339))
		}
	default:
		h.Set("Cache-Control", immutableCache)
		h.Set("ETag", etag(a.Meta.SHA256))
	}
	if r.Header.Get("Range") == "" && !conditional(r) {
		// The common case, without http.ServeContent's range and
		// precondition machinery (a measurable share of a warm hit).
		if !a.Modified.IsZero() {
			h.Set("Last-Modified", a.Modified.UTC().Format(http.TimeFormat))
		}
		h.Set("Content-Length", strconv.Itoa(len(a.Data)))
		w.WriteHeader(http.StatusOK)
		if r.Method != http.MethodHead {
			w.Write(a.Data)
		}
		return
	}
	http.ServeContent(w, r, "", a.Modified, bytes.NewReader(a.Data))
}

// conditional reports whether r has preconditions for ServeContent.
func conditional(r *http.Request) bool {
	h := r.Header
	return h.Get("If-None-Match") != "" || h.Get("If-Modified-Since") != "" ||
		h.Get("If-Match") != "" || h.Get("If-Unmodified-Since") != "" || h.Get("If-Range") != ""
}

func (s *Server) serveZip(w http.ResponseWriter, r *http.Request, req Request) {
	s.serveZipAttempt(w, r, req, true)
}

// serveZipAttempt serves the zip; mayRefetch allows one more attempt when
// the stored copy turns out damaged before a byte of it was sent (the store
// has quarantined it by then, so the second attempt fetches it afresh).
func (s *Server) serveZipAttempt(w http.ResponseWriter, r *http.Request, req Request, mayRefetch bool) {
	mode := ZipWait
	switch {
	case req.Stored:
		mode = ZipPrewarm
	case r.Method == http.MethodGet:
		mode = ZipStream
		if !r.ProtoAtLeast(1, 1) {
			// No chunked encoding: an answer of unknown length ends with
			// a close, which an aborted stream cannot be told from.
			mode = ZipStreamSized
		}
	}
	z, err := s.f.Zip(r.Context(), req, mode)
	if err != nil {
		s.fail(w, err)
		return
	}
	h := w.Header()
	h.Set("Content-Type", contentType(KindZip))
	h.Set(headerCache, z.Cache)
	setRoute(h, z.Route)
	if z.Reader != nil {
		damaged := s.serveStoredZip(w, r, req, z.Reader)
		z.Close()
		switch {
		case damaged == nil:
		case mayRefetch:
			s.serveZipAttempt(w, r, req, false)
		default:
			s.fail(w, &HTTPError{Status: http.StatusInternalServerError, Err: damaged,
				Msg: fmt.Sprintf("the stored copy of %s.zip is damaged and was quarantined; retry", req)})
		}
		return
	}
	defer z.Close()
	if z.Unstored {
		h.Set("Cache-Control", immutableCache)
		h.Set("Warning", warnUnstored)
		http.ServeContent(w, r, "", time.Time{}, io.NewSectionReader(z.spool, 0, z.Size))
		return
	}
	headerSent, err := z.serveStream(r.Context(), w)
	switch {
	case err == nil:
	case !headerSent:
		s.fail(w, err) // nothing sent yet: a clean error status
	default:
		// Bytes are out: abort the connection so that the client never
		// mistakes a partial or bad zip for a whole one.
		s.log.Warn("aborting zip stream", "module", req.Module, "version", req.Version, "err", err)
		panic(http.ErrAbortHandler)
	}
}

// serveStoredZip sends a stored zip. A plain GET (every go command request)
// goes out through the Reader's WriteTo: a chunk (512 KiB) per write, no
// 32 KiB copy loop and no range machinery. Ranges and preconditions go
// through http.ServeContent.
//
// A read error after the first byte aborts the connection: a client must
// never see a clean end of a truncated or damaged zip. If the stored copy is
// found damaged before anything was sent, the headers are withdrawn and the
// error returned, so that the caller can refetch.
func (s *Server) serveStoredZip(w http.ResponseWriter, r *http.Request, req Request, zr cache.ArtifactReader) (damaged error) {
	m := zr.Meta()
	h := w.Header()
	h.Set("Cache-Control", immutableCache)
	h.Set("ETag", etag(m.SHA256))
	if r.Header.Get("Range") != "" || conditional(r) {
		rr := &readRecorder{r: zr}
		cw := &countingWriter{w: w}
		http.ServeContent(cw, r, "", m.Created, rr)
		if rr.err != nil && r.Context().Err() == nil {
			s.abortStored(req, rr.err, cw.n)
		}
		return nil
	}
	h.Set("Last-Modified", m.Created.UTC().Format(http.TimeFormat))
	h.Set("Content-Length", strconv.FormatInt(m.Size, 10))
	if r.Method == http.MethodHead {
		w.WriteHeader(http.StatusOK)
		return nil
	}
	cw := &countingWriter{w: w}
	_, err := zr.WriteTo(cw)
	switch {
	case err == nil:
		return nil
	case cw.writes == 0 && errors.Is(err, cache.ErrCorrupt):
		for _, k := range []string{"Content-Length", "ETag", "Last-Modified", "Cache-Control"} {
			h.Del(k)
		}
		s.log.Error("stored zip is damaged; quarantined, refetching", "module", req.Module, "version", req.Version, "err", err)
		return err
	case r.Context().Err() != nil:
		return nil // the client went away
	}
	s.abortStored(req, err, cw.n)
	return nil
}

func (s *Server) abortStored(req Request, err error, sent int64) {
	level := slog.LevelWarn
	if errors.Is(err, cache.ErrCorrupt) {
		level = slog.LevelError
	}
	s.log.Log(context.Background(), level, "aborting stored zip", "module", req.Module, "version", req.Version, "sent", sent, "err", err)
	panic(http.ErrAbortHandler)
}

// countingWriter counts what reached the response.
type countingWriter struct {
	w      http.ResponseWriter
	n      int64
	writes int
}

func (c *countingWriter) Header() http.Header  { return c.w.Header() }
func (c *countingWriter) WriteHeader(code int) { c.w.WriteHeader(code) }
func (c *countingWriter) Write(p []byte) (int, error) {
	c.writes++
	n, err := c.w.Write(p)
	c.n += int64(n)
	return n, err
}

// readRecorder keeps the first read error of a stored zip served through
// http.ServeContent, which drops it.
type readRecorder struct {
	r   cache.ArtifactReader
	err error
}

func (rr *readRecorder) Read(p []byte) (int, error) {
	n, err := rr.r.Read(p)
	if err != nil && err != io.EOF && rr.err == nil {
		rr.err = err
	}
	return n, err
}

func (rr *readRecorder) Seek(off int64, whence int) (int64, error) { return rr.r.Seek(off, whence) }

// fail writes err as a status and a one-line text body.
func (s *Server) fail(w http.ResponseWriter, err error) {
	if errors.Is(err, context.Canceled) {
		return // the client went away
	}
	var herr *HTTPError
	if !errors.As(err, &herr) {
		herr = &HTTPError{Status: http.StatusInternalServerError, Msg: "internal error", Err: err}
		switch {
		case errors.Is(err, cache.ErrNotFound):
			herr.Status, herr.Msg = http.StatusNotFound, "not found: "+oneLine(err.Error())
		case isNoSpace(err):
			herr.Status, herr.Msg = http.StatusInsufficientStorage, "insufficient storage: "+oneLine(err.Error())
		case errors.Is(err, errFetcherClosed):
			herr.Status, herr.Msg, herr.RetryAfter = http.StatusServiceUnavailable, "modproxy is shutting down; retry", time.Second
		}
		s.log.Error("request failed", "err", err)
	}
	if herr.RetryAfter > 0 {
		w.Header().Set("Retry-After", strconv.Itoa(int((herr.RetryAfter+time.Second-1)/time.Second)))
	}
	if herr.isNotFound() {
		w.Header().Set(headerCache, "negative")
		w.Header().Set("Cache-Control", "no-cache")
	}
	w.Header().Set("Content-Type", "text/plain; charset=utf-8")
	w.Header().Set("X-Content-Type-Options", "nosniff")
	w.WriteHeader(herr.Status)
	fmt.Fprintln(w, herr.Msg)
}
