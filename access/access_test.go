package access

import (
	"bytes"
	"encoding/base64"
	"encoding/json"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"strconv"
	"strings"
	"sync"
	"testing"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/common/expfmt"
	"golang.org/x/crypto/bcrypt"
	"golang.org/x/mod/module"

	"github.com/modproxy/modproxy/auth"
	"github.com/modproxy/modproxy/policy"
)

// fakeProxy stands for proxy.Server: it knows one private module and
// counts what reaches it.
type fakeProxy struct {
	mu   sync.Mutex
	hits []string
}

func (f *fakeProxy) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	f.mu.Lock()
	f.hits = append(f.hits, r.URL.Path)
	f.mu.Unlock()
	if strings.Contains(r.URL.Path, "missing") {
		http.Error(w, "not found", http.StatusNotFound)
		return
	}
	io.WriteString(w, "content of "+r.URL.Path)
}

func (f *fakeProxy) count() int {
	f.mu.Lock()
	defer f.mu.Unlock()
	return len(f.hits)
}

type fixture struct {
	h              *Handler
	next           *fakeProxy
	reg            *prometheus.Registry
	logs, audit    *bytes.Buffer
	pub, priv, adm string // tokens
	secrets        []string
}

const private = "git.corp.example"

func newFixture(t *testing.T, anonymous []string, pol string, separateAdmin bool) *fixture {
	t.Helper()
	f := &auth.File{Anonymous: anonymous}
	fx := &fixture{next: &fakeProxy{}, reg: prometheus.NewRegistry(), logs: &bytes.Buffer{}, audit: &bytes.Buffer{}}
	var err error
	add := func(name string, scopes ...string) string {
		tok, err := f.AddToken(name, scopes, bcrypt.MinCost)
		if err != nil {
			t.Fatal(err)
		}
		fx.secrets = append(fx.secrets, tok)
		return tok
	}
	fx.pub = add("reader", "public")
	fx.priv = add("dev", "public", private+"/team/*")
	fx.adm = add("ops", "admin")
	a, err := auth.New(f)
	if err != nil {
		t.Fatal(err)
	}
	cfg := Config{
		Auth:          a,
		IsPrivate:     func(p string) bool { return module.MatchPrefixPatterns(private, p) },
		SeparateAdmin: separateAdmin,
		Audit:         NewAudit(&lockedBuffer{b: fx.audit}),
		Logger:        slog.New(slog.NewTextHandler(&lockedBuffer{b: fx.logs}, nil)),
		Registerer:    fx.reg,
	}
	if pol != "" {
		p, err := policy.Parse([]byte(pol))
		if err != nil {
			t.Fatal(err)
		}
		cfg.Policy = &PolicyHolder{}
		cfg.Policy.Store(p)
	}
	fx.h = New(fx.next, cfg)
	return fx
}

type lockedBuffer struct {
	mu sync.Mutex
	b  *bytes.Buffer
}

