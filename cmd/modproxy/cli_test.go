package main

import (
	"context"
	"io"
	"net/http"
	"net/http/httptest"
	"net/http/httputil"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"sort"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/modproxy/modproxy/internal/testupstream"
)

func runBin(t *testing.T, env []string, args ...string) (string, int) {
	t.Helper()
	bin := modproxyBin(t) // built first: with a cold build cache that takes a while
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, bin, args...)
	cmd.Env = append(os.Environ(), env...)
	out, err := cmd.CombinedOutput()
	if ee, ok := err.(*exec.ExitError); ok {
		return string(out), ee.ExitCode()
	}
	if err != nil {
		t.Fatal(err)
	}
	return string(out), 0
}

func TestCommandLineErrors(t *testing.T) {
	if testing.Short() {
		t.Skip("builds the binary")
	}
	tmp := t.TempDir()
	tests := []struct {
		name string
		env  []string
		args []string
		want string
	}{
		{"unknown flag", nil, []string{"serve", "--no-such-flag"}, "unknown flag: --no-such-flag"},
		{"bad duration", nil, []string{"serve", "--list-ttl", "soon"}, "invalid argument"},
		{"negative ttl", nil, []string{"serve", "--list-ttl", "-1s", "--upstream", "http://127.0.0.1:1", "--sumdb", "off"}, "invalid --list-ttl"},
		{"bad env value", []string{"MODPROXY_LIST_TTL=soon"}, []string{"serve"}, "invalid MODPROXY_LIST_TTL"},
		{"bad log format", nil, []string{"serve", "--log-format", "xml", "--upstream", "http://127.0.0.1:1", "--sumdb", "off"}, "invalid --log-format"},
		{"bad upstream", nil, []string{"serve", "--upstream", "ftp://x", "--sumdb", "off"}, "invalid --upstream"},
		{"bad sumdb", nil, []string{"serve", "--upstream", "http://127.0.0.1:1", "--sumdb", "a+b+c+d+e"}, "invalid --sumdb"},
		{"bad ebpf mode", nil, []string{"serve", "--ebpf", "maybe"}, "invalid --ebpf"},
		{"bad spool quota", nil, []string{"serve", "--spool-quota", "lots"}, "is not a size"},
		{"negative spool quota", nil, []string{"serve", "--spool-quota", "-1GiB"}, "cannot be negative"},
		{"bad spool quota from env", []string{"MODPROXY_SPOOL_QUOTA=lots"}, []string{"serve"}, "invalid MODPROXY_SPOOL_QUOTA"},
		{"bad min free space from env", []string{"MODPROXY_MIN_FREE_SPACE=12 parsecs"}, []string{"serve"}, "invalid MODPROXY_MIN_FREE_SPACE"},
		{"zero zip downloads", nil, []string{"serve", "--max-zip-downloads", "0", "--upstream", "http://127.0.0.1:1", "--sumdb", "off"}, "invalid --max-zip-downloads"},
		{"negative zip queue from env", []string{"MODPROXY_ZIP_QUEUE=-3"}, []string{"serve", "--upstream", "http://127.0.0.1:1", "--sumdb", "off"}, "invalid --zip-queue"},
		{"bad goauth", nil, []string{"serve", "--listen", "127.0.0.1:0", "--db", filepath.Join(tmp, "a.db"), "--upstream", "direct", "--sumdb", "off", "--goauth", "git relative/dir"}, "invalid --goauth"},
		{"bad govcs", nil, []string{"serve", "--listen", "127.0.0.1:0", "--db", filepath.Join(tmp, "b.db"), "--upstream", "direct", "--sumdb", "off", "--govcs", "nocolon"}, "invalid --govcs"},
		{"unknown command", nil, []string{"frobnicate"}, "unknown command"},
		{"no command", nil, nil, "missing command"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			out, code := runBin(t, tt.env, tt.args...)
			if code != 2 {
				t.Errorf("exit %d, want 2; output %q", code, out)
			}
			if !strings.Contains(out, tt.want) {
				t.Errorf("output %q does not contain %q", out, tt.want)
			}
			if n := strings.Count(strings.TrimSpace(out), "\n"); n != 0 {
				t.Errorf("output is %d lines, want one: %q", n+1, out)
			}
		})
	}
	out, code := runBin(t, nil, "version")
	if code != 0 || !strings.HasPrefix(out, "modproxy ") {
		t.Errorf("version: %d %q", code, out)
	}
}

func TestSecondProcessOnStoreFailsFast(t *testing.T) {
	if testing.Short() {
		t.Skip("builds the binary")
	}
	up, err := testupstream.New(e2eModules...)
	if err != nil {
		t.Fatal(err)
	}
	defer up.Close()
	db := filepath.Join(t.TempDir(), "modproxy.db")
	startModproxy(t, "--db", db, "--upstream", up.URL(), "--sumdb", "off")
	// The message comes only once the lock timeout has expired; a serve that
	// waited for the lock instead would be killed by runBin's hang guard,
	// without it. How long failing takes is the cache package's test
	// (TestSecondProcessFailsFast), not a wall-clock bound here.
	out, code := runBin(t, nil, "serve", "--listen", freeAddr(t), "--db", db, "--upstream", up.URL(), "--sumdb", "off", "--ebpf=off")
	if code == 0 || !strings.Contains(out, "in use by another process") {
		t.Errorf("second serve: exit %d, %q", code, out)
	}
}

