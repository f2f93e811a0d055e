package main

import (
	"context"
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

// liveProjects are small real projects for TestLivePrewarmOffline: a
// module without dependencies, a CLI library with a small graph, and a test
// library whose graph has go.mod-only entries.
var liveProjects = []offlineFixture{{
	name: "uuid",
	files: map[string]string{
		"go.mod":  "module example.com/live/uuid\n\ngo 1.21\n\nrequire github.com/google/uuid v1.6.0\n",
		"main.go": "package main\n\nimport (\n\t\"fmt\"\n\n\t\"github.com/google/uuid\"\n)\n\nfunc main() { fmt.Println(uuid.NewString()) }\n",
	},
	target: func(dir string, _ bool) string { return dir },
}, {
	name: "cobra",
	files: map[string]string{
		"go.mod":  "module example.com/live/cobra\n\ngo 1.21\n\nrequire github.com/spf13/cobra v1.8.1\n",
		"main.go": "package main\n\nimport \"github.com/spf13/cobra\"\n\nfunc main() { _ = (&cobra.Command{Use: \"x\"}).Execute() }\n",
	},
	target: fileIn("go.mod"),
}, {
	name: "testify",
	files: map[string]string{
		"go.mod":      "module example.com/live/testify\n\ngo 1.21\n\nrequire github.com/stretchr/testify v1.9.0\n",
		"lib.go":      "package lib\n\nfunc Add(a, b int) int { return a + b }\n",
		"lib_test.go": "package lib\n\nimport (\n\t\"testing\"\n\n\t\"github.com/stretchr/testify/require\"\n)\n\nfunc TestAdd(t *testing.T) { require.Equal(t, 3, Add(1, 2)) }\n",
	},
	target: func(dir string, withSum bool) string {
		if withSum {
			return filepath.Join(dir, "go.sum")
		}
		return filepath.Join(dir, "go.mod")
	},
}}

// TestLivePrewarmOffline is the offline guarantee against the real
// default upstream (`make e2e-live`): each project is tidied online, then
// prewarmed (with and without its go.sum) into a fresh store from the
// upstream and checksum database of `go env`, and the offline command list
// runs against "serve --offline --upstream off", as in
// TestPrewarmOfflineGoCommands.
func TestLivePrewarmOffline(t *testing.T) {
	if os.Getenv("MODPROXY_E2E_LIVE") != "1" {
		t.Skip("live test against the default upstream: set MODPROXY_E2E_LIVE=1 (make e2e-live)")
	}
	env, err := goEnv(context.Background(), "GOPROXY", "GOSUMDB")
	if err != nil {
		t.Fatal(err)
	}
	if env["GOPROXY"] == "" || env["GOPROXY"] == "off" || env["GOSUMDB"] == "" || env["GOSUMDB"] == "off" {
		t.Skipf("needs a default upstream and checksum database (go env: GOPROXY=%q GOSUMDB=%q)", env["GOPROXY"], env["GOSUMDB"])
	}
	modproxyBin(t)
	gocache := goCache(t)
	results := &offlineResults{res: map[string]string{}}
	for _, fx := range liveProjects {
		t.Run(fx.name, func(t *testing.T) {
			t.Parallel()
			online := offlineGo{proxyURL: env["GOPROXY"], gosumdb: env["GOSUMDB"], gocache: gocache}
			project := writeTree(t, fx.files)
			if out, err := online.run(context.Background(), t.TempDir(), project, "mod", "tidy"); err != nil {
				t.Fatalf("online go mod tidy: %v\n%s", err, out)
			}
			for _, withSum := range []bool{true, false} {
				variant := map[bool]string{true: "with go.sum", false: "without go.sum"}[withSum]
				t.Run(strings.ReplaceAll(variant, " ", "-"), func(t *testing.T) {
					src := copyTree(t, project, withSum)
					store := filepath.Join(t.TempDir(), "store.db")
					pwRun(t, false, "prewarm", "--progress", "none", "--db", store, fx.target(src, withSum))
					mp := startModproxy(t, "--db", store, "--offline", "--upstream", "off")
					g := offlineGo{proxyURL: mp.URL, gosumdb: env["GOSUMDB"], gocache: gocache}
					for _, c := range offlineCommands {
						name := commandName(".", c)
						key := fx.name + "|" + variant + "|" + name
						results.set(key, "FAIL")
						if err := runOffline(t, g, fx, project, true, ".", c); err != nil {
							t.Errorf("offline %s (%s): %v", name, variant, err)
							continue
						}
						results.set(key, "pass")
					}
					if t.Failed() {
						t.Logf("offline modproxy log:\n%s", mp.logs)
					}
				})
			}
		})
	}
	t.Cleanup(func() { t.Logf("offline go commands after a live prewarm:%s", results.tableOf(liveProjects)) })
}
