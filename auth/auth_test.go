package auth

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/base64"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"golang.org/x/crypto/bcrypt"
)

// countBcrypt counts bcrypt comparisons for the test's duration.
func countBcrypt(t *testing.T) *atomic.Int64 {
	t.Helper()
	var n atomic.Int64
	orig := compareHash
	compareHash = func(h, p []byte) error { n.Add(1); return orig(h, p) }
	t.Cleanup(func() { compareHash = orig })
	return &n
}

func newFile(t *testing.T, anonymous []string, ids ...struct {
	name   string
	scopes []string
}) (*File, map[string]string) {
	t.Helper()
	f := &File{Anonymous: anonymous}
	tokens := map[string]string{}
	for _, id := range ids {
		tok, err := f.AddToken(id.name, id.scopes, bcrypt.MinCost)
		if err != nil {
			t.Fatal(err)
		}
		tokens[id.name] = tok
	}
	return f, tokens
}

type ident = struct {
	name   string
	scopes []string
}

func req(header string) *http.Request {
	r := httptest.NewRequest("GET", "/example.com/m/@v/list", nil)
	if header != "" {
		r.Header.Set("Authorization", header)
	}
	return r
}

func basic(user, pass string) string {
	return "Basic " + base64.StdEncoding.EncodeToString([]byte(user+":"+pass))
}

func TestAuthenticateTokens(t *testing.T) {
	f, tok := newFile(t, nil, ident{"ci", []string{"public"}}, ident{"dev", []string{"git.corp.example/*"}})
	a, err := New(f)
	if err != nil {
		t.Fatal(err)
	}
	ci := tok["ci"]
	// Same id, same length, one character changed: a forged secret.
	last := "A"
	if strings.HasSuffix(ci, "A") {
		last = "B"
	}
	forged := ci[:len(ci)-1] + last
	otherID := tok["dev"][:len(tokenPrefix)+2*idBytes] + ci[len(tokenPrefix)+2*idBytes:]
	for _, tc := range []struct {
		name, header string
		want         string // identity name, or "" for a 401
	}{
		{"bearer", "Bearer " + ci, "ci"},
		{"bearer scheme case", "bEaReR " + ci, "ci"},
		{"basic with the identity name", basic("ci", ci), "ci"},
		{"basic with another name", basic("dev", ci), ""},
		{"basic with an empty name", basic("", ci), ""},
		{"no header, no anonymous", "", ""},
		{"forged secret", "Bearer " + forged, ""},
		{"secret of ci under dev's id", "Bearer " + otherID, ""},
		{"truncated token", "Bearer " + ci[:len(ci)-2], ""},
		{"not a token", "Bearer hunter2", ""},
		{"the hash itself", "Bearer " + f.Identities[0].TokenHash, ""},
		{"unknown scheme", "Digest " + ci, ""},
		{"dev", basic("dev", tok["dev"]), "dev"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			for range 2 { // uncached, then cached
				id, err := a.Authenticate(req(tc.header))
				if tc.want == "" {
					var ae *Error
					if err == nil || !asError(err, &ae) || ae.Status != 401 {
						t.Fatalf("got %v, %v; want a 401", id, err)
					}
					if strings.Contains(err.Error(), ci) || (len(tc.header) > 8 && strings.Contains(err.Error(), tc.header[7:])) {
						t.Fatalf("error %q quotes the credentials", err)
					}
					continue
				}
				if err != nil || id.Name != tc.want {
					t.Fatalf("got %v, %v; want %s", id, err, tc.want)
				}
			}
		})
	}
}

func asError(err error, target **Error) bool {
	e, ok := err.(*Error)
	*target = e
	return ok
}

