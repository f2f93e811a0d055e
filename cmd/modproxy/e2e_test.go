package main

import (
	"bufio"
	"bytes"
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/modproxy/modproxy/internal/testsumdb"
	"github.com/modproxy/modproxy/internal/testupstream"
)

// The end-to-end tests run the real go command against the built modproxy
// binary, a fake upstream (internal/testupstream) and a test checksum
// database (internal/testsumdb), all on 127.0.0.1.

var (
	binOnce sync.Once
	binPath string
	binErr  error
)

// modproxyBin builds the binary once per test run. MODPROXY_E2E_BIN names
// a binary to test instead (another build, to compare behaviours).
func modproxyBin(t *testing.T) string {
	t.Helper()
	if bin := os.Getenv("MODPROXY_E2E_BIN"); bin != "" {
		return bin
	}
	binOnce.Do(func() {
		dir, err := os.MkdirTemp("", "modproxy-e2e-bin")
		if err != nil {
			binErr = err
			return
		}
		binPath = filepath.Join(dir, "modproxy")
		out, err := exec.Command("go", "build", "-o", binPath, ".").CombinedOutput()
		if err != nil {
			binErr = fmt.Errorf("go build: %v\n%s", err, out)
		}
	})
	if binErr != nil {
		t.Fatal(binErr)
	}
	return binPath
}

func TestMain(m *testing.M) {
	code := m.Run()
	if binPath != "" {
		os.RemoveAll(filepath.Dir(binPath))
	}
	os.Exit(code)
}

func freeAddr(t *testing.T) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	return ln.Addr().String()
}

// proc is a running modproxy.
type proc struct {
	URL  string
	cmd  *exec.Cmd
	logs *syncBuffer
	done chan error
}

type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

// startModproxy runs "modproxy serve" with args and waits until it is ready.
func startModproxy(t *testing.T, args ...string) *proc {
	t.Helper()
	return startModproxyEnv(t, nil, args...)
}

// startModproxyEnv is startModproxy with env added to the environment.
func startModproxyEnv(t *testing.T, env []string, args ...string) *proc {
	t.Helper()
	addr := freeAddr(t)
	p := &proc{URL: "http://" + addr, logs: &syncBuffer{}, done: make(chan error, 1)}
	p.cmd = exec.Command(modproxyBin(t), append([]string{"serve", "--listen", addr, "--ebpf=off"}, args...)...)
	p.cmd.Stdout, p.cmd.Stderr = p.logs, p.logs
	p.cmd.Env = append(append(os.Environ(), "GOFLAGS="), env...)
	if err := p.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	go func() { p.done <- p.cmd.Wait() }()
	t.Cleanup(func() { p.stop(t) })
	deadline := time.Now().Add(time.Minute) // a hang guard: a loaded machine starts slowly
	for time.Now().Before(deadline) {
		select {
		case err := <-p.done:
			p.done <- err
			t.Fatalf("modproxy exited early: %v\n%s", err, p.logs)
		default:
		}
		resp, err := http.Get(p.URL + "/readyz")
		if err == nil {
			resp.Body.Close()
			if resp.StatusCode == 200 {
				return p
			}
		}
		time.Sleep(50 * time.Millisecond)
	}
	t.Fatalf("modproxy not ready\n%s", p.logs)
	return nil
}

// stop sends SIGTERM and waits for a clean exit.
func (p *proc) stop(t *testing.T) {
	if p.cmd.ProcessState != nil {
		return
	}
	p.cmd.Process.Signal(os.Interrupt)
	select {
	case err := <-p.done:
		p.done <- err
		if err != nil {
			t.Errorf("modproxy exited with %v\n%s", err, p.logs)
		}
	case <-time.After(time.Minute): // a hang guard
		p.cmd.Process.Kill()
		t.Errorf("modproxy did not stop on SIGINT\n%s", p.logs)
	}
}

func (p *proc) get(t *testing.T, path string) (*http.Response, string) {
	t.Helper()
	resp, err := http.Get(p.URL + path)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp, string(b)
}

