// Package access is modproxy's access control in front of proxy.Server:
// client authentication (package auth), module policy (package policy),
// the split of the admin endpoints onto their own listener, and the audit
// log of every artifact request.
//
// It decides before the request reaches the proxy, from the request path
// and the server's private patterns alone, so that its answers never
// depend on (and never reveal) whether a module exists.
package access

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"strconv"
	"strings"
	"sync/atomic"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/modproxy/modproxy/auth"
	"github.com/modproxy/modproxy/policy"
	"github.com/modproxy/modproxy/proxy"
)

// Config configures the middleware.
type Config struct {
	// Auth, when set, authenticates every request; nil: no authentication.
	Auth *auth.Authenticator
	// Policy, when it holds a policy, decides which module versions are
	// served.
	Policy *PolicyHolder
	// IsPrivate reports whether a module path is private (the server's
	// --private patterns); such paths need a scope naming them.
	IsPrivate func(path string) bool
	// SeparateAdmin is set when the admin endpoints have their own
	// listener: the main one then answers them 404.
	SeparateAdmin bool
	// Audit, when set, gets one line per artifact request.
	Audit *Audit
	// Logger logs refusals; Registerer gets the access metrics.
	Logger     *slog.Logger
	Registerer prometheus.Registerer
}

// PolicyHolder holds the module policy in force; it may be swapped (on
// reload) while requests are served. The zero value holds no policy.
type PolicyHolder struct{ p atomic.Pointer[policy.Policy] }

// Store puts p in force; nil removes the policy.
func (h *PolicyHolder) Store(p *policy.Policy) { h.p.Store(p) }

// Load returns the policy in force, nil when none.
func (h *PolicyHolder) Load() *policy.Policy {
	if h == nil {
		return nil
	}
	return h.p.Load()
}

// Handler is the access-controlled front of a proxy.Server.
type Handler struct {
	next    http.Handler
	cfg     Config
	denied  *prometheus.CounterVec
	refused *prometheus.CounterVec
}

// New returns the middleware around next.
func New(next http.Handler, cfg Config) *Handler {
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.NewTextHandler(io.Discard, nil))
	}
	if cfg.IsPrivate == nil {
		cfg.IsPrivate = func(string) bool { return false }
	}
	h := &Handler{
		next: next,
		cfg:  cfg,
		denied: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "modproxy_policy_denied_total",
			Help: "Requests refused by the module policy, by the rule that denied them.",
		}, []string{"rule"}),
		refused: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "modproxy_auth_refused_total",
			Help: "Requests refused by client authentication: code 401 (no or bad credentials) or 403 (missing scope).",
		}, []string{"code"}),
	}
	if cfg.Registerer != nil {
		cfg.Registerer.MustRegister(h.denied, h.refused)
	}
	return h
}

// IsAdminPath reports whether p is one of the operational endpoints.
func IsAdminPath(p string) bool {
	switch p {
	case "/metrics", "/healthz", "/readyz":
		return true
	}
	return strings.HasPrefix(p, "/debug/")
}

// Admin is the handler of a separate admin listener: the operational
// endpoints without authentication (the listener's address is what
// protects them), and nothing else.
func (h *Handler) Admin() http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if !IsAdminPath(r.URL.Path) {
			http.Error(w, "not found: this is the admin listener (/metrics, /debug/, /healthz, /readyz)", http.StatusNotFound)
			return
		}
		h.next.ServeHTTP(w, r)
	})
}

