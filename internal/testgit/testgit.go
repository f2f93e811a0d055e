// Package testgit is a git server for tests: bare repositories served by
// "git http-backend" behind net/http/cgi on 127.0.0.1, over HTTP and HTTPS
// (a fresh test CA), with basic auth on chosen repositories and
// ?go-get=1 go-import pages. A forward proxy on 127.0.0.1 routes every
// host name to it, so that clients (the go command, git, modproxy) reach
// module paths such as git.corp.example/lib by setting HTTP(S)_PROXY.
//
// Tests that need git call Require, which skips when git is missing and
// fails instead when MODPROXY_REQUIRE_GIT=1.
package testgit

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"fmt"
	"html"
	"io"
	"math/big"
	"net"
	"net/http"
	"net/http/cgi"
	"net/http/httptest"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strings"
	"sync"
	"testing"
	"time"
)

// Host is the default host name of module paths served by a Server.
const Host = "git.corp.example"

// Require skips t when git (with http-backend) is not installed, or fails
// it when MODPROXY_REQUIRE_GIT=1.
func Require(t testing.TB) {
	t.Helper()
	_, err := exec.LookPath("git")
	if err == nil {
		var out []byte
		out, err = exec.Command("git", "--exec-path").Output()
		if err == nil {
			_, err = os.Stat(filepath.Join(strings.TrimSpace(string(out)), "git-http-backend"))
		}
	}
	if err != nil {
		if os.Getenv("MODPROXY_REQUIRE_GIT") == "1" {
			t.Fatalf("git with http-backend is required (MODPROXY_REQUIRE_GIT=1): %v", err)
		}
		t.Skipf("git with http-backend is not installed: %v", err)
	}
}

// GoImport is one go-import meta tag served at Prefix's ?go-get=1 page.
type GoImport struct {
	Prefix, VCS, Repo, SubDir string
}

// Server serves bare repositories under Root.
type Server struct {
	t        testing.TB
	Root     string // holds <name>.git bare repositories
	http     *httptest.Server
	https    *httptest.Server
	proxy    *httptest.Server
	CAFile   string // PEM of the test CA the HTTPS listener's certificate chains to
	caPEM    []byte
	mu       sync.Mutex
	imports  []GoImport
	auth     map[string][2]string // repo name prefix -> user, password
	pageAuth map[string][2]string // go-get page path prefix -> user, password
	hold     time.Duration        // delay before answering each request
	requests []string             // "METHOD host path?query user", for privacy checks
}

// New starts a server; it is stopped by t.Cleanup.
func New(t testing.TB) *Server {
	t.Helper()
	Require(t)
	s := &Server{t: t, Root: t.TempDir(), auth: map[string][2]string{}, pageAuth: map[string][2]string{}}
	s.http = httptest.NewServer(http.HandlerFunc(s.serve))
	caCert, caKey, caPEM := newCA(t)
	s.caPEM = caPEM
	s.CAFile = filepath.Join(t.TempDir(), "ca.pem")
	if err := os.WriteFile(s.CAFile, caPEM, 0o600); err != nil {
		t.Fatal(err)
	}
	s.https = httptest.NewUnstartedServer(http.HandlerFunc(s.serve))
	s.https.TLS = &tls.Config{Certificates: []tls.Certificate{leaf(t, caCert, caKey)}}
	s.https.StartTLS()
	s.proxy = httptest.NewServer(http.HandlerFunc(s.forward))
	t.Cleanup(func() {
		s.proxy.Close()
		s.https.Close()
		s.http.Close()
	})
	return s
}

// Env is what a client process needs to reach the server by host name:
// the proxy (never for 127.0.0.1, where modproxy and fake upstreams run)
// and the test CA for Go programs and for git.
func (s *Server) Env() []string {
	p := s.proxy.URL
	return []string{
		"HTTP_PROXY=" + p, "HTTPS_PROXY=" + p, "http_proxy=" + p, "https_proxy=" + p,
		"NO_PROXY=127.0.0.1,localhost", "no_proxy=127.0.0.1,localhost",
		"SSL_CERT_FILE=" + s.CAFile, "GIT_SSL_CAINFO=" + s.CAFile,
	}
}

