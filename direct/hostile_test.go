package direct

import (
	"archive/zip"
	"bytes"
	"context"
	"encoding/base64"
	"encoding/json"
	"errors"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/modproxy/modproxy/internal/testgit"
	"github.com/modproxy/modproxy/internal/testupstream"
)

// smallFixture is a git server with one repository "lib" holding module
// host/lib at v1.0.0.
func smallFixture(t *testing.T) (*fixture, *testgit.Repo) {
	s := testgit.New(t)
	r := s.NewRepo("lib")
	r.Commit("lib", map[string]string{"go.mod": "module " + host + "/lib\n\ngo 1.21\n", "lib.go": "package lib\n"})
	r.Tag("v1.0.0", "")
	r.Push()
	return &fixture{srv: s}, r
}

// privateRepo creates repository private/<name> with module
// host/private/<name> tagged v0.1.0, served over HTTPS only to user and
// password, and its go-import page.
func privateRepo(s *testgit.Server, name, user, password string) *testgit.Repo {
	r := s.NewRepo("private/" + name)
	r.Commit(name, map[string]string{"go.mod": "module " + host + "/private/" + name + "\n", name + ".go": "package " + name + "\n"})
	r.Tag("v0.1.0", "")
	r.Push()
	s.RequireAuth("private/", user, password)
	imp(s, "private/"+name, "git", s.RepoURL("https", "private/"+name), "")
	return r
}

func imp(s *testgit.Server, prefix, vcs, repo, subdir string) {
	s.AddGoImport(testgit.GoImport{Prefix: host + "/" + prefix, VCS: vcs, Repo: repo, SubDir: subdir})
}

func openErr(t *testing.T, f *Fetcher, path, kind, version string) error {
	t.Helper()
	rc, _, err := f.Open(context.Background(), path, kind, version)
	if err == nil {
		rc.Close()
	}
	return err
}

// TestDiscoveryRules: what a go-import page may and may not make modproxy
// do.
func TestDiscoveryRules(t *testing.T) {
	fx, _ := smallFixture(t)
	s := fx.srv
	imp(s, "plain", "git", s.RepoURL("http", "lib"), "")
	imp(s, "insec", "git", s.RepoURL("http", "lib"), "")
	imp(s, "slash", "git", s.RepoURL("https", "lib"), "/abs")
	imp(s, "hyphen", "git", s.RepoURL("https", "lib"), "-c")
	imp(s, "filerepo", "git", "file:///etc", "")
	imp(s, "gitproto", "git", "git://"+host+"/repo/lib.git", "")
	imp(s, "hg", "hg", "https://"+host+"/repo/hg", "")
	imp(s, "creds", "git", "https://alice:pw-in-page@"+host+"/repo/lib.git", "")
	f := newTestFetcher(t, fx, func(c *Config) { c.Insecure = host + "/insec" })
	cases := []struct {
		path, want string
		notFound   bool
	}{
		{"plain", "plain HTTP; allow it with --insecure", true},
		{"slash", `invalid subdirectory "/abs"`, true},
		{"hyphen", `invalid subdirectory "-c"`, true},
		{"filerepo", "invalid repo root", true},
		{"gitproto", `scheme "git" is not allowed`, true},
		{"hg", `version control system "hg" is not supported`, true},
		{"nothing/here", "?go-get=1: 404 Not Found", true},
		{"with space", "malformed", true},
	}
	for _, c := range cases {
		err := openErr(t, f, host+"/"+c.path, KindList, "")
		if err == nil || !strings.Contains(err.Error(), c.want) || IsNotExist(err) != c.notFound {
			t.Errorf("%s: got %v (not found %v), want %q", c.path, err, IsNotExist(err), c.want)
		}
	}
	// --insecure allows plain HTTP for matching paths only.
	if err := openErr(t, f, host+"/insec", KindInfo, "v1.0.0"); err != nil {
		t.Errorf("insecure path over http: %v", err)
	}
	// Credentials in a discovered URL are used, never stored or shown.
	data, err := readAll(t, f, host+"/creds", KindInfo, "v1.0.0")
	if err != nil {
		// host/creds's go.mod says host/lib: the module path mismatch is
		// the expected error, and it must not show the password.
		if strings.Contains(err.Error(), "pw-in-page") {
			t.Errorf("password in error: %v", err)
		}
	} else if strings.Contains(string(data), "pw-in-page") || strings.Contains(string(data), "alice") {
		t.Errorf(".info carries credentials: %s", data)
	}
}

