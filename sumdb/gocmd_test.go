package sumdb

import (
	"context"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"golang.org/x/mod/module"

	"github.com/modproxy/modproxy/internal/testsumdb"
)

// TestGoCommand runs the real go command against a module proxy whose
// /sumdb/ endpoints are the Verifier's Handler: the go command probes
// <GOPROXY>/sumdb/<name>/supported, then verifies downloads through it.
func TestGoCommand(t *testing.T) {
	if testing.Short() {
		t.Skip("runs the go command")
	}
	goBin, err := exec.LookPath("go")
	if err != nil {
		t.Skip("no go command in PATH")
	}
	db := testsumdb.New(t, "sum.example.test")
	good := makeMod(t, "example.com/hello", "v1.0.0", "hello")
	next := makeMod(t, "example.com/hello", "v1.1.0", "hello again")
	evil := makeMod(t, "example.com/hello", "v1.1.0", "evil")
	db.AddModule(good.path, good.version, good.gomod, good.zip)
	db.AddModule(next.path, next.version, next.gomod, next.zip)
	served := map[string]mod{good.version: good, next.version: evil} // v1.1.0 is tampered

	v := newVerifier(t, testConfig(db), newMemStore())
	mux := http.NewServeMux()
	mux.Handle("/sumdb/", v.Handler())
	mux.HandleFunc("/", func(w http.ResponseWriter, r *http.Request) {
		epath, file, ok := strings.Cut(strings.TrimPrefix(r.URL.Path, "/"), "/@v/")
		path, err := module.UnescapePath(epath)
		if !ok || err != nil || path != good.path {
			http.NotFound(w, r)
			return
		}
		if file == "list" {
			w.Write([]byte("v1.0.0\nv1.1.0\n"))
			return
		}
		ext := filepath.Ext(file)
		m, ok := served[strings.TrimSuffix(file, ext)]
		if !ok {
			http.NotFound(w, r)
			return
		}
		switch ext {
		case ".info":
			w.Write([]byte(`{"Version":"` + m.version + `","Time":"2024-01-01T00:00:00Z"}`))
		case ".mod":
			w.Write(m.gomod)
		case ".zip":
			w.Write(m.zip)
		default:
			http.NotFound(w, r)
		}
	})
	srv := httptest.NewServer(mux)
	defer srv.Close()

	tmp := t.TempDir()
	env := []string{"PATH=" + os.Getenv("PATH"), "HOME=" + tmp}
	env = append(env, db.GoEnv(srv.URL)...)
	env = append(env,
		"GOPATH="+filepath.Join(tmp, "gopath"),
		"GOMODCACHE="+filepath.Join(tmp, "modcache"),
		"GOCACHE="+filepath.Join(tmp, "gocache"),
		"GOFLAGS=-mod=mod -modcacherw",
		"GOTOOLCHAIN=local", "GOENV=off", "GOWORK=off",
	)
	run := func(args ...string) (string, error) {
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		cmd := exec.CommandContext(ctx, goBin, args...)
		cmd.Dir = tmp
		cmd.Env = env
		out, err := cmd.CombinedOutput()
		return string(out), err
	}

	out, err := run("mod", "download", "-json", "example.com/hello@v1.0.0")
	if err != nil {
		t.Fatalf("go mod download: %v\n%s", err, out)
	}
	// The go command kept the database's record: it did verify.
	rec := filepath.Join(tmp, "modcache", "cache", "download", "sumdb", "sum.example.test", "lookup", "example.com", "hello@v1.0.0")
	if _, err := os.Stat(rec); err != nil {
		t.Fatalf("go command did not consult the checksum database: %v\n%s", err, out)
	}
	if n := counterValue(t, v.metrics.requests.WithLabelValues("lookup", "miss")); n != 1 {
		t.Errorf("handler lookups (miss) = %v, want 1", n)
	}

	out, err = run("mod", "download", "-json", "example.com/hello@v1.1.0")
	t.Logf("tampered module:\n%s", out)
	if err == nil || !strings.Contains(out, "checksum mismatch") {
		t.Fatalf("tampered module: go mod download err = %v, want checksum mismatch:\n%s", err, out)
	}
}
