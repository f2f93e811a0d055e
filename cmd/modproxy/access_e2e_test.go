package main

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/modproxy/modproxy/internal/testpki"
	"github.com/modproxy/modproxy/internal/testupstream"
)

// startModproxyTLS runs "modproxy serve" on TLS with an admin listener and
// waits until the admin listener says it is ready.
func startModproxyTLS(t *testing.T, caPEM []byte, args ...string) (p *proc, adminURL string) {
	t.Helper()
	addr, admin := freeAddr(t), freeAddr(t)
	p = &proc{URL: "https://" + addr, logs: &syncBuffer{}, done: make(chan error, 1)}
	p.cmd = exec.Command(modproxyBin(t), append([]string{"serve", "--listen", addr, "--admin-listen", admin, "--ebpf=off"}, args...)...)
	p.cmd.Stdout, p.cmd.Stderr = p.logs, p.logs
	p.cmd.Env = append(os.Environ(), "GOFLAGS=")
	if err := p.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	go func() { p.done <- p.cmd.Wait() }()
	t.Cleanup(func() { p.stop(t) })
	adminURL = "http://" + admin
	deadline := time.Now().Add(time.Minute) // a hang guard: a loaded machine starts slowly
	for time.Now().Before(deadline) {
		select {
		case err := <-p.done:
			p.done <- err
			t.Fatalf("modproxy exited early: %v\n%s", err, p.logs)
		default:
		}
		if resp, err := http.Get(adminURL + "/readyz"); err == nil {
			resp.Body.Close()
			if resp.StatusCode == 200 {
				return p, adminURL
			}
		}
		time.Sleep(50 * time.Millisecond)
	}
	t.Fatalf("modproxy not ready\n%s", p.logs)
	return nil, ""
}

// authAdd runs "modproxy auth add" and returns the token it printed.
func authAdd(t *testing.T, file, name string, scopes ...string) string {
	t.Helper()
	args := []string{"auth", "add", "--file", file, "--name", name, "--bcrypt-cost", "4"}
	for _, s := range scopes {
		args = append(args, "--scope", s)
	}
	cmd := exec.Command(modproxyBin(t), args...)
	var stderr strings.Builder
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("auth add: %v\n%s", err, stderr.String())
	}
	tok := strings.TrimSpace(string(out))
	if !strings.HasPrefix(tok, "mpx_") || strings.Contains(stderr.String(), tok) {
		t.Fatalf("auth add printed %q (stderr %q)", out, stderr.String())
	}
	if data, _ := os.ReadFile(file); strings.Contains(string(data), tok) {
		t.Fatal("the auth file holds the token itself")
	}
	return tok
}

const accessMain = `package main

import (
	"fmt"

	"example.com/pub"
	"git.corp.example/team/lib"
)

func main() { fmt.Println(pub.Name(), lib.Name()) }
`

const accessGoMod = `module example.com/app

go 1.21

require (
	example.com/pub v1.0.0
	git.corp.example/team/lib v1.0.0
)
`