// goRunner is the environment of one go command "user" with its own module
// cache, pointed at proxyURL and verifying with db.
type goRunner struct {
	t   *testing.T
	env []string
}

func newGoEnv(t *testing.T, proxyURL string, db *testsumdb.DB) *goRunner {
	t.Helper()
	home := t.TempDir()
	env := []string{
		"PATH=" + os.Getenv("PATH"),
		"HOME=" + home,
		"GOPATH=" + filepath.Join(home, "gopath"),
		"GOMODCACHE=" + filepath.Join(home, "modcache"),
		"GOCACHE=" + goCache(t),
		"GOBIN=" + filepath.Join(home, "bin"),
		"GOENV=off", "GOTOOLCHAIN=local", "GOWORK=off",
		"GOFLAGS=-mod=mod -modcacherw",
		"GONOSUMDB=", "GOPRIVATE=", "GONOPROXY=", "GOINSECURE=", "GONOSUMCHECK=", "GOVCS=",
		"CGO_ENABLED=0",
	}
	if db != nil {
		env = append(env, db.GoEnv(proxyURL)...)
	} else {
		env = append(env, "GOPROXY="+proxyURL, "GOSUMDB=off")
	}
	return &goRunner{t: t, env: env}
}

// goCache is shared by the test's go commands so builds stay fast.
func goCache(t *testing.T) string {
	out, err := exec.Command("go", "env", "GOCACHE").Output()
	if err != nil {
		t.Fatal(err)
	}
	return strings.TrimSpace(string(out))
}

// run runs the go command in dir and fails the test on error.
func (g *goRunner) run(dir string, args ...string) string {
	g.t.Helper()
	out, err := g.try(dir, args...)
	if err != nil {
		g.t.Fatalf("go %s: %v\n%s", strings.Join(args, " "), err, out)
	}
	return out
}

func (g *goRunner) try(dir string, args ...string) (string, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, "go", args...)
	cmd.Dir = dir
	cmd.Env = g.env
	out, err := cmd.CombinedOutput()
	return string(out), err
}

// e2eModules are the fake upstream's modules: an uppercase path, a
// +incompatible version, a /v2 major version, a command, and a module
// with two releases for @latest.
var e2eModules = []testupstream.Module{
	{Path: "github.com/Upper/Case", Version: "v0.1.0", Files: map[string]string{
		"go.mod":  "module github.com/Upper/Case\n\ngo 1.21\n",
		"case.go": "package uppercase\n\nfunc Name() string { return \"Upper\" }\n"}},
	{Path: "example.com/old", Version: "v3.0.0+incompatible", Files: map[string]string{
		"old.go": "package old\n\nfunc Old() string { return \"old\" }\n"}},
	{Path: "example.com/lib/v2", Version: "v2.0.0", Files: map[string]string{
		"go.mod": "module example.com/lib/v2\n\ngo 1.21\n",
		"lib.go": "package lib\n\nfunc V() string { return \"v2.0.0\" }\n"}},
	{Path: "example.com/lib/v2", Version: "v2.1.0", Files: map[string]string{
		"go.mod": "module example.com/lib/v2\n\ngo 1.21\n",
		"lib.go": "package lib\n\nfunc V() string { return \"v2.1.0\" }\n"}},
	{Path: "example.com/tool", Version: "v1.0.0", Files: map[string]string{
		"go.mod":           "module example.com/tool\n\ngo 1.21\n",
		"cmd/tool/main.go": "package main\n\nimport \"fmt\"\n\nfunc main() { fmt.Println(\"tool v1.0.0\") }\n"}},
	{Path: "example.com/dep", Version: "v1.0.0", Files: map[string]string{
		"go.mod": "module example.com/dep\n\ngo 1.21\n", "dep.go": "package dep\n"}},
	{Path: "example.com/dep", Version: "v1.2.0", Files: map[string]string{
		"go.mod": "module example.com/dep\n\ngo 1.21\n", "dep.go": "package dep\n\nconst V = 2\n"}},
}