// TestGOVCS: GOVCS is applied before any VCS runs.
func TestGOVCS(t *testing.T) {
	fx, _ := smallFixture(t)
	imp(fx.srv, "lib", "git", fx.srv.RepoURL("https", "lib"), "")
	f := newTestFetcher(t, fx, func(c *Config) { c.GOVCS = host + ":off" })
	err := openErr(t, f, host+"/lib", KindList, "")
	if err == nil || !strings.Contains(err.Error(), "GOVCS disallows using git for public "+host+"/lib") {
		t.Errorf("GOVCS off: %v", err)
	}
	f = newTestFetcher(t, fx, func(c *Config) { c.GOVCS = "private:git,public:hg"; c.Private = host })
	if err := openErr(t, f, host+"/lib", KindList, ""); err != nil {
		t.Errorf("GOVCS private:git: %v", err)
	}

	for _, bad := range []string{",", "nocolon", ":git", "a.com:", "a.com:git|", "a.com:git,a.com:hg", "./rel:git"} {
		if _, err := ParseGOVCS(bad); err == nil {
			t.Errorf("ParseGOVCS(%q) accepted", bad)
		}
	}
	cfg, _ := ParseGOVCS("example.com:git|hg,*.corp:all")
	for _, c := range []struct {
		path    string
		private bool
		vcs     string
		want    bool
	}{
		{"example.com/x", false, "git", true},
		{"example.com/x", false, "svn", false},
		{"a.corp/x", false, "bzr", true},
		{"other.org/x", false, "git", true},  // default public:git|hg
		{"other.org/x", false, "svn", false}, // default
		{"other.org/x", true, "svn", true},   // default private:all
	} {
		if got := cfg.allow(c.path, c.private, c.vcs); got != c.want {
			t.Errorf("allow(%s, %v, %s) = %v", c.path, c.private, c.vcs, got)
		}
	}
}

// TestHostileRevisions: queries that look like options, refs git would
// resolve but the go command would not, and hashes of nothing.
func TestHostileRevisions(t *testing.T) {
	fx, _ := smallFixture(t)
	imp(fx.srv, "lib", "git", fx.srv.RepoURL("https", "lib"), "")
	f := newTestFetcher(t, fx, nil)
	marker := filepath.Join(t.TempDir(), "pwned")
	for _, q := range []string{
		"--upload-pack=touch " + marker, "-n1", "HEAD~1", "main^", "refs/heads/main:go.mod",
		"deadbeefdeadbeef", "v9.9.9", "@{-1}", "..",
	} {
		err := openErr(t, f, host+"/lib", KindInfo, q)
		if err == nil || !IsNotExist(err) {
			t.Errorf("query %q: got %v, want not found", q, err)
		}
	}
	for _, v := range []string{"v1.0", "master", "v1.0.0+meta"} {
		if err := openErr(t, f, host+"/lib", KindZip, v); err == nil || !IsNotExist(err) {
			t.Errorf("zip of non-canonical %q: %v", v, err)
		}
	}
	if _, err := os.Stat(marker); err == nil {
		t.Fatal("a query ran a command")
	}
}

// TestDamagedMirror: a mirror whose files were damaged is rebuilt.
func TestDamagedMirror(t *testing.T) {
	fx, r := smallFixture(t)
	imp(fx.srv, "lib", "git", fx.srv.RepoURL("https", "lib"), "")
	dir := t.TempDir()
	f := newTestFetcher(t, fx, func(c *Config) { c.Dir = dir })
	if err := openErr(t, f, host+"/lib", KindZip, "v1.0.0"); err != nil {
		t.Fatal(err)
	}
	mirrors, _ := filepath.Glob(filepath.Join(dir, "*", "config"))
	if len(mirrors) != 1 {
		t.Fatalf("mirrors: %v", mirrors)
	}
	os.WriteFile(mirrors[0], []byte("[[[garbage"), 0o600)
	if _, err := New(Config{Dir: dir}); err == nil || !strings.Contains(err.Error(), "in use by another process") {
		t.Errorf("second process on the repository directory: %v", err)
	}
	f.Close()
	r.Commit("two", map[string]string{"two.go": "package lib\n"})
	r.Tag("v1.1.0", "")
	r.Push()
	f = newTestFetcher(t, fx, func(c *Config) { c.Dir = dir }) // a restarted process
	if err := openErr(t, f, host+"/lib", KindZip, "v1.1.0"); err != nil {
		t.Fatalf("after damage: %v", err)
	}
	f.Close()

	// A git killed midway leaves lock files; a clone killed midway, a
	// mirror without its ready marker.
	mdir := filepath.Dir(mirrors[0])
	os.WriteFile(filepath.Join(mdir, "packed-refs.lock"), nil, 0o600)
	os.MkdirAll(filepath.Join(mdir, "refs", "tags"), 0o700)
	os.WriteFile(filepath.Join(mdir, "refs", "tags", "v1.2.0.lock"), nil, 0o600)
	r.Commit("three", map[string]string{"three.go": "package lib\n"})
	r.Tag("v1.2.0", "")
	r.Push()
	f = newTestFetcher(t, fx, func(c *Config) { c.Dir = dir })
	if err := openErr(t, f, host+"/lib", KindZip, "v1.2.0"); err != nil {
		t.Fatalf("after stale locks: %v", err)
	}
	f.Close()
	os.Remove(filepath.Join(mdir, readyMarker))
	f = newTestFetcher(t, fx, func(c *Config) { c.Dir = dir })
	if err := openErr(t, f, host+"/lib", KindZip, "v1.2.0"); err != nil {
		t.Fatalf("after an unfinished clone: %v", err)
	}
}