func writeFiles(t *testing.T, files map[string]string) string {
	t.Helper()
	dir := t.TempDir()
	for name, content := range files {
		if err := os.WriteFile(filepath.Join(dir, name), []byte(content), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	return dir
}

// TestAccessControlEndToEnd runs the go command against modproxy on TLS
// (a test CA in SSL_CERT_FILE) with an auth file and a module policy: a
// private module from a private upstream, a public one, netrc and GOAUTH
// command credentials, missing and insufficient credentials, a denied
// version; then checks that no secret leaked and that reloads take effect.
func TestAccessControlEndToEnd(t *testing.T) {
	if testing.Short() {
		t.Skip("end-to-end test builds the binary and runs the go command")
	}
	pubMods := []testupstream.Module{
		{Path: "example.com/pub", Version: "v1.0.0", Files: map[string]string{
			"go.mod": "module example.com/pub\n\ngo 1.21\n", "pub.go": "package pub\n\nfunc Name() string { return \"public\" }\n"}},
		{Path: "example.com/bad", Version: "v1.0.0", Files: map[string]string{
			"go.mod": "module example.com/bad\n\ngo 1.21\n", "bad.go": "package bad\n"}},
		{Path: "example.com/bad", Version: "v1.0.1", Files: map[string]string{
			"go.mod": "module example.com/bad\n\ngo 1.21\n", "bad.go": "package bad\n\nconst Broken = true\n"}},
	}
	up, db := startUniverse(t, pubMods)
	privUp, err := testupstream.New(testupstream.Module{Path: "git.corp.example/team/lib", Version: "v1.0.0", Files: map[string]string{
		"go.mod": "module git.corp.example/team/lib\n\ngo 1.21\n", "lib.go": "package lib\n\nfunc Name() string { return \"private\" }\n",
		"sub/sub.go": "package sub\n"}})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(privUp.Close)

	dir := t.TempDir()
	ca := testpki.NewCA(t, "modproxy test CA")
	caFile := filepath.Join(dir, "ca.pem")
	testpki.WriteFile(t, caFile, ca.PEM)
	first := ca.Server(t)
	certFile, keyFile := first.Write(t, dir, "server")

	authFile := filepath.Join(dir, "auth.yaml")
	devTok := authAdd(t, authFile, "dev", "public", "git.corp.example/team/*")
	readerTok := authAdd(t, authFile, "reader", "public")
	policyFile := filepath.Join(dir, "policy.yaml")
	testpki.WriteFile(t, policyFile, []byte(`rules:
  - name: bad-version
    action: deny
    paths: [example.com/bad]
    versions: "v1.0.1"
    reason: "known bad release, use v1.0.0"
`))
	auditFile := filepath.Join(dir, "audit.log")

	mp, adminURL := startModproxyTLS(t, ca.PEM, "--db", filepath.Join(dir, "modproxy.db"),
		"--upstream", up.URL(), "--private", "git.corp.example", "--private-upstream", privUp.URL(),
		"--sumdb", db.GOSUMDB(), "--nosumdb", "git.corp.example",
		"--tls-cert", certFile, "--tls-key", keyFile,
		"--auth-file", authFile, "--policy-file", policyFile, "--audit-log", auditFile,
		"--reload-interval", "200ms")
	host := strings.TrimPrefix(mp.URL, "https://")

	// goEnv is a go command user of the TLS proxy with extra settings.
	goEnv := func(extra ...string) *goRunner {
		g := newGoEnv(t, mp.URL, db)
		g.env = append(g.env, "SSL_CERT_FILE="+caFile, "GONOSUMDB=git.corp.example", "NETRC="+filepath.Join(t.TempDir(), "none"))
		g.env = append(g.env, extra...)
		return g
	}
	netrc := func(login, tok string) string {
		f := filepath.Join(t.TempDir(), "netrc")
		// The go command matches credentials by host:port when the
		// proxy URL has a port.
		testpki.WriteFile(t, f, []byte("machine "+host+" login "+login+" password "+tok+"\n"))
		return "NETRC=" + f
	}
	project := writeFiles(t, map[string]string{"go.mod": accessGoMod, "main.go": accessMain})
	build := func(g *goRunner) {
		t.Helper()
		dir := writeFiles(t, map[string]string{"go.mod": accessGoMod, "main.go": accessMain})
		g.run(dir, "build", "-o", "app", ".")
		out, err := exec.Command(filepath.Join(dir, "app")).Output()
		if err != nil || strings.TrimSpace(string(out)) != "public private" {
			t.Fatalf("app printed %q, %v", out, err)
		}
	}

	t.Run("netrc", func(t *testing.T) { build(goEnv(netrc("dev", devTok))) })

	t.Run("go get by import path", func(t *testing.T) {
		// The go command also asks for the path's prefixes
		// (git.corp.example/team, git.corp.example), which are outside
		// dev's scope: their 403s must not fail the lookup that found
		// git.corp.example/team/lib.
		g := goEnv(netrc("dev", devTok))
		d := writeFiles(t, map[string]string{"go.mod": "module example.com/z\n\ngo 1.21\n",
			"z.go": "package z\n\nimport _ \"git.corp.example/team/lib/sub\"\n"})
		out, err := g.try(d, "get", "git.corp.example/team/lib/sub")
		if err != nil {
			t.Fatalf("go get: %v\n%s", err, out)
		}
	})

	t.Run("GOAUTH command", func(t *testing.T) {
		script := filepath.Join(t.TempDir(), "goauth.sh")
		if err := os.WriteFile(script, []byte("#!/bin/sh\nprintf '%s\\n\\n%s\\n\\n' "+shellQuote(mp.URL)+" "+shellQuote("Authorization: Bearer "+devTok)+"\n"), 0o700); err != nil {
			t.Fatal(err)
		}
		build(goEnv("GOAUTH=" + script))
	})

	t.Run("no credentials", func(t *testing.T) {
		out, err := goEnv().try(project, "mod", "download")
		if err == nil || !strings.Contains(out, "401 Unauthorized") {
			t.Fatalf("go mod download without credentials: %v\n%s", err, out)
		}
		t.Logf("go command without credentials:\n%s", out)
	})

	t.Run("wrong login", func(t *testing.T) {
		out, err := goEnv(netrc("someone", devTok)).try(project, "mod", "download")
		if err == nil || !strings.Contains(out, "401 Unauthorized") {
			t.Fatalf("go mod download with another login: %v\n%s", err, out)
		}
	})

	t.Run("public scope only", func(t *testing.T) {
		g := goEnv(netrc("reader", readerTok))
		out, err := g.try(project, "build", "./...")
		if err == nil || !strings.Contains(out, "403 Forbidden") || !strings.Contains(out, `identity "reader" lacks a scope for this module path`) {
			t.Fatalf("go build with a public-only token: %v\n%s", err, out)
		}
		t.Logf("go command with a public-only token:\n%s", out)
		g.run(writeFiles(t, map[string]string{"go.mod": "module example.com/x\n\ngo 1.21\n"}), "mod", "download", "example.com/pub@v1.0.0")
	})

	t.Run("denied version", func(t *testing.T) {
		g := goEnv(netrc("dev", devTok))
		// With direct after the proxy: a 403 must not fall back to it.
		g.env = append(g.env, "GOPROXY="+mp.URL+",direct")
		d := writeFiles(t, map[string]string{"go.mod": "module example.com/y\n\ngo 1.21\n"})
		out, err := g.try(d, "mod", "download", "example.com/bad@v1.0.1")
		if err == nil || !strings.Contains(out, "403 Forbidden") || !strings.Contains(out, `example.com/bad@v1.0.1 denied by rule "bad-version": known bad release, use v1.0.0`) {
			t.Fatalf("go mod download of a denied version: %v\n%s", err, out)
		}
		t.Logf("go command, denied version:\n%s", out)
		if strings.Contains(out, "git") || strings.Contains(out, "lookup") {
			t.Errorf("the go command fell back to direct:\n%s", out)
		}
		g.run(d, "mod", "download", "example.com/bad@v1.0.0")
		// The denied version is not listed, so "latest" is the newest
		// allowed one.
		if got := strings.TrimSpace(g.run(d, "list", "-m", "-versions", "example.com/bad")); got != "example.com/bad v1.0.0" {
			t.Errorf("go list -m -versions = %q", got)
		}
		g.run(d, "get", "example.com/bad@latest")
		if gomod, _ := os.ReadFile(filepath.Join(d, "go.mod")); !strings.Contains(string(gomod), "example.com/bad v1.0.0") {
			t.Errorf("go get @latest did not pick the allowed v1.0.0:\n%s", gomod)
		}
	})

	// The admin endpoints live on the admin listener only.
	adminGet := func(p string) (int, string) {
		resp, err := http.Get(adminURL + p)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		return resp.StatusCode, string(b)
	}
	pool := x509.NewCertPool()
	pool.AppendCertsFromPEM(ca.PEM)
	httpsGet := func(p, authz string) (*http.Response, string) {
		c := &http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{TLSClientConfig: &tls.Config{RootCAs: pool}, ForceAttemptHTTP2: true}}
		defer c.CloseIdleConnections()
		req, _ := http.NewRequest("GET", mp.URL+p, nil)
		if authz != "" {
			req.Header.Set("Authorization", authz)
		}
		resp, err := c.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		return resp, string(b)
	}
	if resp, _ := httpsGet("/metrics", "Bearer "+devTok); resp.StatusCode != 404 {
		t.Errorf("/metrics on the main listener: %d, want 404", resp.StatusCode)
	}
	if resp, _ := httpsGet("/example.com/pub/@v/list", "Bearer "+devTok); resp.ProtoMajor != 2 {
		t.Errorf("main listener protocol %s, want HTTP/2", resp.Proto)
	}
	code, metrics := adminGet("/metrics")
	if code != 200 || !hasNonZero(metrics, `modproxy_policy_denied_total{rule="bad-version"}`) ||
		!hasNonZero(metrics, `modproxy_auth_refused_total{code="401"}`) || !hasNonZero(metrics, `modproxy_auth_refused_total{code="403"}`) {
		t.Errorf("admin /metrics: %d; lacks the access counters", code)
	}

	// The audit log has the decisions, and nothing holds a secret.
	auditData, _ := os.ReadFile(auditFile)
	audit := string(auditData)
	for _, want := range []string{
		`"identity":"dev","via":"token"`, `"module":"git.corp.example/team/lib","version":"v1.0.0","kind":"zip","decision":"served"`,
		`"identity":"reader"`, `"decision":"forbidden"`, `"decision":"unauthenticated"`, `"decision":"denied","status":403,"rule":"bad-version"`,
	} {
		if !strings.Contains(audit, want) {
			t.Errorf("audit log lacks %s", want)
		}
	}
	for where, text := range map[string]string{"server log": mp.logs.String(), "audit log": audit, "metrics": metrics} {
		for _, tok := range []string{devTok, readerTok} {
			if strings.Contains(text, tok) || strings.Contains(text, tok[len(tok)-16:]) {
				t.Errorf("%s contains a token", where)
			}
		}
	}

	// Reloads: a removed identity stops working without a restart; a
	// new certificate is served to new connections after SIGHUP.
	if resp, _ := httpsGet("/example.com/pub/@v/list", "Bearer "+readerTok); resp.StatusCode != 200 {
		t.Fatalf("reader before removal: %d", resp.StatusCode)
	}
	// A case variant of a private path is private too (the pipeline's own
	// decision); a public-only token gets 403 for it, and so does a token
	// whose pattern names the path in another case (scopes match exactly).
	for _, tc := range []struct{ tok, path string }{
		{readerTok, "/git.corp.example/!team/lib/@v/v1.0.0.info"},
		{devTok, "/git.corp.example/!team/lib/@v/v1.0.0.info"},
	} {
		if resp, body := httpsGet(tc.path, "Bearer "+tc.tok); resp.StatusCode != 403 {
			t.Errorf("%s: %d %s, want 403", tc.path, resp.StatusCode, body)
		}
	}
	if out, err := exec.Command(modproxyBin(t), "auth", "remove", "--file", authFile, "--name", "reader").CombinedOutput(); err != nil {
		t.Fatalf("auth remove: %v\n%s", err, out)
	}
	waitFor(t, "the removed token to be refused", func() bool {
		resp, _ := httpsGet("/example.com/pub/@v/list", "Bearer "+readerTok)
		return resp.StatusCode == 401
	})
	if resp, _ := httpsGet("/example.com/pub/@v/list", "Bearer "+devTok); resp.StatusCode != 200 {
		t.Errorf("dev after reader's removal: %d", resp.StatusCode)
	}
	// A broken auth file is refused; the one in force stays.
	testpki.WriteFile(t, authFile, []byte("identities: [{name: x, scope: [public]}]\n"))
	waitFor(t, "the failed reload to be logged", func() bool { return strings.Contains(mp.logs.String(), "reload failed") })
	if resp, _ := httpsGet("/example.com/pub/@v/list", "Bearer "+devTok); resp.StatusCode != 200 {
		t.Errorf("dev after a broken auth file: %d", resp.StatusCode)
	}

	t.Run("prewarm", func(t *testing.T) {
		tlsEnv := "SSL_CERT_FILE=" + caFile
		// --server: the server authenticates prewarm and applies its policy.
		out, err := prewarmWith(t, []string{tlsEnv, "MODPROXY_TOKEN=" + devTok}, "--server", mp.URL, "--sumdb", "off",
			"git.corp.example/team/lib@v1.0.0", "example.com/pub@v1.0.0")
		if err != nil {
			t.Fatalf("prewarm --server with a token: %v\n%s", err, out)
		}
		out, err = prewarmWith(t, []string{tlsEnv}, "--server", mp.URL, "--sumdb", "off", "example.com/pub@v1.0.0")
		if err == nil || !strings.Contains(out, "401 Unauthorized") {
			t.Fatalf("prewarm --server without a token: %v\n%s", err, out)
		}
		out, err = prewarmWith(t, []string{tlsEnv, "MODPROXY_TOKEN=" + devTok}, "--server", mp.URL, "--sumdb", "off", "example.com/bad@v1.0.1")
		if err == nil || !strings.Contains(out, `denied by rule "bad-version"`) {
			t.Fatalf("prewarm --server of a denied version: %v\n%s", err, out)
		}
		// --db: the same policy in-process; the denied version is never fetched.
		before := up.Count("/example.com/bad/@v/v1.0.1")
		out, err = prewarmWith(t, nil, "--db", filepath.Join(t.TempDir(), "pw.db"), "--upstream", up.URL(), "--sumdb", "off",
			"--policy-file", policyFile, "example.com/bad@v1.0.1")
		if err == nil || !strings.Contains(out, `denied by rule "bad-version"`) {
			t.Fatalf("prewarm --db of a denied version: %v\n%s", err, out)
		}
		if n := up.Count("/example.com/bad/@v/v1.0.1") - before; n != 0 {
			t.Errorf("prewarm --db fetched a denied version %d times", n)
		}
		if out, err := prewarmWith(t, nil, "--db", filepath.Join(t.TempDir(), "pw2.db"), "--upstream", up.URL(), "--sumdb", "off",
			"--policy-file", policyFile, "example.com/bad@v1.0.0"); err != nil {
			t.Fatalf("prewarm --db of an allowed version: %v\n%s", err, out)
		}
	})

	second := ca.Server(t)
	// Rename the new pair in while the interval poll might run: the
	// result is checked after SIGHUP, which reloads whatever is there.
	second.Write(t, dir, "server")
	// SIGHUP also reopens the audit log, as logrotate needs.
	if err := os.Rename(auditFile, auditFile+".1"); err != nil {
		t.Fatal(err)
	}
	if err := mp.cmd.Process.Signal(syscall.SIGHUP); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "the new certificate", func() bool {
		resp, _ := httpsGet("/example.com/pub/@v/list", "Bearer "+devTok)
		return resp.TLS.PeerCertificates[0].SerialNumber.Cmp(second.Serial) == 0
	})
	if data, err := os.ReadFile(auditFile); err != nil || !strings.Contains(string(data), `"module":"example.com/pub"`) {
		t.Errorf("audit log after SIGHUP and rotation: %q, %v", data, err)
	}
}

