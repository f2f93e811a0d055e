package main

import (
	"encoding/base64"
	"encoding/json"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"

	"github.com/modproxy/modproxy/internal/testgit"
	"github.com/modproxy/modproxy/internal/testupstream"
)

const gitHost = testgit.Host

// directUniverse is a git server with a private module (basic auth) and
// a public one, reached by name over TLS through the server's forward
// proxy, which the processes started after it use.
func directUniverse(t *testing.T) *testgit.Server {
	s := testgit.New(t)
	for _, kv := range s.Env() {
		k, v, _ := strings.Cut(kv, "=")
		t.Setenv(k, v) // inherited by modproxy (and its git processes)
	}
	t.Setenv("GIT_CONFIG_GLOBAL", "/dev/null")
	t.Setenv("GOENV", "off")
	for _, k := range []string{"GOINSECURE", "GOVCS", "GOAUTH", "GOPRIVATE", "GONOSUMDB", "GONOPROXY", "NETRC"} {
		t.Setenv(k, "")
	}
	lib := s.NewRepo("private/lib")
	lib.Commit("lib", map[string]string{
		"go.mod": "module " + gitHost + "/private/lib\n\ngo 1.21\n",
		"lib.go": "package lib\n\nfunc Name() string { return \"private lib v1.0.0\" }\n",
	})
	lib.Tag("v1.0.0", "")
	lib.Push()
	s.RequireAuth("private/", "alice", "s3cret-pw")
	s.AddGoImport(testgit.GoImport{Prefix: gitHost + "/private/lib", VCS: "git", Repo: s.RepoURL("https", "private/lib")})

	pub := s.NewRepo("pub")
	pub.Commit("pub", map[string]string{
		"go.mod": "module " + gitHost + "/pub\n\ngo 1.21\n",
		"pub.go": "package pub\n\nconst Pub = \"public via direct\"\n",
	})
	pub.Tag("v1.0.0", "")
	pub.Commit("pub main", map[string]string{"more.go": "package pub\n\nconst More = 1\n"})
	pub.Push()
	s.AddGoImport(testgit.GoImport{Prefix: gitHost + "/pub", VCS: "git", Repo: s.RepoURL("https", "pub")})
	return s
}

// goDirectSums is what the go command itself records for mod@version
// fetched with GOPROXY=direct: the h1: of the zip and of the go.mod.
func goDirectSums(t *testing.T, target string) (zipSum, modSum string) {
	t.Helper()
	g := newGoEnv(t, "direct", nil)
	g.env = append(g.env, os.Environ()...) // the git server's proxy and CA
	g.env = append(g.env, "GOPROXY=direct", "GOSUMDB=off", "GOFLAGS=-modcacherw")
	d := goDownload(t, g, target)
	return d.Sum, d.GoModSum
}

type downloaded struct{ Version, Sum, GoModSum string }

func goDownload(t *testing.T, g *goRunner, target string) downloaded {
	t.Helper()
	out := g.run(t.TempDir(), "mod", "download", "-json", target)
	var d downloaded
	if err := json.Unmarshal([]byte(out), &d); err != nil {
		t.Fatalf("go mod download -json: %v\n%s", err, out)
	}
	return d
}