func TestGracefulShutdownDrainsInFlight(t *testing.T) {
	if testing.Short() {
		t.Skip("builds the binary")
	}
	up, err := testupstream.New(e2eModules...)
	if err != nil {
		t.Fatal(err)
	}
	defer up.Close()
	// The zip request is held upstream until the shutdown has begun, so the
	// request is provably in flight while modproxy drains (a fixed delay
	// could end before a slow shutdown starts, or the request reach the
	// proxy after it).
	const hangGuard = 2 * time.Minute
	reached, release := make(chan struct{}), make(chan struct{})
	var reachedOnce, releaseOnce sync.Once
	rp := httputil.NewSingleHostReverseProxy(mustURL(t, up.URL()))
	gate := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if strings.HasSuffix(r.URL.Path, ".zip") {
			reachedOnce.Do(func() { close(reached) })
			select {
			case <-release:
			case <-r.Context().Done():
				return
			}
		}
		rp.ServeHTTP(w, r)
	}))
	defer gate.Close()
	defer releaseOnce.Do(func() { close(release) }) // before gate.Close
	mp := startModproxy(t, "--db", filepath.Join(t.TempDir(), "modproxy.db"), "--upstream", gate.URL, "--sumdb", "off", "--log-format", "json")
	type result struct {
		status int
		body   string
		err    error
	}
	done := make(chan result, 1)
	go func() {
		resp, err := http.Get(mp.URL + "/example.com/dep/@v/v1.2.0.zip")
		if err != nil {
			done <- result{err: err}
			return
		}
		b, err := io.ReadAll(resp.Body)
		resp.Body.Close()
		done <- result{resp.StatusCode, string(b), err}
	}()
	select {
	case <-reached:
	case <-time.After(hangGuard):
		t.Fatal("the zip request never reached the upstream")
	}
	stopped := make(chan struct{})
	go func() { mp.stop(t); close(stopped) }()
	for deadline := time.Now().Add(hangGuard); !strings.Contains(mp.logs.String(), `"msg":"shutting down: draining in-flight requests"`); {
		if time.Now().After(deadline) {
			t.Fatalf("no shutdown logged:\n%s", mp.logs)
		}
		time.Sleep(10 * time.Millisecond)
	}
	releaseOnce.Do(func() { close(release) })
	<-stopped
	r := <-done
	if r.err != nil || r.status != 200 || r.body != string(up.Zip("example.com/dep", "v1.2.0")) {
		t.Errorf("in-flight request during shutdown: %d, %v", r.status, r.err)
	}
	logs := mp.logs.String()
	for _, want := range []string{`"msg":"shutting down: draining in-flight requests"`, `"msg":"stopped"`, `"path":"/example.com/dep/@v/v1.2.0.zip"`, `"cache":"miss"`} {
		if !strings.Contains(logs, want) {
			t.Errorf("logs lack %s:\n%s", want, logs)
		}
	}
}

// TestMetricsReferenceMatchesCode checks the README's metrics table
// against the metric names the code defines.
func TestMetricsReferenceMatchesCode(t *testing.T) {
	root := filepath.Join("..", "..")
	readme, err := os.ReadFile(filepath.Join(root, "README.md"))
	if err != nil {
		t.Fatal(err)
	}
	_, table, ok := strings.Cut(string(readme), "## Metrics")
	if !ok {
		t.Fatal("README has no Metrics section")
	}
	table, _, _ = strings.Cut(table, "\n## ")
	documented := map[string]bool{}
	for _, m := range regexp.MustCompile("(?m)^\\| `(modproxy_[a-z0-9_]+)`").FindAllStringSubmatch(table, -1) {
		documented[m[1]] = true
	}
	defined := map[string]bool{}
	// Metric names are the Name of an Opts struct or the first argument
	// of prometheus.NewDesc.
	nameRE := regexp.MustCompile(`(?:Name:\s*|NewDesc\(\s*)"(modproxy_[a-z0-9_]+)"`)
	err = filepath.WalkDir(root, func(path string, d os.DirEntry, err error) error {
		if err != nil {
			return err
		}
		// bpf/ names eBPF programs, not metrics; its metrics live in netprobe.
		if d.IsDir() && (d.Name() == "testdata" || d.Name() == "bpf" || strings.HasPrefix(d.Name(), ".") && path != root) {
			return filepath.SkipDir
		}
		if d.IsDir() || !strings.HasSuffix(path, ".go") || strings.HasSuffix(path, "_test.go") {
			return nil
		}
		src, err := os.ReadFile(path)
		if err != nil {
			return err
		}
		for _, m := range nameRE.FindAllStringSubmatch(string(src), -1) {
			defined[m[1]] = true
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	var missing, stale []string
	for n := range defined {
		if !documented[n] {
			missing = append(missing, n)
		}
	}
	for n := range documented {
		if !defined[n] {
			stale = append(stale, n)
		}
	}
	sort.Strings(missing)
	sort.Strings(stale)
	if len(missing) > 0 {
		t.Errorf("metrics defined in code but not in the README table: %v", missing)
	}
	if len(stale) > 0 {
		t.Errorf("metrics in the README table but not defined in code: %v", stale)
	}
}

func mustURL(t *testing.T, s string) *url.URL {
	t.Helper()
	u, err := url.Parse(s)
	if err != nil {
		t.Fatal(err)
	}
	return u
}