// prewarm runs "modproxy prewarm" with env added and returns its output.
func prewarmWith(t *testing.T, env []string, args ...string) (string, error) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, modproxyBin(t), append([]string{"prewarm", "--progress", "none", "--private", "git.corp.example", "--nosumdb", "git.corp.example"}, args...)...)
	cmd.Env = append(os.Environ(), append([]string{"GOFLAGS=", "MODPROXY_TOKEN="}, env...)...)
	out, err := cmd.CombinedOutput()
	return string(out), err
}

func waitFor(t *testing.T, what string, ok func() bool) {
	t.Helper()
	deadline := time.Now().Add(time.Minute) // a hang guard
	for !ok() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

func shellQuote(s string) string { return "'" + strings.ReplaceAll(s, "'", `'\''`) + "'" }

// TestMutualTLSEndToEnd: a client certificate whose subject is in the auth
// file is an identity; one that is not, or none, gets 401.
func TestMutualTLSEndToEnd(t *testing.T) {
	if testing.Short() {
		t.Skip("end-to-end test builds the binary")
	}
	privUp, err := testupstream.New(testupstream.Module{Path: "git.corp.example/team/lib", Version: "v1.0.0", Files: map[string]string{"lib.go": "package lib\n"}})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(privUp.Close)
	dir := t.TempDir()
	ca := testpki.NewCA(t, "modproxy test CA")
	caFile := filepath.Join(dir, "ca.pem")
	testpki.WriteFile(t, caFile, ca.PEM)
	certFile, keyFile := ca.Server(t).Write(t, dir, "server")
	authFile := filepath.Join(dir, "auth.yaml")
	if out, err := exec.Command(modproxyBin(t), "auth", "add", "--file", authFile, "--name", "bot",
		"--subject", "CN=build-bot,O=Corp", "--scope", "git.corp.example/*").CombinedOutput(); err != nil {
		t.Fatalf("auth add --subject: %v\n%s", err, out)
	}
	mp, _ := startModproxyTLS(t, ca.PEM, "--db", filepath.Join(dir, "modproxy.db"), "--upstream", privUp.URL(),
		"--private", "git.corp.example", "--private-upstream", privUp.URL(), "--sumdb", "off", "--nosumdb", "",
		"--tls-cert", certFile, "--tls-key", keyFile, "--tls-client-ca", caFile, "--auth-file", authFile)

	pool := x509.NewCertPool()
	pool.AppendCertsFromPEM(ca.PEM)
	get := func(cert *testpki.Pair) int {
		conf := &tls.Config{RootCAs: pool}
		if cert != nil {
			c, err := tls.X509KeyPair(cert.Cert, cert.Key)
			if err != nil {
				t.Fatal(err)
			}
			conf.Certificates = []tls.Certificate{c}
		}
		c := &http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{TLSClientConfig: conf}}
		defer c.CloseIdleConnections()
		resp, err := c.Get(mp.URL + "/git.corp.example/team/lib/@v/list")
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		return resp.StatusCode
	}
	bot := ca.Client(t, pkix.Name{CommonName: "build-bot", Organization: []string{"Corp"}})
	stranger := ca.Client(t, pkix.Name{CommonName: "stranger", Organization: []string{"Corp"}})
	for name, tc := range map[string]struct {
		cert *testpki.Pair
		want int
	}{
		"listed subject":   {&bot, 200},
		"unlisted subject": {&stranger, 401},
		"no certificate":   {nil, 401},
	} {
		if got := get(tc.cert); got != tc.want {
			t.Errorf("%s: %d, want %d", name, got, tc.want)
		}
	}
}