// ServeHTTP is the main listener's handler.
func (h *Handler) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	p := r.URL.Path
	if IsAdminPath(p) {
		if h.cfg.SeparateAdmin {
			http.Error(w, "not found: the operational endpoints are on the admin listener", http.StatusNotFound)
			return
		}
		if h.cfg.Auth != nil {
			id, ok := h.authenticate(w, r)
			if !ok {
				return
			}
			if !id.Scopes.Admin {
				h.refuseScope(w, r, id, fmt.Sprintf("forbidden: identity %q lacks the %q scope this endpoint needs", id.Name, auth.ScopeAdmin))
				return
			}
		}
		h.next.ServeHTTP(w, r)
		return
	}
	if p == "/" || (h.cfg.Auth == nil && h.cfg.Audit == nil && h.cfg.Policy.Load() == nil) {
		h.next.ServeHTTP(w, r)
		return
	}
	var id *auth.Identity
	if h.cfg.Auth != nil {
		var ok bool
		if id, ok = h.authenticate(w, r); !ok {
			h.auditRefusal(r, nil, "unauthenticated", http.StatusUnauthorized, nil, "")
			return
		}
	}
	if strings.HasPrefix(p, "/sumdb/") {
		// Checksum-database data is public: it needs the public scope.
		if id != nil && !id.Scopes.CanRead("", false) {
			h.refuseScope(w, r, id, fmt.Sprintf("forbidden: identity %q lacks the %q scope the checksum database proxy needs", id.Name, auth.ScopePublic))
			return
		}
		h.next.ServeHTTP(w, r)
		return
	}
	req, err := proxy.ParsePath(p)
	if err != nil {
		if id == nil {
			h.next.ServeHTTP(w, r) // the proxy answers it 400 or 404
			return
		}
		// With authentication on, a path that no scope was checked for
		// never reaches the proxy: fail closed, as the proxy would answer.
		status := http.StatusBadRequest
		var pe *proxy.PathError
		if errors.As(err, &pe) && pe.NotFound {
			status = http.StatusNotFound
		}
		http.Error(w, strings.Join(strings.Fields(err.Error()), " "), status)
		return
	}
	if id != nil && !id.Scopes.CanRead(req.Module, h.cfg.IsPrivate(req.Module)) {
		// The same answer whether or not the module exists: nothing has
		// been looked up.
		need := auth.ScopePublic
		if h.cfg.IsPrivate(req.Module) {
			need = "a module path pattern matching " + req.Module
		}
		msg := fmt.Sprintf("forbidden: identity %q lacks a scope for this module path (needs %s)", id.Name, need)
		h.auditRefusal(r, id, "forbidden", http.StatusForbidden, &req, "")
		h.refuseScope(w, r, id, msg)
		return
	}
	if pol := h.cfg.Policy.Load(); pol != nil {
		// A query is checked as given: one that is no semantic version
		// ("master") is refused by the deny rules with a range of its
		// module (fail closed) rather than pass through the .info of a
		// version they may deny.
		version := req.Version
		if d := pol.Check(req.Module, version); !d.Allowed {
			h.denied.WithLabelValues(d.Rule).Inc()
			h.auditRefusal(r, id, "denied", http.StatusForbidden, &req, d.Rule)
			w.Header().Set("Content-Type", "text/plain; charset=utf-8")
			w.Header().Set("Cache-Control", "no-store")
			w.WriteHeader(http.StatusForbidden)
			fmt.Fprintln(w, d.Message(req.Module, version))
			return
		}
		if req.Kind == proxy.KindList {
			status := h.serveFilteredList(w, r, pol, req.Module)
			if h.cfg.Audit != nil {
				h.cfg.Audit.record(r, id, req, decisionFor(status), status, "")
			}
			return
		}
	}
	if h.cfg.Audit == nil {
		h.next.ServeHTTP(w, r)
		return
	}
	sw := &statusWriter{ResponseWriter: w, status: http.StatusOK}
	h.next.ServeHTTP(sw, r)
	h.cfg.Audit.record(r, id, req, decisionFor(sw.status), sw.status, "")
}

// maxList bounds a version list the policy filters; real lists are a few
// KiB.
const maxList = 8 << 20

// serveFilteredList serves the version list of modPath without the
// versions the policy denies, so that the go command's "latest" and
// "go get -u" pick the newest allowed version instead of failing on a
// denied one. The list is fetched whole (no conditional or range request)
// and answered without validators, since its bytes depend on the policy.
func (h *Handler) serveFilteredList(w http.ResponseWriter, r *http.Request, pol *policy.Policy, modPath string) int {
	r = r.Clone(r.Context())
	r.Method = http.MethodGet
	for _, k := range []string{"If-None-Match", "If-Modified-Since", "If-Match", "If-Unmodified-Since", "If-Range", "Range"} {
		r.Header.Del(k)
	}
	rec := &bufferWriter{header: http.Header{}, status: http.StatusOK}
	h.next.ServeHTTP(rec, r)
	for k, v := range rec.header {
		w.Header()[k] = v
	}
	if rec.status != http.StatusOK || rec.overflow {
		if rec.overflow {
			// Not a list any client needs; refuse rather than pass it unfiltered.
			rec.status = http.StatusBadGateway
			rec.body.Reset()
			rec.body.WriteString("version list too large to apply the module policy\n")
		}
		w.Header().Del("Content-Length")
		w.WriteHeader(rec.status)
		w.Write(rec.body.Bytes())
		return rec.status
	}
	var out strings.Builder
	for line := range strings.SplitSeq(rec.body.String(), "\n") {
		v := strings.TrimSpace(line)
		if v == "" || !pol.Check(modPath, v).Allowed {
			continue
		}
		out.WriteString(v)
		out.WriteByte('\n')
	}
	hd := w.Header()
	for _, k := range []string{"ETag", "Last-Modified", "Accept-Ranges", "Content-Range"} {
		hd.Del(k)
	}
	hd.Set("Content-Length", strconv.Itoa(out.Len()))
	w.WriteHeader(http.StatusOK)
	// On HEAD the server discards the body and keeps the length.
	io.WriteString(w, out.String())
	return http.StatusOK
}