// TestHangingRemote: a remote that accepts and never answers is cut off
// by the phase timeout, as a failure (not "not found").
func TestHangingRemote(t *testing.T) {
	fx, _ := smallFixture(t)
	imp(fx.srv, "hang", "git", "https://"+testgit.HangHost+"/repo/x.git", "")
	f := newTestFetcher(t, fx, func(c *Config) { c.Timeouts.LsRemote = 2 * time.Second })
	done := make(chan error, 1)
	go func() { done <- openErr(t, f, host+"/hang", KindList, "") }()
	select {
	case err := <-done:
		if err == nil || IsNotExist(err) || !strings.Contains(err.Error(), "deadline exceeded") {
			t.Errorf("hanging remote: %v", err)
		}
	case <-time.After(time.Minute):
		t.Fatal("hanging remote not cut off")
	}
}

// TestSharedSync: concurrent requests for one repository share one
// ls-remote and one fetch.
func TestSharedSync(t *testing.T) {
	fx, _ := smallFixture(t)
	imp(fx.srv, "lib", "git", fx.srv.RepoURL("https", "lib"), "")
	f := newTestFetcher(t, fx, nil)
	fx.srv.Hold(300 * time.Millisecond)
	var wg sync.WaitGroup
	errs := make(chan error, 8)
	for range 8 {
		wg.Go(func() { errs <- openErr(t, f, host+"/lib", KindInfo, "v1.0.0") })
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		if err != nil {
			t.Fatal(err)
		}
	}
	refs := 0
	for _, r := range fx.srv.Requests() {
		if strings.Contains(r, "/info/refs") {
			refs++
		}
	}
	if refs != 2 { // one ls-remote, one clone
		t.Errorf("%d ref advertisements for 8 concurrent requests, want 2", refs)
	}
}

// TestModVCS: a "mod" go-import tag hands the module to another proxy.
func TestModVCS(t *testing.T) {
	fx, _ := smallFixture(t)
	up, err := testupstream.New(testupstream.Module{Path: host + "/viaproxy", Version: "v1.2.3",
		Files: map[string]string{"go.mod": "module " + host + "/viaproxy\n", "p.go": "package p\n"}})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(up.Close)
	imp(fx.srv, "viaproxy", "mod", up.URL(), "")
	f := newTestFetcher(t, fx, func(c *Config) { c.Insecure = host + "/viaproxy" })
	list, err := readAll(t, f, host+"/viaproxy", KindList, "")
	if err != nil || strings.TrimSpace(string(list)) != "v1.2.3" {
		t.Fatalf("list via mod: %q %v", list, err)
	}
	zip, err := readAll(t, f, host+"/viaproxy", KindZip, "v1.2.3")
	if err != nil || string(zip) != string(up.Zip(host+"/viaproxy", "v1.2.3")) {
		t.Errorf("zip via mod: %v", err)
	}
	if err := openErr(t, f, host+"/viaproxy", KindInfo, "v9.0.0"); !IsNotExist(err) {
		t.Errorf("missing version via mod: %v", err)
	}
	// Without --insecure the plain-HTTP proxy is refused.
	f = newTestFetcher(t, fx, nil)
	if err := openErr(t, f, host+"/viaproxy", KindList, ""); err == nil {
		t.Error("plain-HTTP mod proxy allowed without --insecure")
	}
}

// TestCredentials: netrc, GOAUTH commands and git credential helpers
// supply the private repository's credentials; without them it is an
// authentication error, not "not found".
func TestCredentials(t *testing.T) {
	fx, _ := smallFixture(t)
	s := fx.srv
	privateRepo(s, "p", "bob", "hunter2")
	dir := t.TempDir()
	netrc := filepath.Join(dir, "netrc")
	os.WriteFile(netrc, []byte("machine other.example login x password y\nmachine "+host+" login bob password hunter2\n"), 0o600)
	script := filepath.Join(dir, "auth.sh")
	os.WriteFile(script, []byte("#!/bin/sh\nprintf 'https://"+host+"/repo\\n\\nAuthorization: Basic "+base64.StdEncoding.EncodeToString([]byte("bob:hunter2"))+"\\n\\n'\n"), 0o700)
	gitDir := t.TempDir()
	store := filepath.Join(t.TempDir(), "creds")
	os.WriteFile(store, []byte("https://bob:hunter2@"+host+"\n"), 0o600)
	if out, err := runIn(gitDir, "git", "init", "-q"); err != nil {
		t.Fatal(out)
	}
	if out, err := runIn(gitDir, "git", "config", "credential.helper", "store --file="+store); err != nil {
		t.Fatal(out)
	}
	for _, c := range []struct {
		name, goauth, netrc string
		ok                  bool
	}{
		{"netrc", "netrc", netrc, true},
		{"default is netrc", "", netrc, true},
		{"command", "sh " + script, "", true},
		{"git dir", "git " + gitDir, "", true},
		{"off", "off", netrc, false},
		{"none", "netrc", filepath.Join(dir, "missing"), false},
	} {
		t.Run(c.name, func(t *testing.T) {
			f := newTestFetcher(t, fx, func(cfg *Config) { cfg.GOAUTH, cfg.Netrc = c.goauth, c.netrc })
			data, err := readAll(t, f, host+"/private/p", KindInfo, "v0.1.0")
			if c.ok {
				if err != nil {
					t.Fatal(err)
				}
				var info RevInfo
				json.Unmarshal(data, &info)
				if info.Version != "v0.1.0" || strings.Contains(string(data), "hunter2") {
					t.Errorf(".info %s", data)
				}
				return
			}
			var ae *AuthError
			if !errors.As(err, &ae) || IsNotExist(err) || strings.Contains(err.Error(), "hunter2") {
				t.Errorf("without credentials: %v", err)
			}
		})
	}
	for _, bad := range []string{"git relative/dir", "git", "off;netrc", "netrc extra", ";", "'unterminated"} {
		if _, err := parseGOAUTH(bad, ""); err == nil {
			t.Errorf("parseGOAUTH(%q) accepted", bad)
		}
	}
}