// TestDirectPrivateBuild builds a program importing a private module
// that lives only on the test git server (credentials in a netrc file)
// and a public one fetched direct and verified against the checksum
// database, through modproxy with a fresh module cache.
func TestDirectPrivateBuild(t *testing.T) {
	s := directUniverse(t)
	zipSum, modSum := goDirectSums(t, gitHost+"/pub@v1.0.0")

	public, db := startUniverse(t, []testupstream.Module{{Path: "example.com/dep", Version: "v1.0.0",
		Files: map[string]string{"go.mod": "module example.com/dep\n\ngo 1.21\n", "dep.go": "package dep\n"}}})
	db.Add(gitHost+"/pub", "v1.0.0", modSum, zipSum)

	netrc := filepath.Join(t.TempDir(), "netrc")
	os.WriteFile(netrc, []byte("machine "+gitHost+" login alice password s3cret-pw\n"), 0o600)
	mp := startModproxy(t, "--db", filepath.Join(t.TempDir(), "modproxy.db"),
		"--upstream", public.URL()+",direct", "--sumdb", db.VerifierKey()+" "+db.URL(),
		"--private", gitHost+"/private", "--private-upstream", "direct", "--netrc", netrc, "--goauth", "netrc")

	project := t.TempDir()
	os.WriteFile(filepath.Join(project, "go.mod"), []byte("module example.com/app\n\ngo 1.21\n\nrequire (\n\t"+gitHost+"/private/lib v1.0.0\n\t"+gitHost+"/pub v1.0.0\n)\n"), 0o644)
	os.WriteFile(filepath.Join(project, "main.go"), []byte("package main\n\nimport (\n\t\"fmt\"\n\n\t\""+gitHost+"/private/lib\"\n\t\""+gitHost+"/pub\"\n)\n\nfunc main() { fmt.Println(lib.Name(), pub.Pub) }\n"), 0o644)
	g := newGoEnv(t, mp.URL, db)
	g.env = append(g.env, "GONOSUMDB="+gitHost+"/private")
	g.run(project, "build", "-o", filepath.Join(project, "app"), ".")
	out := g.run(project, "run", ".")
	if !strings.Contains(out, "private lib v1.0.0 public via direct") {
		t.Errorf("program output %q", out)
	}
	sum, _ := os.ReadFile(filepath.Join(project, "go.sum"))
	if !strings.Contains(string(sum), gitHost+"/pub v1.0.0 "+zipSum) {
		t.Errorf("go.sum lacks the go command's own hash %s:\n%s", zipSum, sum)
	}

	// A branch query through modproxy: the same pseudo-version and hashes
	// as the go command's own GOPROXY=direct.
	direct := newGoEnv(t, "direct", nil)
	direct.env = append(direct.env, os.Environ()...)
	direct.env = append(direct.env, "GOPROXY=direct", "GOSUMDB=off", "GOFLAGS=-modcacherw")
	want := goDownload(t, direct, gitHost+"/pub@main")
	db.Add(gitHost+"/pub", want.Version, want.GoModSum, want.Sum) // public: modproxy verifies it
	via := newGoEnv(t, mp.URL, nil)
	if got := goDownload(t, via, gitHost+"/pub@main"); got != want || !strings.HasPrefix(got.Version, "v1.0.1-0.") {
		t.Errorf("pub@main through modproxy: %+v, go command direct: %+v", got, want)
	}

	// Privacy: the public upstream and the checksum database never see
	// the private path; the public module was looked up in the database.
	if n := public.Count("private"); n != 0 {
		t.Errorf("public upstream saw %d requests for private paths", n)
	}
	if n := db.LookupCount(gitHost + "/private"); n != 0 {
		t.Errorf("checksum database saw %d lookups of private paths", n)
	}
	if db.LookupCount(gitHost+"/pub") == 0 {
		t.Error("the public module fetched direct was not verified against the checksum database")
	}
	sawAuth := false
	for _, r := range s.Requests() {
		if strings.Contains(r, "/repo/private/lib") && strings.HasSuffix(r, " alice") {
			sawAuth = true
		}
	}
	if !sawAuth {
		t.Errorf("git server never saw the netrc credentials: %q", s.Requests())
	}

	// Telemetry: direct is an upstream with timed git phases.
	_, metrics := mp.get(t, "/metrics")
	for _, series := range []string{
		`modproxy_upstream_requests_total{kind="zip",outcome="ok",upstream="direct"}`,
	} {
		if !hasNonZero(metrics, series) {
			t.Errorf("metric %s missing or zero", series)
		}
	}
	for _, phase := range []string{"discovery", "ls-remote", "fetch", "archive"} {
		re := regexp.MustCompile(`(?m)^modproxy_upstream_phase_seconds_count\{[^}]*phase="` + phase + `"[^}]*upstream="direct"[^}]*\} [1-9]`)
		if !re.MatchString(metrics) {
			t.Errorf("no modproxy_upstream_phase_seconds for direct phase %s", phase)
		}
	}

	if _, dbg := mp.get(t, "/debug/upstreams?format=json"); !regexp.MustCompile(`"upstream":\s*"direct",\s*"configured":\s*true`).MatchString(dbg) {
		t.Errorf("debug page does not list direct as configured: %.300s", dbg)
	}

	// Stored .info carries Origin, never credentials.
	resp, info := mp.get(t, "/"+gitHost+"/private/lib/@v/v1.0.0.info")
	if resp.StatusCode != 200 || !strings.Contains(info, `"Origin"`) || !strings.Contains(info, `"URL":"https://`+gitHost+`/repo/private/lib.git"`) {
		t.Errorf(".info: %d %s", resp.StatusCode, info)
	}
	if resp.Header.Get("X-Modproxy-Upstream") != "" && resp.Header.Get("X-Modproxy-Upstream") != "direct" {
		t.Errorf("upstream header %q", resp.Header.Get("X-Modproxy-Upstream"))
	}
	secret := "s3cret-pw"
	b64 := base64.StdEncoding.EncodeToString([]byte("alice:" + secret))
	for what, text := range map[string]string{"logs": mp.logs.String(), "metrics": metrics, ".info": info} {
		if strings.Contains(text, secret) || strings.Contains(text, b64) {
			t.Errorf("credentials leaked into %s", what)
		}
	}
}