// bufferWriter captures a response in memory, up to maxList bytes.
type bufferWriter struct {
	header   http.Header
	status   int
	wrote    bool
	body     bytes.Buffer
	overflow bool
}

func (b *bufferWriter) Header() http.Header { return b.header }

func (b *bufferWriter) WriteHeader(code int) {
	if !b.wrote {
		b.status, b.wrote = code, true
	}
}

func (b *bufferWriter) Write(p []byte) (int, error) {
	b.wrote = true
	if b.body.Len()+len(p) > maxList {
		b.overflow = true
		return 0, errors.New("version list too large")
	}
	return b.body.Write(p)
}

// authenticate identifies r or answers it 401.
func (h *Handler) authenticate(w http.ResponseWriter, r *http.Request) (*auth.Identity, bool) {
	id, err := h.cfg.Auth.Authenticate(r)
	if err == nil {
		return id, true
	}
	h.unauthorized(w, r, err.Error())
	return nil, false
}

func (h *Handler) unauthorized(w http.ResponseWriter, r *http.Request, msg string) {
	h.refused.WithLabelValues("401").Inc()
	h.cfg.Logger.Info("request refused", "path", r.URL.Path, "status", http.StatusUnauthorized, "remote", r.RemoteAddr, "reason", msg)
	w.Header().Add("WWW-Authenticate", `Basic realm="modproxy", charset="UTF-8"`)
	w.Header().Add("WWW-Authenticate", `Bearer realm="modproxy"`)
	w.Header().Set("Cache-Control", "no-store")
	http.Error(w, msg, http.StatusUnauthorized)
}

// refuseScope answers a request that lacks a scope: 401 for anonymous
// requests (credentials may grant it, and the go command only sends them
// after a 401), 403 for identified ones.
func (h *Handler) refuseScope(w http.ResponseWriter, r *http.Request, id *auth.Identity, msg string) {
	if id.Via == auth.Anonymous {
		h.unauthorized(w, r, "authentication required: anonymous requests may read public modules only")
		return
	}
	h.forbid(w, r, id, msg)
}

func (h *Handler) forbid(w http.ResponseWriter, r *http.Request, id *auth.Identity, msg string) {
	h.refused.WithLabelValues("403").Inc()
	h.cfg.Logger.Info("request refused", "path", r.URL.Path, "status", http.StatusForbidden, "identity", id.Name, "remote", r.RemoteAddr)
	w.Header().Set("Cache-Control", "no-store")
	http.Error(w, msg, http.StatusForbidden)
}

// auditRefusal records a refused request; req is nil when the path has not
// been parsed yet.
func (h *Handler) auditRefusal(r *http.Request, id *auth.Identity, decision string, status int, req *proxy.Request, rule string) {
	if h.cfg.Audit == nil {
		return
	}
	if req == nil {
		pr, err := proxy.ParsePath(r.URL.Path)
		if err != nil {
			return // not an artifact request
		}
		req = &pr
	}
	if decision == "forbidden" && id != nil && id.Via == auth.Anonymous {
		decision, status = "unauthenticated", http.StatusUnauthorized
	}
	h.cfg.Audit.record(r, id, *req, decision, status, rule)
}

func decisionFor(status int) string {
	switch {
	case status < 400:
		return "served"
	case status == http.StatusNotFound || status == http.StatusGone:
		return "not_found"
	}
	return "failed"
}

// statusWriter records the status a handler answered with.
type statusWriter struct {
	http.ResponseWriter
	status int
	wrote  bool
}

func (s *statusWriter) WriteHeader(code int) {
	if !s.wrote {
		s.status, s.wrote = code, true
	}
	s.ResponseWriter.WriteHeader(code)
}

func (s *statusWriter) Write(p []byte) (int, error) {
	s.wrote = true
	return s.ResponseWriter.Write(p)
}

func (s *statusWriter) Unwrap() http.ResponseWriter { return s.ResponseWriter }