func TestRedactText(t *testing.T) {
	for in, want := range map[string]string{
		"fatal: unable to access 'https://bob:hunter2@h/r.git/': 401": "fatal: unable to access 'https://h/r.git/': 401",
		"Authorization: Basic Ym9iOmh1bnRlcjI=":                       "Authorization: [redacted]",
		"http.https://h/.extraheader=Authorization: Bearer tok":       "http.https://h/.extraheader=Authorization: [redacted]",
		"no secrets here": "no secrets here",
	} {
		if got := redactText(in); got != want {
			t.Errorf("redactText(%q) = %q, want %q", in, got, want)
		}
	}
}

func TestParseUserAuth(t *testing.T) {
	got, err := parseUserAuth("https://a.example/x\nhttps://b.example\n\nAuthorization: Bearer t\n\n")
	if err != nil || got["a.example/x"].Get("Authorization") != "Bearer t" || got["b.example"] == nil {
		t.Errorf("parseUserAuth: %v %v", got, err)
	}
	for _, bad := range []string{"https://a\n", "https://a\n\nNoColonHere\n\n", "not a url\n\nA: b\n\n", "https://a\n\nA: b\n"} {
		if _, err := parseUserAuth(bad); err == nil {
			t.Errorf("parseUserAuth(%q) accepted", bad)
		}
	}
}

func runIn(dir string, name string, args ...string) (string, error) {
	cmd := exec.Command(name, args...)
	cmd.Dir = dir
	out, err := cmd.CombinedOutput()
	return string(out), err
}

// TestCommitQueries: a short hash inside the history resolves to its
// pseudo-version; a commit the remote dropped (force-push) does not
// resolve, even though the mirror still holds it.
func TestCommitQueries(t *testing.T) {
	fx, r := smallFixture(t)
	imp(fx.srv, "lib", "git", fx.srv.RepoURL("https", "lib"), "")
	c2 := r.Commit("two", map[string]string{"two.go": "package lib\n"})
	c3 := r.Commit("three", map[string]string{"three.go": "package lib\n"})
	r.Push()
	f := newTestFetcher(t, fx, nil)
	data, err := readAll(t, f, host+"/lib", KindInfo, c2[:10])
	if err != nil {
		t.Fatal(err)
	}
	var info RevInfo
	json.Unmarshal(data, &info)
	if !strings.HasPrefix(info.Version, "v1.0.1-0.") || !strings.HasSuffix(info.Version, "-"+c2[:12]) {
		t.Errorf("mid-history commit: %s", info.Version)
	}
	if _, err := readAll(t, f, host+"/lib", KindInfo, c3); err != nil {
		t.Fatal(err)
	}
	r.Git("reset", "-q", "--hard", "v1.0.0")
	r.Push()
	if err := openErr(t, f, host+"/lib", KindInfo, c3); !IsNotExist(err) {
		t.Errorf("dropped commit %s: %v, want not found", c3[:12], err)
	}
}

func TestIsUnreachable(t *testing.T) {
	for _, c := range []struct {
		err  error
		want bool
	}{
		{&gitError{Args: []string{"ls-remote"}, Stderr: "fatal: unable to access 'https://h/r.git/': Could not resolve host: h"}, true},
		{&gitError{Args: []string{"fetch"}, Stderr: "fatal: early EOF"}, true},
		{&gitError{Args: []string{"archive"}, Stderr: "fatal: not a tree object"}, false},
		{notExistf("no such module"), false},
		{errors.New("plain"), false},
	} {
		if got := IsUnreachable(c.err); got != c.want {
			t.Errorf("IsUnreachable(%v) = %v", c.err, got)
		}
	}
}

// TestCloseStopsSharedWork: Close kills the git processes of a sync no
// request waits for any more, and returns.
func TestCloseStopsSharedWork(t *testing.T) {
	fx, _ := smallFixture(t)
	imp(fx.srv, "hang", "git", "https://"+testgit.HangHost+"/repo/x.git", "")
	f := newTestFetcher(t, fx, nil) // ls-remote timeout: one minute
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() {
		_, _, err := f.Open(ctx, host+"/hang", KindList, "")
		done <- err
	}()
	time.Sleep(500 * time.Millisecond)
	cancel() // the request leaves; the sync goes on for others
	if err := <-done; !errors.Is(err, context.Canceled) {
		t.Errorf("request: %v", err)
	}
	closed := make(chan struct{})
	go func() {
		f.Close()
		close(closed)
	}()
	select {
	case <-closed:
	case <-time.After(30 * time.Second):
		t.Fatal("Close did not stop the hanging sync")
	}
}