// Client is an HTTP client that reaches the server as Env's processes do.
func (s *Server) Client() *http.Client {
	pool := x509.NewCertPool()
	pool.AppendCertsFromPEM(s.caPEM)
	pu, _ := url.Parse(s.proxy.URL)
	return &http.Client{Timeout: 30 * time.Second, Transport: &http.Transport{
		Proxy: func(r *http.Request) (*url.URL, error) {
			if h := r.URL.Hostname(); h == "127.0.0.1" || h == "localhost" {
				return nil, nil
			}
			return pu, nil
		},
		TLSClientConfig: &tls.Config{RootCAs: pool},
	}}
}

// AddGoImport serves a go-import tag at prefix's ?go-get=1 page (and at
// the pages of paths below it).
func (s *Server) AddGoImport(imp GoImport) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.imports = append(s.imports, imp)
}

// RequireAuth protects repositories whose name starts with prefix.
func (s *Server) RequireAuth(prefix, user, password string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.auth[prefix] = [2]string{user, password}
}

// RequireAuthPages protects the ?go-get=1 pages of module paths starting
// with prefix (host/path), as private code hosts do.
func (s *Server) RequireAuthPages(prefix, user, password string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.pageAuth[prefix] = [2]string{user, password}
}

// Hold delays every answer by d (0: none), so that concurrent clients
// overlap.
func (s *Server) Hold(d time.Duration) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.hold = d
}

// HangHost is a host name whose HTTPS connections the proxy accepts and
// then never answers: a peer that hangs.
const HangHost = "hang.corp.example"

// RepoURL is the clone URL of repository name ("lib" for lib.git) over
// scheme ("http" or "https"), by host name.
func (s *Server) RepoURL(scheme, name string) string {
	return scheme + "://" + Host + "/repo/" + name + ".git"
}

// Requests returns the requests served so far.
func (s *Server) Requests() []string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return append([]string(nil), s.requests...)
}

func (s *Server) serve(w http.ResponseWriter, r *http.Request) {
	user, _, _ := r.BasicAuth()
	s.mu.Lock()
	s.requests = append(s.requests, fmt.Sprintf("%s %s %s?%s %s", r.Method, r.Host, r.URL.Path, r.URL.RawQuery, user))
	hold := s.hold
	s.mu.Unlock()
	if hold > 0 {
		time.Sleep(hold)
	}
	if r.URL.Query().Get("go-get") == "1" {
		s.serveGoImport(w, r)
		return
	}
	rest, ok := strings.CutPrefix(r.URL.Path, "/repo/")
	if !ok {
		http.NotFound(w, r)
		return
	}
	name, _, _ := strings.Cut(rest, ".git")
	name, _, _ = strings.Cut(name, "/info/")
	name, _, _ = strings.Cut(name, "/git-")
	s.mu.Lock()
	var need *[2]string
	for p, cred := range s.auth {
		if strings.HasPrefix(name, p) {
			need = &cred
		}
	}
	s.mu.Unlock()
	if need != nil {
		u, p, ok := r.BasicAuth()
		if !ok || u != need[0] || p != need[1] {
			w.Header().Set("WWW-Authenticate", `Basic realm="git"`)
			http.Error(w, "authentication required", http.StatusUnauthorized)
			return
		}
	}
	out, err := exec.Command("git", "--exec-path").Output()
	if err != nil {
		http.Error(w, err.Error(), 500)
		return
	}
	h := &cgi.Handler{
		Path: filepath.Join(strings.TrimSpace(string(out)), "git-http-backend"),
		Root: "/repo",
		Env:  []string{"GIT_PROJECT_ROOT=" + s.Root, "GIT_HTTP_EXPORT_ALL=1"},
	}
	h.ServeHTTP(w, r)
}