// TestDirectWrongCredentials: a private module with wrong credentials is
// a clear error naming authentication, and the password appears nowhere.
func TestDirectWrongCredentials(t *testing.T) {
	directUniverse(t)
	netrc := filepath.Join(t.TempDir(), "netrc")
	os.WriteFile(netrc, []byte("machine "+gitHost+" login alice password wrong-pw\n"), 0o600)
	mp := startModproxy(t, "--db", filepath.Join(t.TempDir(), "modproxy.db"), "--upstream", "off", "--sumdb", "off",
		"--private", gitHost+"/private", "--private-upstream", "direct", "--netrc", netrc)
	project := t.TempDir()
	os.WriteFile(filepath.Join(project, "go.mod"), []byte("module example.com/app\n\ngo 1.21\n\nrequire "+gitHost+"/private/lib v1.0.0\n"), 0o644)
	os.WriteFile(filepath.Join(project, "main.go"), []byte("package main\n\nimport _ \""+gitHost+"/private/lib\"\n\nfunc main() {}\n"), 0o644)
	g := newGoEnv(t, mp.URL, nil)
	g.env = append(g.env, "GONOSUMDB="+gitHost+"/private")
	out, err := g.try(project, "build", ".")
	if err == nil {
		t.Fatalf("build with wrong credentials succeeded:\n%s", out)
	}
	t.Logf("go build output:\n%s", out)
	if !strings.Contains(out, "authentication failed") {
		t.Errorf("go command output does not say authentication failed:\n%s", out)
	}
	resp, body := mp.get(t, "/"+gitHost+"/private/lib/@v/v1.0.0.info")
	if resp.StatusCode != 502 || !strings.Contains(body, "authentication failed for https://"+gitHost+"/repo/private/lib.git") {
		t.Errorf("wrong credentials: %d %q", resp.StatusCode, body)
	}
	b64 := base64.StdEncoding.EncodeToString([]byte("alice:wrong-pw"))
	for what, text := range map[string]string{"logs": mp.logs.String(), "go output": out, "body": body} {
		if strings.Contains(text, "wrong-pw") || strings.Contains(text, b64) {
			t.Errorf("credentials leaked into %s", what)
		}
	}
}