// TestKnownHosts: the go command's hard-coded hosting patterns, without
// discovery.
func TestKnownHosts(t *testing.T) {
	fx, _ := smallFixture(t)
	f := newTestFetcher(t, fx, nil)
	for _, c := range []struct{ path, repo, root, err string }{
		{"github.com/user/repo/sub/pkg", "https://github.com/user/repo", "github.com/user/repo", ""},
		{"bitbucket.org/team/repo", "https://bitbucket.org/team/repo", "bitbucket.org/team/repo", ""},
		{"git.apache.org/thrift.git/lib/go", "https://git.apache.org/thrift.git", "git.apache.org/thrift.git", ""},
		{"github.com/user", "", "", "invalid github.com import path"},
		{"github.com/user/repo.git", "", "", "invalid version control suffix"},
		{"chiselapp.com/user/x/repository/y", "", "", "GOVCS disallows using fossil"},
		// The general "path.vcs" form pings the repository: here the test
		// server answers over HTTPS.
		{host + "/repo/lib.git/sub", "https://" + host + "/repo/lib", host + "/repo/lib.git", ""},
	} {
		rr, err := f.repoRootFor(context.Background(), c.path)
		if c.err != "" {
			if err == nil || !strings.Contains(err.Error(), c.err) {
				t.Errorf("%s: got %v, want error %q", c.path, err, c.err)
			}
			continue
		}
		if err != nil {
			t.Errorf("%s: %v", c.path, err)
			continue
		}
		if rr.Repo != c.repo || rr.Root != c.root || rr.VCS != "git" {
			t.Errorf("%s: got %+v", c.path, rr)
		}
	}
}

// TestDiscoveryCredentials: a private host's ?go-get=1 pages need the
// credentials too; they are sent over HTTPS only.
func TestDiscoveryCredentials(t *testing.T) {
	fx, _ := smallFixture(t)
	s := fx.srv
	imp(s, "private/lib", "git", s.RepoURL("https", "lib"), "")
	s.RequireAuthPages(host+"/private", "carol", "pw1")
	netrc := filepath.Join(t.TempDir(), "netrc")
	os.WriteFile(netrc, []byte("machine "+host+" login carol password pw1\n"), 0o600)
	f := newTestFetcher(t, fx, func(c *Config) { c.Netrc = netrc })
	if err := openErr(t, f, host+"/private/lib", KindList, ""); err != nil {
		t.Errorf("with credentials: %v", err)
	}
	f = newTestFetcher(t, fx, nil)
	if err := openErr(t, f, host+"/private/lib", KindList, ""); err == nil || !strings.Contains(err.Error(), "401") {
		t.Errorf("without credentials: %v", err)
	}
	// Plain HTTP (an --insecure path whose HTTPS page failed) never
	// carries them.
	c, _ := parseGOAUTH("netrc", netrc)
	for _, scheme := range []string{"http", "https"} {
		req, _ := http.NewRequest("GET", scheme+"://"+host+"/insecure/lib?go-get=1", nil)
		c.apply(req)
		if got := req.Header.Get("Authorization") != ""; got != (scheme == "https") {
			t.Errorf("%s request carries credentials: %v", scheme, got)
		}
	}
}