func TestTokenChecksAreCached(t *testing.T) {
	n := countBcrypt(t)
	f, tok := newFile(t, nil, ident{"ci", []string{"public"}})
	a, err := New(f)
	if err != nil {
		t.Fatal(err)
	}
	var wg sync.WaitGroup
	for range 8 {
		wg.Go(func() {
			for range 50 {
				if _, err := a.Authenticate(req("Bearer " + tok["ci"])); err != nil {
					t.Error(err)
					return
				}
			}
		})
	}
	wg.Wait()
	// Concurrent first requests may each compare once; the 392 after
	// them must not.
	if got := n.Load(); got < 1 || got > 8 {
		t.Fatalf("%d bcrypt comparisons for 400 requests with one token", got)
	}
	// A wrong secret is compared once, then remembered.
	before := n.Load()
	bad := tok["ci"][:len(tok["ci"])-4] + "----" // never the real ending (A, Q, g or w)
	for range 20 {
		if _, err := a.Authenticate(req("Bearer " + bad)); err == nil {
			t.Fatal("a wrong secret was accepted")
		}
	}
	if got := n.Load() - before; got != 1 {
		t.Fatalf("%d bcrypt comparisons for 20 requests with one wrong secret, want 1", got)
	}
	// The good token still works after the wrong one was remembered.
	if _, err := a.Authenticate(req("Bearer " + tok["ci"])); err != nil {
		t.Fatal(err)
	}
}

func TestReloadDropsRemovedTokens(t *testing.T) {
	f, tok := newFile(t, nil, ident{"ci", []string{"public"}}, ident{"dev", []string{"public"}})
	a, err := New(f)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := a.Authenticate(req("Bearer " + tok["ci"])); err != nil {
		t.Fatal(err)
	}
	if err := f.Remove("ci"); err != nil {
		t.Fatal(err)
	}
	if err := a.Load(f); err != nil {
		t.Fatal(err)
	}
	if _, err := a.Authenticate(req("Bearer " + tok["ci"])); err == nil {
		t.Fatal("a removed token still works after reload (stale cache)")
	}
	if _, err := a.Authenticate(req("Bearer " + tok["dev"])); err != nil {
		t.Fatalf("a kept token stopped working: %v", err)
	}
	// A bad file is refused and the old one stays in force.
	bad := &File{Identities: []Entry{{Name: "x", TokenID: "zz", TokenHash: "plain", Scopes: []string{"public"}}}}
	if err := a.Load(bad); err == nil {
		t.Fatal("an invalid file was loaded")
	}
	if _, err := a.Authenticate(req("Bearer " + tok["dev"])); err != nil {
		t.Fatalf("a failed reload changed what is in force: %v", err)
	}
}

func TestAnonymousAndSubjects(t *testing.T) {
	f := &File{Anonymous: []string{"public"}}
	if err := f.AddSubject("bot", "CN=bot,O=Corp", []string{"admin"}); err != nil {
		t.Fatal(err)
	}
	a, err := New(f)
	if err != nil {
		t.Fatal(err)
	}
	id, err := a.Authenticate(req(""))
	if err != nil || id.Via != Anonymous || !id.Scopes.Public || id.Scopes.Admin {
		t.Fatalf("anonymous: %+v, %v", id, err)
	}
	// A bad header is a 401 even though anonymous access is allowed:
	// the client meant to authenticate.
	if _, err := a.Authenticate(req("Bearer nope")); err == nil {
		t.Fatal("bad credentials fell back to anonymous")
	}
	cert := &x509.Certificate{Subject: pkix.Name{CommonName: "bot", Organization: []string{"Corp"}}}
	r := req("")
	r.TLS = &tls.ConnectionState{PeerCertificates: []*x509.Certificate{cert}, VerifiedChains: [][]*x509.Certificate{{cert}}}
	if id, err := a.Authenticate(r); err != nil || id.Name != "bot" || id.Via != "mtls" {
		t.Fatalf("mTLS: %+v, %v", id, err)
	}
	// An unverified certificate (no chain) is no identity.
	r.TLS.VerifiedChains = nil
	if id, _ := a.Authenticate(r); id == nil || id.Name != "anonymous" {
		t.Fatalf("unverified certificate: %+v", id)
	}
}