// startUniverse starts the fake upstream and a checksum database that
// records every module it serves.
func startUniverse(t *testing.T, mods []testupstream.Module) (*testupstream.Server, *testsumdb.DB) {
	t.Helper()
	up, err := testupstream.New(mods...)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(up.Close)
	db := testsumdb.New(t, "sum.modproxy.test")
	for _, m := range up.Modules() {
		db.AddModule(m.Path, m.Version, up.GoMod(m.Path, m.Version), up.Zip(m.Path, m.Version))
	}
	return up, db
}

const e2eMain = `package main

import (
	"fmt"

	uppercase "github.com/Upper/Case"
	"example.com/lib/v2"
	"example.com/old"
)

func main() { fmt.Println(uppercase.Name(), old.Old(), lib.V()) }
`

const e2eGoMod = `module example.com/app

go 1.21

require (
	github.com/Upper/Case v0.1.0
	example.com/old v3.0.0+incompatible
	example.com/lib/v2 v2.1.0
)
`

func writeProject(t *testing.T) string {
	t.Helper()
	dir := t.TempDir()
	for name, content := range map[string]string{"go.mod": e2eGoMod, "main.go": e2eMain} {
		if err := os.WriteFile(filepath.Join(dir, name), []byte(content), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	return dir
}

func TestGoCommandEndToEnd(t *testing.T) {
	if testing.Short() {
		t.Skip("end-to-end test builds the binary and runs the go command")
	}
	up, db := startUniverse(t, e2eModules)
	store := filepath.Join(t.TempDir(), "modproxy.db")
	mp := startModproxy(t, "--db", store, "--upstream", up.URL(), "--sumdb", db.VerifierKey()+" "+db.URL(),
		"--private", "", "--nosumdb", "", "--list-ttl", "1s")

	project := writeProject(t)
	g := newGoEnv(t, mp.URL, db)
	g.run(project, "mod", "download")
	g.run(project, "build", "-o", "app", ".")
	out, err := exec.Command(filepath.Join(project, "app")).Output()
	if err != nil || strings.TrimSpace(string(out)) != "Upper old v2.1.0" {
		t.Fatalf("app printed %q, %v", out, err)
	}
	if got := strings.TrimSpace(g.run(project, "list", "-m", "-versions", "example.com/lib/v2")); got != "example.com/lib/v2 v2.0.0 v2.1.0" {
		t.Errorf("go list -m -versions = %q", got)
	}
	g.run(project, "get", "example.com/dep@latest")
	if gomod, _ := os.ReadFile(filepath.Join(project, "go.mod")); !strings.Contains(string(gomod), "example.com/dep v1.2.0") {
		t.Errorf("go get @latest did not pick v1.2.0:\n%s", gomod)
	}
	g.run(project, "install", "example.com/tool/cmd/tool@v1.0.0")
	if out, err := exec.Command(filepath.Join(g.gobin(), "tool")).Output(); err != nil || !strings.Contains(string(out), "tool v1.0.0") {
		t.Errorf("installed tool printed %q, %v", out, err)
	}
	g.run(project, "mod", "verify")
	if db.RequestCount("/lookup/") == 0 {
		t.Error("the go command verified nothing through the checksum database")
	}

	// Every upstream gone: a fresh module cache still builds, verifying
	// through modproxy's stored checksum-database data, and list is stale.
	up.Close()
	db.SetDown(true)
	time.Sleep(1100 * time.Millisecond) // past --list-ttl
	fresh := newGoEnv(t, mp.URL, db)
	fresh.run(project, "mod", "download")
	fresh.run(project, "build", "./...")
	fresh.run(project, "mod", "verify")
	if got := strings.TrimSpace(fresh.run(project, "list", "-m", "-versions", "example.com/lib/v2")); got != "example.com/lib/v2 v2.0.0 v2.1.0" {
		t.Errorf("offline go list -m -versions = %q", got)
	}
	resp, _ := mp.get(t, "/example.com/lib/v2/@v/list")
	if resp.Header.Get("X-Modproxy-Cache") != "stale" || resp.Header.Get("Warning") == "" {
		t.Errorf("list with upstreams down: cache %q, warning %q", resp.Header.Get("X-Modproxy-Cache"), resp.Header.Get("Warning"))
	}

	// The telemetry saw the traffic.
	_, metrics := mp.get(t, "/metrics")
	for _, series := range []string{
		`modproxy_upstream_phase_seconds_count{kind="zip",phase="ttfb",source="userspace",upstream="` + up.URL() + `"}`,
		`modproxy_upstream_phase_seconds_count{kind="mod",phase="connect",source="userspace",upstream="` + up.URL() + `"}`,
		`modproxy_requests_total{cache="hit",code="200",kind="zip"}`,
		`modproxy_stale_served_total{kind="list"}`,
		`modproxy_upstream_health_score{upstream="` + up.URL() + `"}`,
	} {
		if !hasNonZero(metrics, series) {
			t.Errorf("metrics lack a non-zero %s", series)
		}
	}
	if path, err := exec.LookPath("promtool"); err == nil {
		cmd := exec.Command(path, "check", "metrics")
		cmd.Stdin = strings.NewReader(metrics)
		if out, err := cmd.CombinedOutput(); err != nil {
			t.Errorf("promtool check metrics: %v\n%s", err, out)
		}
	} else if os.Getenv("MODPROXY_REQUIRE_TOOLS") == "1" {
		t.Error("promtool not found (MODPROXY_REQUIRE_TOOLS=1)")
	}
}

func (g *goRunner) gobin() string {
	for _, kv := range g.env {
		if v, ok := strings.CutPrefix(kv, "GOBIN="); ok {
			return v
		}
	}
	return ""
}

// hasNonZero reports whether the exposition has series with a non-zero value.
func hasNonZero(exposition, series string) bool {
	sc := bufio.NewScanner(strings.NewReader(exposition))
	sc.Buffer(make([]byte, 1<<20), 1<<20)
	for sc.Scan() {
		line := sc.Text()
		if v, ok := strings.CutPrefix(line, series+" "); ok {
			return v != "0"
		}
	}
	return false
}

func TestChecksumDatabaseEndToEnd(t *testing.T) {
	if testing.Short() {
		t.Skip("end-to-end test")
	}
	mods := e2eModules[:4]
	bad, db := startUniverse(t, mods)
	bad.SetFaults(testupstream.Fault{Tamper: true})
	good, err := testupstream.New(mods...)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(good.Close)
	private, err := testupstream.New(testupstream.Module{Path: "corp.example/secret", Version: "v1.0.0",
		Files: map[string]string{"go.mod": "module corp.example/secret\n\ngo 1.21\n", "s.go": "package secret\n\nconst S = 1\n"}})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(private.Close)

	store := filepath.Join(t.TempDir(), "modproxy.db")
	mp := startModproxy(t, "--db", store, "--upstream", bad.URL()+","+good.URL(), "--sumdb", db.VerifierKey()+" "+db.URL(),
		"--private", "corp.example", "--nosumdb", "", "--private-upstream", private.URL())

	// Tampered copies from the first upstream are refused; the go command
	// gets the second upstream's good copies and verifies them itself.
	project := writeProject(t)
	gomod := strings.Replace(e2eGoMod, "require (", "require (\n\tcorp.example/secret v1.0.0", 1)
	os.WriteFile(filepath.Join(project, "go.mod"), []byte(gomod), 0o644)
	os.WriteFile(filepath.Join(project, "secret.go"), []byte("package main\n\nimport _ \"corp.example/secret\"\n"), 0o644)
	g := newGoEnv(t, mp.URL, db)
	g.env = append(g.env, "GONOSUMDB=corp.example")
	g.run(project, "mod", "download")
	g.run(project, "build", "./...")
	resp, body := mp.get(t, "/example.com/old/@v/v3.0.0+incompatible.zip")
	if resp.StatusCode != 200 || resp.Header.Get("X-Modproxy-Cache") != "hit" {
		t.Errorf("zip: %d, cache %q", resp.StatusCode, resp.Header.Get("X-Modproxy-Cache"))
	}
	if body != string(good.Zip("example.com/old", "v3.0.0+incompatible")) {
		t.Error("served zip is not the good copy")
	}
	_, metrics := mp.get(t, "/metrics")
	if !hasNonZero(metrics, `modproxy_upstream_checksum_failures_total{upstream="`+bad.URL()+`"}`) {
		t.Error("checksum failures of the bad upstream not counted")
	}

	// Private module paths never reach the database or a public upstream.
	if n := db.LookupCount("corp.example/secret"); n != 0 {
		t.Errorf("checksum database saw %d lookups of a private module", n)
	}
	if n := bad.Count("corp.example") + good.Count("corp.example"); n != 0 {
		t.Errorf("public upstreams saw %d requests for a private module", n)
	}
	if private.Count("corp.example/secret") == 0 {
		t.Error("private upstream never asked")
	}
	if resp, _ := mp.get(t, "/sumdb/"+db.Name()+"/lookup/corp.example/secret@v1.0.0"); resp.StatusCode != 404 && resp.StatusCode != 410 {
		t.Errorf("sumdb lookup of a private module = %d", resp.StatusCode)
	}

	// Only tampered copies: refused with the reason, nothing stored.
	only := startModproxy(t, "--db", filepath.Join(t.TempDir(), "only.db"), "--upstream", bad.URL(), "--sumdb", db.VerifierKey()+" "+db.URL())
	resp, body = only.get(t, "/example.com/lib/v2/@v/v2.1.0.zip")
	if resp.StatusCode != 502 || !strings.Contains(body, "checksum mismatch") || !strings.Contains(body, bad.URL()) || !strings.Contains(body, "h1:") {
		t.Errorf("tampered-only zip: %d %q", resp.StatusCode, body)
	}
	// Database unreachable: fail closed with a clear error.
	db.SetDown(true)
	resp, body = only.get(t, "/example.com/lib/v2/@v/v2.0.0.mod")
	if resp.StatusCode < 500 || !strings.Contains(body, "checksum database unavailable") {
		t.Errorf("database down: %d %q", resp.StatusCode, body)
	}
	db.SetDown(false)

	// modproxy verify finds an artifact corrupted inside the bbolt file,
	// asking the test database about the public ones.
	mp.stop(t)
	verify := []string{"verify", "--db", store, "--sumdb", db.VerifierKey() + " " + db.URL(), "--private", "corp.example", "--upstream", good.URL()}
	out, err := exec.Command(modproxyBin(t), verify...).CombinedOutput()
	if err != nil {
		t.Fatalf("verify of a good store: %v\n%s", err, out)
	}
	corruptZipChunk(t, store)
	out, err = exec.Command(modproxyBin(t), append(verify, "--quarantine")...).CombinedOutput()
	if ee, ok := err.(*exec.ExitError); !ok || ee.ExitCode() != 1 || !strings.Contains(string(out), "mismatch") {
		t.Fatalf("verify of a corrupted store: %v\n%s", err, out)
	}
	// The private module has no checksum-database hash; its stored SHA-256
	// still catches the damage.
	if !regexp.MustCompile(`(?m)^mismatch\s+corp\.example/secret@v1\.0\.0 zip`).MatchString(string(out)) {
		t.Errorf("verify did not flag the corrupted private zip:\n%s", out)
	}
	if !regexp.MustCompile(`checked \d+ artifacts: \d+ verified, 1 exempt`).MatchString(string(out)) {
		t.Errorf("verify counts by state:\n%s", out)
	}
	if out, err := exec.Command(modproxyBin(t), verify...).CombinedOutput(); err != nil {
		t.Fatalf("verify after quarantine: %v\n%s", err, out)
	}
}