// TestGitHardening: the user's git configuration cannot make a direct
// fetch run hooks, LFS (or any) smudge filters or credential helpers.
func TestGitHardening(t *testing.T) {
	fx, _ := smallFixture(t)
	s := fx.srv
	r := s.NewRepo("lfs")
	r.Commit("lfs", map[string]string{
		"go.mod":         "module " + host + "/lfs\n",
		".gitattributes": "*.bin filter=lfs diff=lfs merge=lfs -text\n",
		"a.bin":          "version https://git-lfs.github.com/spec/v1\noid sha256:0\nsize 1\n",
		"x.go":           "package lfs\n",
	})
	r.Tag("v1.0.0", "")
	r.Push()
	imp(s, "lfs", "git", s.RepoURL("https", "lfs"), "")
	p := s.NewRepo("private/h")
	p.Commit("h", map[string]string{"go.mod": "module " + host + "/private/h\n"})
	p.Push()
	s.RequireAuth("private/", "u", "p")
	imp(s, "private/h", "git", s.RepoURL("https", "private/h"), "")

	dir := t.TempDir()
	marker := func(name string) string { return filepath.Join(dir, name) }
	hooks := filepath.Join(dir, "hooks")
	os.MkdirAll(hooks, 0o755)
	for _, h := range []string{"reference-transaction", "post-update", "post-checkout", "pre-auto-gc"} {
		os.WriteFile(filepath.Join(hooks, h), []byte("#!/bin/sh\ntouch "+marker("hook-"+h)+"\n"), 0o755)
	}
	global := filepath.Join(dir, "gitconfig")
	os.WriteFile(global, []byte(`[filter "lfs"]
	smudge = sh -c 'touch `+marker("smudge")+`; cat'
	process = sh -c 'touch `+marker("process")+`; exit 1'
	required = true
[core]
	hooksPath = `+hooks+`
[credential]
	helper = "!touch `+marker("credential")+`; false"
`), 0o600)
	f := newTestFetcher(t, fx, nil)
	t.Setenv("GIT_CONFIG_GLOBAL", global) // after newTestFetcher's default

	zipData, err := readAll(t, f, host+"/lfs", KindZip, "v1.0.0")
	if err != nil {
		t.Fatal(err)
	}
	zr, err := zip.NewReader(bytes.NewReader(zipData), int64(len(zipData)))
	if err != nil {
		t.Fatal(err)
	}
	rc, err := zr.Open(host + "/lfs@v1.0.0/a.bin")
	if err != nil {
		t.Fatal(err)
	}
	content, _ := io.ReadAll(rc)
	rc.Close()
	if !strings.HasPrefix(string(content), "version https://git-lfs.github.com/spec/v1") {
		t.Errorf("a.bin = %q, want the LFS pointer as stored", content)
	}
	if err := openErr(t, f, host+"/private/h", KindList, ""); err == nil {
		t.Error("private repository without credentials answered")
	}
	for _, m := range []string{"smudge", "process", "credential", "hook-reference-transaction", "hook-post-update", "hook-post-checkout", "hook-pre-auto-gc"} {
		if _, err := os.Stat(marker(m)); err == nil {
			t.Errorf("%s ran", m)
		}
	}
}

// TestCredentialsInDiscoveredURL: a go-import page's userinfo opens a
// private repository, is never written to the mirror, and a wrong one is
// an authentication error that does not show it.
func TestCredentialsInDiscoveredURL(t *testing.T) {
	fx, _ := smallFixture(t)
	s := fx.srv
	p := s.NewRepo("private/q")
	p.Commit("q", map[string]string{"go.mod": "module " + host + "/private/q\n", "q.go": "package q\n"})
	p.Tag("v0.1.0", "")
	p.Push()
	s.RequireAuth("private/", "alice", "pw-in-page")
	imp(s, "private/q", "git", "https://alice:pw-in-page@"+host+"/repo/private/q.git", "")
	imp(s, "private/bad", "git", "https://alice:wrong-pw@"+host+"/repo/private/q.git", "")
	dir := t.TempDir()
	f := newTestFetcher(t, fx, func(c *Config) { c.Dir = dir })
	data, err := readAll(t, f, host+"/private/q", KindInfo, "v0.1.0")
	if err != nil {
		t.Fatalf("with the page's credentials: %v", err)
	}
	if strings.Contains(string(data), "pw-in-page") {
		t.Errorf(".info carries the password: %s", data)
	}
	// A fresh Fetcher: a mirror keeps the credentials it was made with.
	f = newTestFetcher(t, fx, func(c *Config) { c.Dir = t.TempDir() })
	err = openErr(t, f, host+"/private/bad", KindInfo, "v0.1.0")
	var ae *AuthError
	if !errors.As(err, &ae) || strings.Contains(err.Error(), "wrong-pw") {
		t.Errorf("wrong credentials in the page: %v", err)
	}
	filepath.WalkDir(dir, func(p string, d os.DirEntry, err error) error {
		if err != nil || d.IsDir() {
			return nil
		}
		b, _ := os.ReadFile(p)
		if bytes.Contains(b, []byte("pw-in-page")) || bytes.Contains(b, []byte("wrong-pw")) {
			t.Errorf("password stored in %s", p)
		}
		return nil
	})
}

// TestOptionLikeRepoURL: a go-import page cannot smuggle an ssh option
// in as the host name of an ssh repository. (git, whose working
// directory is $TMPDIR here, refuses the host; the marker would show a
// git that did not.)
func TestOptionLikeRepoURL(t *testing.T) {
	fx, _ := smallFixture(t)
	tmp := t.TempDir()
	imp(fx.srv, "sshopt", "git", "ssh://-oProxyCommand=touch$IFS"+"pwned/repo/x.git", "")
	f := newTestFetcher(t, fx, func(c *Config) { c.Timeouts.LsRemote = 10 * time.Second })
	t.Setenv("TMPDIR", tmp)
	if err := openErr(t, f, host+"/sshopt", KindList, ""); err == nil || IsNotExist(err) {
		t.Errorf("option-like ssh host: %v, want a failure", err)
	}
	if _, err := os.Stat(filepath.Join(tmp, "pwned")); err == nil {
		t.Fatal("an option-like ssh host ran a command")
	}
}