func (l *lockedBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (fx *fixture) do(h http.Handler, path, authz string) *httptest.ResponseRecorder {
	r := httptest.NewRequest("GET", path, nil)
	if authz != "" {
		r.Header.Set("Authorization", authz)
	}
	w := httptest.NewRecorder()
	h.ServeHTTP(w, r)
	return w
}

func bearer(tok string) string { return "Bearer " + tok }

func TestScopesAndStatuses(t *testing.T) {
	fx := newFixture(t, nil, "", false)
	privZip := "/" + private + "/team/lib/@v/v1.0.0.zip"
	privMissing := "/" + private + "/team/missing/@v/v1.0.0.zip"
	otherPriv := "/" + private + "/other/lib/@v/v1.0.0.info"
	for _, tc := range []struct {
		name, path, authz string
		code              int
		body              string // a part of the body
	}{
		{"no credentials", "/example.com/m/@v/list", "", 401, "authentication required"},
		{"bad token", "/example.com/m/@v/list", bearer("mpx_nope"), 401, "invalid credentials"},
		{"public reader, public", "/example.com/m/@v/list", bearer(fx.pub), 200, "content"},
		{"public reader, private", privZip, bearer(fx.pub), 403, `identity "reader" lacks a scope for this module path (needs a module path pattern matching git.corp.example/team/lib)`},
		// The same answer for a private module that does not exist.
		{"public reader, missing private", privMissing, bearer(fx.pub), 403, `identity "reader" lacks a scope`},
		{"dev, private", privZip, bearer(fx.priv), 200, "content"},
		{"dev, missing private", privMissing, bearer(fx.priv), 404, "not found"},
		{"dev, private outside its pattern", otherPriv, bearer(fx.priv), 403, "needs a module path pattern"},
		{"dev, sumdb", "/sumdb/sum.example/supported", bearer(fx.priv), 200, ""},
		{"admin reads private", otherPriv, bearer(fx.adm), 200, ""},
		{"admin sumdb", "/sumdb/sum.example/supported", bearer(fx.adm), 200, ""},
		{"metrics without admin", "/metrics", bearer(fx.priv), 403, `lacks the "admin" scope`},
		{"metrics unauthenticated", "/metrics", "", 401, ""},
		{"debug with admin", "/debug/upstreams", bearer(fx.adm), 200, ""},
		{"healthz needs admin", "/healthz", bearer(fx.pub), 403, ""},
		{"root banner", "/", "", 200, ""},
		// One decision whatever the spelling: percent-encoding is decoded
		// before the check, as before the proxy's own parse.
		{"percent-encoded private", "/git.corp.example/team/%6cib/@v/v1.0.0.zip", bearer(fx.pub), 403, "lacks a scope"},
		{"case-encoded private", "/git.corp.example/!team/lib/@v/v1.0.0.zip", bearer(fx.priv), 403, "lacks a scope"}, // Team/* is not team/*
		{"traversal", "/git.corp.example/team/../team/lib/@v/v1.0.0.zip", bearer(fx.pub), 400, ""},
		{"bad path still needs auth", "/not%20a%20path", "", 401, ""},
		{"bad path with auth", "/nodot/@v/list", bearer(fx.pub), 400, "invalid request path"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			before := fx.next.count()
			w := fx.do(fx.h, tc.path, tc.authz)
			if w.Code != tc.code || !strings.Contains(w.Body.String(), tc.body) {
				t.Fatalf("%s: %d %q; want %d containing %q", tc.path, w.Code, w.Body, tc.code, tc.body)
			}
			if tc.code == 401 && len(w.Header().Values("WWW-Authenticate")) == 0 {
				t.Error("401 without WWW-Authenticate")
			}
			if (tc.code == 401 || tc.code == 403) && fx.next.count() != before {
				t.Error("a refused request reached the proxy")
			}
		})
	}
}

func TestAnonymousPublic(t *testing.T) {
	fx := newFixture(t, []string{"public"}, "", false)
	if w := fx.do(fx.h, "/example.com/m/@latest", ""); w.Code != 200 {
		t.Fatalf("anonymous public read: %d %s", w.Code, w.Body)
	}
	// Private paths get 401, so that the go command retries with its
	// credentials, whether or not the module exists.
	for _, p := range []string{"/" + private + "/team/lib/@v/list", "/" + private + "/team/missing/@v/list"} {
		w := fx.do(fx.h, p, "")
		if w.Code != 401 || w.Header().Get("WWW-Authenticate") == "" {
			t.Fatalf("anonymous private read %s: %d %s", p, w.Code, w.Body)
		}
	}
	if w := fx.do(fx.h, "/metrics", ""); w.Code != 401 {
		t.Fatalf("anonymous metrics: %d", w.Code)
	}
	if w := fx.do(fx.h, "/"+private+"/team/lib/@v/list", bearer(fx.priv)); w.Code != 200 {
		t.Fatalf("dev after anonymous: %d", w.Code)
	}
}

func TestSeparateAdmin(t *testing.T) {
	fx := newFixture(t, nil, "", true)
	for _, p := range []string{"/metrics", "/debug/upstreams", "/healthz", "/readyz"} {
		if w := fx.do(fx.h, p, bearer(fx.adm)); w.Code != 404 {
			t.Errorf("main listener %s: %d, want 404", p, w.Code)
		}
		if w := fx.do(fx.h.Admin(), p, ""); w.Code != 200 {
			t.Errorf("admin listener %s: %d, want 200 without credentials", p, w.Code)
		}
	}
	if w := fx.do(fx.h.Admin(), "/example.com/m/@v/list", ""); w.Code != 404 {
		t.Errorf("admin listener serves modules: %d", w.Code)
	}
}