func (s *Server) serveGoImport(w http.ResponseWriter, r *http.Request) {
	path := r.Host + strings.TrimSuffix(r.URL.Path, "/")
	s.mu.Lock()
	imports := append([]GoImport(nil), s.imports...)
	var need *[2]string
	for p, cred := range s.pageAuth {
		if strings.HasPrefix(path, p) {
			need = &cred
		}
	}
	s.mu.Unlock()
	if need != nil {
		if u, p, ok := r.BasicAuth(); !ok || u != need[0] || p != need[1] {
			w.Header().Set("WWW-Authenticate", `Basic realm="go-get"`)
			http.Error(w, "authentication required", http.StatusUnauthorized)
			return
		}
	}
	sort.Slice(imports, func(i, j int) bool { return len(imports[i].Prefix) > len(imports[j].Prefix) })
	var b strings.Builder
	b.WriteString("<!DOCTYPE html>\n<html><head>\n")
	found := false
	for _, imp := range imports {
		if path == imp.Prefix || strings.HasPrefix(path, imp.Prefix+"/") {
			content := strings.TrimSpace(strings.Join([]string{imp.Prefix, imp.VCS, imp.Repo, imp.SubDir}, " "))
			fmt.Fprintf(&b, "<meta name=\"go-import\" content=\"%s\">\n", html.EscapeString(content))
			found = true
			break
		}
	}
	b.WriteString("</head><body>go get</body></html>\n")
	if !found {
		w.WriteHeader(http.StatusNotFound)
	}
	io.WriteString(w, b.String())
}

// forward is the forward proxy: CONNECT tunnels to the HTTPS listener,
// absolute-form requests are served by the HTTP handler.
func (s *Server) forward(w http.ResponseWriter, r *http.Request) {
	if r.Method != http.MethodConnect {
		s.serve(w, r)
		return
	}
	if strings.HasPrefix(r.Host, HangHost+":") {
		if conn, _, err := w.(http.Hijacker).Hijack(); err == nil {
			io.WriteString(conn, "HTTP/1.1 200 Connection established\r\n\r\n")
			go func() {
				io.Copy(io.Discard, conn) // until the client gives up
				conn.Close()
			}()
		}
		return
	}
	up, err := net.DialTimeout("tcp", s.https.Listener.Addr().String(), 10*time.Second)
	if err != nil {
		http.Error(w, err.Error(), http.StatusBadGateway)
		return
	}
	hj, ok := w.(http.Hijacker)
	if !ok {
		up.Close()
		http.Error(w, "no hijack", 500)
		return
	}
	conn, buf, err := hj.Hijack()
	if err != nil {
		up.Close()
		return
	}
	if _, err := io.WriteString(conn, "HTTP/1.1 200 Connection established\r\n\r\n"); err != nil {
		up.Close()
		conn.Close()
		return
	}
	go func() {
		defer up.Close()
		defer conn.Close()
		done := make(chan struct{})
		go func() {
			io.Copy(up, buf)
			close(done)
		}()
		io.Copy(conn, up)
		<-done
	}()
}

func newCA(t testing.TB) (*x509.Certificate, *ecdsa.PrivateKey, []byte) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "testgit CA"},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(24 * time.Hour),
		KeyUsage: x509.KeyUsageCertSign, BasicConstraintsValid: true, IsCA: true,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	cert, _ := x509.ParseCertificate(der)
	return cert, key, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der})
}

func leaf(t testing.TB, ca *x509.Certificate, caKey *ecdsa.PrivateKey) tls.Certificate {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(2), Subject: pkix.Name{CommonName: Host},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(24 * time.Hour),
		KeyUsage: x509.KeyUsageDigitalSignature, ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
		DNSNames: []string{Host, "*.corp.example", "localhost"}, IPAddresses: []net.IP{net.IPv4(127, 0, 0, 1)},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, ca, &key.PublicKey, caKey)
	if err != nil {
		t.Fatal(err)
	}
	return tls.Certificate{Certificate: [][]byte{der}, PrivateKey: key}
}