// TestHangingDiscovery: a ?go-get=1 page that never answers is cut off by
// the discovery timeout, and a request that leaves does not wait for it.
func TestHangingDiscovery(t *testing.T) {
	fx, _ := smallFixture(t)
	f := newTestFetcher(t, fx, func(c *Config) { c.Timeouts.Discovery = 2 * time.Second })
	done := make(chan error, 1)
	go func() { done <- openErr(t, f, testgit.HangHost+"/mod", KindList, "") }()
	select {
	case err := <-done:
		if err == nil || !strings.Contains(err.Error(), "deadline exceeded") {
			t.Errorf("hanging discovery: %v", err)
		}
	case <-time.After(time.Minute):
		t.Fatal("hanging discovery not cut off")
	}

	f = newTestFetcher(t, fx, nil) // discovery timeout: 30s
	ctx, cancel := context.WithTimeout(context.Background(), 300*time.Millisecond)
	defer cancel()
	start := time.Now()
	_, _, err := f.Open(ctx, testgit.HangHost+"/mod", KindList, "")
	if !errors.Is(err, context.DeadlineExceeded) {
		t.Errorf("request that left: %v", err)
	}
	if d := time.Since(start); d > 20*time.Second {
		t.Errorf("a request that left waited %v for discovery", d)
	}
}

// TestCanceledGitIsNotMissing: a git command cut off by its request's
// cancellation or deadline says nothing about the revision or file: not
// "not found" (which would be a 404, or a made-up go.mod).
func TestCanceledGitIsNotMissing(t *testing.T) {
	fx, _ := smallFixture(t)
	imp(fx.srv, "lib", "git", fx.srv.RepoURL("https", "lib"), "")
	f := newTestFetcher(t, fx, nil)
	ctx := context.Background()
	rr, err := f.lookup(ctx, host+"/lib")
	if err != nil {
		t.Fatal(err)
	}
	m := f.mirrorFor(rr.Repo)
	snap, _, err := m.sync(ctx, false)
	if err != nil {
		t.Fatal(err)
	}
	info, err := newView(m, snap).Stat(ctx, "v1.0.0")
	if err != nil {
		t.Fatal(err)
	}
	canceled, cancel := context.WithCancel(ctx)
	cancel()
	for _, rev := range []string{"v1.0.0", info.Name[:12], info.Name} {
		if _, err := newView(m, snap).Stat(canceled, rev); err == nil || IsNotExist(err) {
			t.Errorf("Stat(%s) canceled: %v, want a failure that is not \"not found\"", rev, err)
		}
	}
	v := newView(m, snap)
	v.statCache[info.Name] = statResult{info: info} // the Stat is done; the read is canceled
	if _, err := v.ReadFile(canceled, info.Name, "go.mod", 1<<20); err == nil || IsNotExist(err) {
		t.Errorf("ReadFile canceled: %v, want a failure that is not \"not found\"", err)
	}
}

// TestCanceledCredentialLookup: a request that leaves while a GOAUTH
// command runs does not leave its repository without credentials.
func TestCanceledCredentialLookup(t *testing.T) {
	fx, _ := smallFixture(t)
	s := fx.srv
	privateRepo(s, "slow", "bob", "hunter2")
	script := filepath.Join(t.TempDir(), "auth.sh")
	os.WriteFile(script, []byte("#!/bin/sh\ncase \"$1\" in */repo/*) sleep 1;; esac\nprintf '%s\\n\\nAuthorization: Basic "+base64.StdEncoding.EncodeToString([]byte("bob:hunter2"))+"\\n\\n' \"$1\"\n"), 0o700)
	f := newTestFetcher(t, fx, func(c *Config) { c.GOAUTH = "sh " + script })
	// Discovery is quick; the repository's lookup (slow) is cut off.
	ctx, cancel := context.WithTimeout(context.Background(), 500*time.Millisecond)
	defer cancel()
	if _, _, err := f.Open(ctx, host+"/private/slow", KindInfo, "v0.1.0"); err == nil {
		t.Fatal("a request cut off during the credential lookup answered")
	}
	if err := openErr(t, f, host+"/private/slow", KindInfo, "v0.1.0"); err != nil {
		t.Errorf("after a cut-off credential lookup: %v", err)
	}
}