func TestPolicyAndAudit(t *testing.T) {
	fx := newFixture(t, nil, `
rules:
  - name: bad-version
    action: deny
    paths: [example.com/m]
    versions: "v1.0.1"
    reason: "known bad: use v1.0.2"
`, false)
	w := fx.do(fx.h, "/example.com/m/@v/v1.0.1.zip", bearer(fx.pub))
	want := `forbidden by module policy: example.com/m@v1.0.1 denied by rule "bad-version": known bad: use v1.0.2`
	if w.Code != 403 || strings.TrimSpace(w.Body.String()) != want {
		t.Fatalf("denied version: %d %q", w.Code, w.Body)
	}
	if w := fx.do(fx.h, "/example.com/m/@v/v1.0.2.zip", bearer(fx.pub)); w.Code != 200 {
		t.Fatalf("allowed version: %d", w.Code)
	}
	// Unauthenticated requests learn nothing of the policy.
	if w := fx.do(fx.h, "/example.com/m/@v/v1.0.1.zip", ""); w.Code != 401 || strings.Contains(w.Body.String(), "policy") {
		t.Fatalf("unauthenticated denied version: %d %q", w.Code, w.Body)
	}
	fx.do(fx.h, "/"+private+"/team/lib/@v/v1.0.0.mod", bearer(fx.pub))
	fx.do(fx.h, "/example.com/missing/@v/v1.0.0.info", bearer(fx.pub))

	var got []map[string]any
	for line := range strings.SplitSeq(strings.TrimSpace(fx.audit.String()), "\n") {
		var m map[string]any
		if err := json.Unmarshal([]byte(line), &m); err != nil {
			t.Fatalf("audit line %q: %v", line, err)
		}
		got = append(got, m)
	}
	want5 := []struct{ identity, module, version, kind, decision string }{
		{"reader", "example.com/m", "v1.0.1", "zip", "denied"},
		{"reader", "example.com/m", "v1.0.2", "zip", "served"},
		{"", "example.com/m", "v1.0.1", "zip", "unauthenticated"},
		{"reader", private + "/team/lib", "v1.0.0", "mod", "forbidden"},
		{"reader", "example.com/missing", "v1.0.0", "info", "not_found"},
	}
	if len(got) != len(want5) {
		t.Fatalf("%d audit lines, want %d:\n%s", len(got), len(want5), fx.audit)
	}
	for i, w := range want5 {
		g := got[i]
		if g["identity"] != w.identity || g["module"] != w.module || g["version"] != w.version || g["kind"] != w.kind || g["decision"] != w.decision {
			t.Errorf("audit line %d = %v, want %+v", i, g, w)
		}
	}
	if got[0]["rule"] != "bad-version" {
		t.Errorf("denied line has rule %v", got[0]["rule"])
	}
	if n := counter(t, fx.reg, "modproxy_policy_denied_total", "bad-version"); n != 1 {
		t.Errorf("modproxy_policy_denied_total{rule=bad-version} = %v, want 1", n)
	}
}

func counter(t *testing.T, reg *prometheus.Registry, name, label string) float64 {
	t.Helper()
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, mf := range mfs {
		if mf.GetName() != name {
			continue
		}
		for _, m := range mf.GetMetric() {
			for _, l := range m.GetLabel() {
				if l.GetValue() == label {
					return m.GetCounter().GetValue()
				}
			}
		}
	}
	return 0
}

// TestNoSecretsAnywhere sends good, wrong and malformed credentials and
// checks that no token or password shows in the bodies, the log, the
// audit log or the metrics.
func TestNoSecretsAnywhere(t *testing.T) {
	fx := newFixture(t, []string{"public"}, "rules:\n  - {name: deny-all-private, action: deny, paths: ['"+private+"/team/locked'], reason: nope}\n", false)
	wrong := fx.pub[:len(fx.pub)-5] + "XXXXX"
	pass := "hunter2-correct-horse"
	fx.secrets = append(fx.secrets, wrong, pass)
	basic := func(u, p string) string { return "Basic " + base64.StdEncoding.EncodeToString([]byte(u+":"+p)) }
	var bodies bytes.Buffer
	for _, authz := range []string{
		bearer(fx.pub), bearer(fx.priv), bearer(fx.adm), bearer(wrong), basic("reader", fx.pub), basic("dev", fx.pub),
		basic("reader", pass), bearer(pass), "Bearer " + pass + " extra", "Basic " + pass, "Digest " + fx.pub, "",
	} {
		for _, p := range []string{"/example.com/m/@v/list", "/" + private + "/team/lib/@v/v1.0.0.zip", "/" + private + "/team/locked/@v/v1.0.0.zip", "/metrics", "/bad%20path"} {
			w := fx.do(fx.h, p, authz)
			bodies.WriteString(w.Body.String())
			for k, v := range w.Header() {
				bodies.WriteString(k + ": " + strings.Join(v, ",") + "\n")
			}
		}
	}
	mfs, _ := fx.reg.Gather()
	var metrics bytes.Buffer
	for _, mf := range mfs {
		expfmt.MetricFamilyToText(&metrics, mf)
	}
	for where, text := range map[string]string{"bodies": bodies.String(), "log": fx.logs.String(), "audit": fx.audit.String(), "metrics": metrics.String()} {
		if text == "" && where != "metrics" {
			t.Errorf("%s: empty; the test checked nothing", where)
		}
		for _, s := range fx.secrets {
			for _, part := range []string{s, s[len(s)-20:]} {
				if strings.Contains(text, part) {
					t.Errorf("%s contains a secret (%.8s…)", where, part)
				}
			}
		}
	}
}