func TestScopes(t *testing.T) {
	for _, tc := range []struct {
		scopes  []string
		path    string
		private bool
		want    bool
	}{
		{[]string{"public"}, "github.com/a/b", false, true},
		{[]string{"public"}, "git.corp.example/x", true, false},
		{[]string{"git.corp.example/*"}, "git.corp.example/x", true, true},
		{[]string{"git.corp.example/*"}, "git.corp.example/x/y", true, true},
		{[]string{"git.corp.example/*"}, "git.corp.example", true, false},
		{[]string{"git.corp.example"}, "git.corp.example/x/y", true, true},
		{[]string{"git.corp.example/*"}, "Git.Corp.Example/x", true, false}, // case variants are not granted
		{[]string{"git.corp.example/*"}, "github.com/a/b", false, false},
		{[]string{"git.corp.example/team"}, "git.corp.example/teamx", true, false},
		{[]string{"admin"}, "git.corp.example/x", true, true},
		{[]string{"admin"}, "github.com/a", false, true},
		{[]string{"public", "git.corp.example/*"}, "git.corp.example/x", true, true},
	} {
		sc, err := parseScopes(tc.scopes)
		if err != nil {
			t.Fatal(err)
		}
		if got := sc.CanRead(tc.path, tc.private); got != tc.want {
			t.Errorf("%v CanRead(%s, private=%v) = %v, want %v", tc.scopes, tc.path, tc.private, got, tc.want)
		}
	}
}

func TestParseFileTraps(t *testing.T) {
	good, _ := newFile(t, nil, ident{"ci", []string{"public"}})
	h := good.Identities[0].TokenHash
	id := good.Identities[0].TokenID
	for name, tc := range map[string]struct{ yaml, want string }{
		"typo key":           {"identities:\n  - name: ci\n    token_id: " + id + "\n    token_hash: '" + h + "'\n    scope: [public]\n", "field scope not found"},
		"plain token stored": {"identities:\n  - name: ci\n    token_id: " + id + "\n    token_hash: mpx_secret\n    scopes: [public]\n", "not a bcrypt hash"},
		"no scopes":          {"identities:\n  - name: ci\n    token_id: " + id + "\n    token_hash: '" + h + "'\n", "no scopes"},
		"empty name":         {"identities:\n  - name: ''\n    subject: CN=x\n    scopes: [public]\n", "name must be"},
		"duplicate name":     {"identities:\n  - {name: a, subject: CN=x, scopes: [public]}\n  - {name: a, subject: CN=y, scopes: [public]}\n", "duplicate name"},
		"duplicate subject":  {"identities:\n  - {name: a, subject: CN=x, scopes: [public]}\n  - {name: b, subject: CN=x, scopes: [public]}\n", "duplicate subject"},
		"no credential":      {"identities:\n  - {name: a, scopes: [public]}\n", "needs token_id"},
		"token and subject":  {"identities:\n  - {name: a, subject: CN=x, token_id: " + id + ", token_hash: '" + h + "', scopes: [public]}\n", "both"},
		"upper-case scope":   {"identities:\n  - {name: a, subject: CN=x, scopes: [Public]}\n", "lower case"},
		"comma pattern":      {"identities:\n  - {name: a, subject: CN=x, scopes: ['a.example,b.example']}\n", "commas"},
		"bad glob":           {"identities:\n  - {name: a, subject: CN=x, scopes: ['a.example/[']}\n", "bad pattern"},
		"anonymous admin":    {"anonymous: [admin]\nidentities: []\n", "anonymous"},
		"uppercase token id": {"identities:\n  - name: ci\n    token_id: " + strings.ToUpper(id) + "\n    token_hash: '" + h + "'\n    scopes: [public]\n", "lower-case hex"},
	} {
		t.Run(name, func(t *testing.T) {
			_, err := ParseFile([]byte(tc.yaml))
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("got %v, want an error containing %q", err, tc.want)
			}
		})
	}
	// The encoded file parses back to the same identities.
	data, err := good.Marshal()
	if err != nil {
		t.Fatal(err)
	}
	back, err := ParseFile(data)
	if err != nil || len(back.Identities) != 1 || back.Identities[0].TokenHash != h {
		t.Fatalf("round trip: %+v, %v\n%s", back, err, data)
	}
}