// TestRotatedCredentials: a long-running proxy sees tokens rotated under
// it. A repository and a go-import page whose password changes under a
// running Fetcher must each be picked up at their first refusal, without
// a restart. The GOAUTH command gives each its own prefix, so that one
// refusal's new lookup cannot refresh the other's credentials.
func TestRotatedCredentials(t *testing.T) {
	fx, _ := smallFixture(t)
	s := fx.srv
	p := privateRepo(s, "rot", "bob", "pw1")
	imp(s, "pages/lib", "git", s.RepoURL("https", "lib"), "")
	s.RequireAuthPages(host+"/pages", "bob", "pw1")
	dir := t.TempDir()
	pwFile := filepath.Join(dir, "pw")
	os.WriteFile(pwFile, []byte("pw1"), 0o600)
	script := filepath.Join(dir, "auth.sh")
	os.WriteFile(script, []byte(`#!/bin/sh
case "$1" in
*/repo/*) prefix=https://`+host+`/repo ;;
*/pages/*) prefix=https://`+host+`/pages ;;
*) exit 0 ;;
esac
printf '%s\n\nAuthorization: Basic %s\n\n' "$prefix" "$(printf 'bob:%s' "$(cat `+pwFile+`)" | base64)"
`), 0o700)
	// Discovery is not remembered, so that the page is asked again.
	f := newTestFetcher(t, fx, func(c *Config) { c.GOAUTH, c.DiscoveryTTL = "sh "+script, time.Nanosecond })
	if _, err := readAll(t, f, host+"/private/rot", KindInfo, "v0.1.0"); err != nil {
		t.Fatalf("before the rotation: %v", err)
	}
	if err := openErr(t, f, host+"/pages/lib", KindList, ""); err != nil {
		t.Fatalf("discovery before the rotation: %v", err)
	}
	// Rotate: the server takes only the new password, the command gives
	// it; the cached credentials still hold the old one. A refusal within
	// credentialRetry of the first lookup is not retried: move the clock.
	p.Tag("v0.2.0", "")
	p.Push()
	s.RequireAuth("private/", "bob", "pw2")
	s.RequireAuthPages(host+"/pages", "bob", "pw2")
	os.WriteFile(pwFile, []byte("pw2"), 0o600)
	f.auth.now = func() time.Time { return time.Now().Add(credentialRetry) }
	data, err := readAll(t, f, host+"/private/rot", KindInfo, "v0.2.0")
	if err != nil {
		t.Fatalf("repository after the rotation: %v", err)
	}
	if !strings.Contains(string(data), "v0.2.0") {
		t.Errorf(".info after the rotation: %s", data)
	}
	if err := openErr(t, f, host+"/pages/lib", KindList, ""); err != nil {
		t.Errorf("discovery after the rotation: %v", err)
	}
}

// TestRefusedCredentialsRateLimited: a wrong password is refused on every
// request, but the GOAUTH command that gave it runs once per URL per
// credentialRetry, not once per request.
func TestRefusedCredentialsRateLimited(t *testing.T) {
	fx, _ := smallFixture(t)
	s := fx.srv
	privateRepo(s, "bad", "bob", "right")
	dir := t.TempDir()
	log := filepath.Join(dir, "runs")
	script := filepath.Join(dir, "auth.sh")
	os.WriteFile(script, []byte("#!/bin/sh\necho \"$1\" >> "+log+"\nprintf '%s\\n\\nAuthorization: Basic "+
		base64.StdEncoding.EncodeToString([]byte("bob:wrong"))+"\\n\\n' \"$1\"\n"), 0o700)
	f := newTestFetcher(t, fx, func(c *Config) { c.GOAUTH = "sh " + script })
	for i := range 5 {
		var ae *AuthError
		if err := openErr(t, f, host+"/private/bad", KindInfo, "v0.1.0"); !errors.As(err, &ae) {
			t.Fatalf("request %d with a wrong password: %v, want an AuthError", i, err)
		}
	}
	runs, _ := os.ReadFile(log)
	perURL := map[string]int{}
	for _, u := range strings.Fields(string(runs)) {
		perURL[u]++
	}
	for u, n := range perURL {
		if n != 1 {
			t.Errorf("GOAUTH command ran %d times for %s in 5 refused requests, want 1", n, u)
		}
	}
	if len(perURL) == 0 {
		t.Error("the GOAUTH command never ran")
	}
}

// TestCredentialTTL: an answer of the GOAUTH methods is used for
// credentialTTL, then looked up again; a removed entry stops being sent.
func TestCredentialTTL(t *testing.T) {
	netrc := filepath.Join(t.TempDir(), "netrc")
	os.WriteFile(netrc, []byte("machine h.example login bob password pw1\n"), 0o600)
	c, err := parseGOAUTH("netrc", netrc)
	if err != nil {
		t.Fatal(err)
	}
	t0 := time.Now()
	now := t0
	c.now = func() time.Time { return now }
	basic := func(pw string) string {
		return "Basic " + base64.StdEncoding.EncodeToString([]byte("bob:"+pw))
	}
	for _, step := range []struct {
		after time.Duration
		netrc string // "" leaves the file as it is
		want  string
	}{
		{0, "", basic("pw1")},
		{time.Minute, "machine h.example login bob password pw2\n", basic("pw1")}, // cached
		{credentialTTL, "", basic("pw2")},                                         // looked up again
		{credentialTTL + time.Minute, "machine other.example login x password y\n", basic("pw2")},
		{2 * credentialTTL, "", ""}, // removed: no longer sent
	} {
		if step.netrc != "" {
			os.WriteFile(netrc, []byte(step.netrc), 0o600)
		}
		now = t0.Add(step.after)
		got := c.headerFor(context.Background(), "https://h.example/repo").Get("Authorization")
		if got != step.want {
			t.Errorf("after %v: Authorization %q, want %q", step.after, got, step.want)
		}
	}
	// A refusal right after a lookup does not run the methods again; one
	// after credentialRetry does.
	now = now.Add(time.Second)
	if c.forget("https://h.example/repo") {
		t.Error("forget within credentialRetry of the lookup allowed a new one")
	}
	now = now.Add(credentialRetry)
	if !c.forget("https://h.example/repo") {
		t.Error("forget after credentialRetry did not allow a new lookup")
	}
}