func TestPolicyQueries(t *testing.T) {
	fx := newFixture(t, nil, "rules:\n  - {name: bad, action: deny, paths: [example.com/m], versions: '<v1.0.2'}\n", false)
	for p, want := range map[string]int{
		"/example.com/m/@v/master.info":     403, // a query: fail closed
		"/example.com/m/@v/v1.0.1.info":     403,
		"/example.com/m/@v/v1.0.2.info":     200,
		"/example.com/m/@v/list":            200, // a range does not hide the list
		"/example.com/m/@latest":            200,
		"/example.com/other/@v/v1.0.0.info": 200,
	} {
		if w := fx.do(fx.h, p, bearer(fx.pub)); w.Code != want {
			t.Errorf("%s: %d %s, want %d", p, w.Code, w.Body, want)
		}
	}
}

// TestNothingConfigured: with no auth, policy or audit, requests go
// straight through, admin endpoints included.
func TestNothingConfigured(t *testing.T) {
	next := &fakeProxy{}
	h := New(next, Config{})
	for _, p := range []string{"/metrics", "/example.com/m/@v/list", "/bad%20path", "/sumdb/x/supported"} {
		w := httptest.NewRecorder()
		h.ServeHTTP(w, httptest.NewRequest("GET", p, nil))
		if w.Code != 200 {
			t.Errorf("%s: %d", p, w.Code)
		}
	}
}

// listProxy answers a version list with conditional-request headers.
type listProxy struct{ got http.Header }

func (l *listProxy) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	l.got = r.Header.Clone()
	w.Header().Set("ETag", `"abc"`)
	w.Header().Set("Content-Type", "text/plain; charset=utf-8")
	if strings.Contains(r.URL.Path, "missing") {
		http.Error(w, "not found: no such module", http.StatusNotFound)
		return
	}
	io.WriteString(w, "v1.0.0\nv1.0.1\nv1.1.0-pre\n\nv1.2.0\n")
}

func TestPolicyFiltersVersionLists(t *testing.T) {
	p, err := policy.Parse([]byte("rules:\n  - {name: bad, action: deny, paths: [example.com/m], versions: 'v1.0.1 || >=v1.2.0'}\n"))
	if err != nil {
		t.Fatal(err)
	}
	next := &listProxy{}
	holder := &PolicyHolder{}
	holder.Store(p)
	h := New(next, Config{Policy: holder})
	for _, method := range []string{"GET", "HEAD"} {
		r := httptest.NewRequest(method, "/example.com/m/@v/list", nil)
		r.Header.Set("If-None-Match", `"abc"`)
		w := httptest.NewRecorder()
		h.ServeHTTP(w, r)
		want := "v1.0.0\nv1.1.0-pre\n"
		if w.Code != 200 || (method == "GET" && w.Body.String() != want) || w.Header().Get("Content-Length") != strconv.Itoa(len(want)) {
			t.Errorf("%s filtered list: %d %q (Content-Length %s)", method, w.Code, w.Body, w.Header().Get("Content-Length"))
		}
		if w.Header().Get("ETag") != "" || next.got.Get("If-None-Match") != "" {
			t.Errorf("%s: validators passed through a filtered list", method)
		}
	}
	// Another module's list and error answers pass as they are.
	w := httptest.NewRecorder()
	h.ServeHTTP(w, httptest.NewRequest("GET", "/example.com/other/@v/list", nil))
	if w.Body.String() != "v1.0.0\nv1.0.1\nv1.1.0-pre\nv1.2.0\n" {
		t.Errorf("unaffected list: %q", w.Body)
	}
	w = httptest.NewRecorder()
	h.ServeHTTP(w, httptest.NewRequest("GET", "/example.com/missing/@v/list", nil))
	if w.Code != 404 || !strings.Contains(w.Body.String(), "no such module") {
		t.Errorf("error answer: %d %q", w.Code, w.Body)
	}
}