func TestTokenShape(t *testing.T) {
	tok, id, err := NewToken()
	if err != nil {
		t.Fatal(err)
	}
	if got, ok := tokenID(tok); !ok || got != id {
		t.Fatalf("tokenID(%q) = %q, %v; want %q", tok, got, ok, id)
	}
	if _, err := ParseAuthorization("Bearer " + tok); err != nil {
		t.Fatalf("a new token is not a valid Bearer credential: %v", err)
	}
	tok2, _, _ := NewToken()
	if tok2 == tok {
		t.Fatal("two tokens are equal")
	}
	h, err := HashToken(tok, bcrypt.MinCost)
	if err != nil || strings.Contains(h, tok) || bcrypt.CompareHashAndPassword([]byte(h), []byte(tok)) != nil {
		t.Fatalf("hash %q, %v", h, err)
	}
}

// TestBcryptIsBounded: a flood of distinct wrong secrets for a known token
// id runs at most cap(bcryptSem) comparisons at once, and a request whose
// client left stops waiting.
func TestBcryptIsBounded(t *testing.T) {
	f, tok := newFile(t, nil, ident{"ci", []string{"public"}})
	a, err := New(f)
	if err != nil {
		t.Fatal(err)
	}
	a.bcryptSem = make(chan struct{}, 2) // whatever this machine's cores
	var cur, peak atomic.Int32
	release := make(chan struct{})
	orig := compareHash
	compareHash = func(h, p []byte) error {
		n := cur.Add(1)
		for {
			old := peak.Load()
			if n <= old || peak.CompareAndSwap(old, n) {
				break
			}
		}
		<-release
		cur.Add(-1)
		return orig(h, p)
	}
	t.Cleanup(func() { compareHash = orig })

	var wg sync.WaitGroup
	for i := range 10 {
		wg.Go(func() {
			// The last character of a real token is one of A, Q, g, w:
			// these never equal it.
			bad := tok["ci"][:len(tok["ci"])-2] + "-" + string(rune('a'+i))
			if _, err := a.Authenticate(req("Bearer " + bad)); err == nil {
				t.Error("wrong secret accepted")
			}
		})
	}
	for cur.Load() < 2 { // both slots taken by the flood, the rest waiting
		time.Sleep(time.Millisecond)
	}
	// A request whose context ends while it waits for a slot returns.
	r := req("Bearer " + tok["ci"][:len(tok["ci"])-2] + "zz")
	ctx, cancel := context.WithCancel(r.Context())
	done := make(chan error, 1)
	go func() {
		_, err := a.Authenticate(r.WithContext(ctx))
		done <- err
	}()
	time.Sleep(20 * time.Millisecond)
	if got := peak.Load(); got > int32(cap(a.bcryptSem)) {
		t.Errorf("%d concurrent bcrypt comparisons, cap %d", got, cap(a.bcryptSem))
	}
	cancel()
	select {
	case err := <-done:
		if err == nil {
			t.Error("cancelled request authenticated")
		}
	case <-time.After(5 * time.Second):
		t.Error("a cancelled request still waits for a bcrypt slot")
	}
	close(release)
	wg.Wait()
	if got := peak.Load(); got > int32(cap(a.bcryptSem)) {
		t.Errorf("%d concurrent bcrypt comparisons, cap %d", got, cap(a.bcryptSem))
	}
}