// Repo is a bare repository on the server with a work tree to build it.
type Repo struct {
	s    *Server
	Name string
	work string
	n    int // commits made, for distinct timestamps
}

// NewRepo creates the empty bare repository name.git and its work tree.
func (s *Server) NewRepo(name string) *Repo {
	s.t.Helper()
	r := &Repo{s: s, Name: name, work: s.t.TempDir()}
	bare := filepath.Join(s.Root, name+".git")
	r.git(s.Root, "init", "--bare", "-q", "-b", "main", bare)
	// Reachable as /repo/<name> too, as hosting sites allow.
	if err := os.Symlink(bare, filepath.Join(s.Root, name)); err != nil {
		s.t.Fatal(err)
	}
	r.git(r.work, "init", "-q", "-b", "main")
	r.git(r.work, "remote", "add", "origin", bare)
	return r
}

// base is the first commit's time; each commit is a minute later.
var base = time.Date(2024, 3, 1, 12, 0, 0, 0, time.UTC)

func (r *Repo) git(dir string, args ...string) string {
	r.s.t.Helper()
	cmd := exec.Command("git", args...)
	cmd.Dir = dir
	when := base.Add(time.Duration(r.n) * time.Minute).Format(time.RFC3339)
	cmd.Env = append(os.Environ(), "GIT_CONFIG_GLOBAL=/dev/null", "GIT_CONFIG_NOSYSTEM=1",
		"GIT_AUTHOR_NAME=t", "GIT_AUTHOR_EMAIL=t@example.com", "GIT_COMMITTER_NAME=t", "GIT_COMMITTER_EMAIL=t@example.com",
		"GIT_AUTHOR_DATE="+when, "GIT_COMMITTER_DATE="+when)
	out, err := cmd.CombinedOutput()
	if err != nil {
		r.s.t.Fatalf("git %s: %v\n%s", strings.Join(args, " "), err, out)
	}
	return strings.TrimSpace(string(out))
}

// Commit writes files (content "" deletes) into the work tree and commits
// them; it returns the commit hash.
func (r *Repo) Commit(msg string, files map[string]string) string {
	r.s.t.Helper()
	for name, data := range files {
		p := filepath.Join(r.work, filepath.FromSlash(name))
		if data == "" {
			os.Remove(p)
			continue
		}
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			r.s.t.Fatal(err)
		}
		if err := os.WriteFile(p, []byte(data), 0o644); err != nil {
			r.s.t.Fatal(err)
		}
	}
	r.n++
	r.git(r.work, "add", "-A")
	r.git(r.work, "commit", "-q", "--allow-empty", "-m", msg)
	return r.git(r.work, "rev-parse", "HEAD")
}

// Git runs git in the work tree (checkout, branch, ...).
func (r *Repo) Git(args ...string) string { return r.git(r.work, args...) }

// Tag tags HEAD (annotated when msg is not empty).
func (r *Repo) Tag(name, msg string) {
	if msg != "" {
		r.git(r.work, "tag", "-a", "-m", msg, name)
		return
	}
	r.git(r.work, "tag", name)
}

// Push mirrors the work tree's branches and tags into the bare repository.
func (r *Repo) Push() {
	r.git(r.work, "push", "-q", "--force", "--prune", "origin", "refs/heads/*:refs/heads/*", "refs/tags/*:refs/tags/*")
}

// FastImport feeds a git fast-import stream into the work tree (for large
// histories) and resets the work tree to its main branch.
func (r *Repo) FastImport(stream io.Reader) {
	r.s.t.Helper()
	cmd := exec.Command("git", "fast-import", "--quiet")
	cmd.Dir = r.work
	cmd.Stdin = stream
	if out, err := cmd.CombinedOutput(); err != nil {
		r.s.t.Fatalf("git fast-import: %v\n%s", err, out)
	}
	r.git(r.work, "reset", "-q", "--hard", "main")
}
