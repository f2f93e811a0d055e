package main

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// TestLiveDefaultUpstream is the opt-in smoke test of `make e2e-live`: the
// binary with its real defaults (upstream from `go env GOPROXY`, checksum
// database from `go env GOSUMDB`) serves the go command, which verifies
// through modproxy's /sumdb/ endpoints. It needs the network, so the
// default test run skips it.
func TestLiveDefaultUpstream(t *testing.T) {
	if os.Getenv("MODPROXY_E2E_LIVE") != "1" {
		t.Skip("live smoke test against the default upstream: set MODPROXY_E2E_LIVE=1 (make e2e-live)")
	}
	mp := startModproxy(t, "--db", filepath.Join(t.TempDir(), "modproxy.db"), "--ebpf=auto")
	dir := t.TempDir()
	files := map[string]string{
		"go.mod":  "module example.com/live\n\ngo 1.21\n\nrequire github.com/google/uuid v1.6.0\n",
		"main.go": "package main\n\nimport (\n\t\"fmt\"\n\n\t\"github.com/google/uuid\"\n)\n\nfunc main() { fmt.Println(uuid.NewString() != \"\") }\n",
	}
	for name, content := range files {
		if err := os.WriteFile(filepath.Join(dir, name), []byte(content), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	g := newGoEnv(t, mp.URL, nil)
	// The go command's default checksum database, reached through modproxy.
	for i, kv := range g.env {
		if strings.HasPrefix(kv, "GOSUMDB=") {
			g.env = append(g.env[:i], g.env[i+1:]...)
			break
		}
	}
	g.run(dir, "build", "-o", os.DevNull, ".")
	g.run(dir, "mod", "verify")
	resp, _ := mp.get(t, "/github.com/google/uuid/@v/v1.6.0.zip")
	if resp.Header.Get("X-Modproxy-Cache") != "hit" {
		t.Errorf("zip not served from the store after the build: %q", resp.Header.Get("X-Modproxy-Cache"))
	}
	_, metrics := mp.get(t, "/metrics")
	for _, phase := range []string{"dns", "connect", "tls", "ttfb"} {
		if !strings.Contains(metrics, `phase="`+phase+`",source="userspace"`) {
			t.Errorf("no userspace %s samples in /metrics", phase)
		}
	}
	t.Logf("modproxy log:\n%s", mp.logs)
}
