package direct

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/base64"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"maps"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"sort"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"golang.org/x/mod/semver"
	"golang.org/x/sync/singleflight"
)

// Git phases, the phase label of modproxy_upstream_phase_seconds for
// upstream "direct" (discovery is timed in discover.go).
const (
	PhaseDiscovery = "discovery"
	PhaseLsRemote  = "ls-remote"
	PhaseFetch     = "fetch"
	PhaseArchive   = "archive"
)

// runner runs hardened git processes, at most cap(sem) at a time.
type runner struct {
	sem      chan struct{}
	timeouts Timeouts
	// base is the Fetcher's context: work shared by several requests
	// runs on it, and Close cancels it and waits (wg).
	base    context.Context
	wg      sync.WaitGroup
	mu      sync.Mutex // orders wg.Add before Close's Wait
	closed  bool
	observe func(ctx context.Context, phase string, d time.Duration)
}

var errClosed = errors.New("direct: fetcher closed")

// track counts one piece of shared work; it fails once Close has begun.
func (r *runner) track() error {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.closed {
		return errClosed
	}
	r.wg.Add(1)
	return nil
}

// close refuses new shared work and waits for the work in flight.
func (r *runner) close() {
	r.mu.Lock()
	r.closed = true
	r.mu.Unlock()
	r.wg.Wait()
}

// detach returns a context with base's cancellation and ctx's values.
func detach(base, ctx context.Context) context.Context {
	return valuesOf{base, ctx}
}

type valuesOf struct {
	context.Context
	values context.Context
}

func (v valuesOf) Value(key any) any { return v.values.Value(key) }

// gitError is a failed git command, with its redacted stderr.
type gitError struct {
	Args   []string
	Stderr string
	Err    error
}

func (e *gitError) Error() string {
	msg := strings.TrimSpace(e.Stderr)
	if i := strings.LastIndex(msg, "\n"); i >= 0 && strings.HasPrefix(msg[i+1:], "fatal:") {
		msg = msg[i+1:] // the fatal line says what went wrong
	}
	if msg == "" {
		msg = e.Err.Error()
	}
	return fmt.Sprintf("git %s: %s", e.subcommand(), redactText(msg))
}

// subcommand is the git command run, past any "-c key=value".
func (e *gitError) subcommand() string {
	for i := 0; i < len(e.Args); i++ {
		if e.Args[i] == "-c" {
			i++
			continue
		}
		return e.Args[i]
	}
	return ""
}

func (e *gitError) Unwrap() error { return e.Err }

// exitCode is the process's exit status, or -1.
func (e *gitError) exitCode() int {
	var ee *exec.ExitError
	if errors.As(e.Err, &ee) {
		return ee.ExitCode()
	}
	return -1
}

// gitCall is one git invocation.
type gitCall struct {
	dir     string // GIT_DIR
	args    []string
	config  []string // key=value pairs passed through GIT_CONFIG_* (never argv)
	allow   string   // GIT_ALLOW_PROTOCOL
	phase   string   // timed phase, "" for local commands
	timeout time.Duration
	stdout  io.Writer // nil: captured and returned
	limit   int64     // captured-output limit (0: 64 MiB)
}

var errOutputTooLarge = errors.New("output too large")

// hardening is the configuration every git process runs with: no hooks,
// no submodules, no LFS filters, no credential helpers of the user's (they
// may prompt), no fsmonitor, no background gc.
var hardening = []string{
	"core.hooksPath=/dev/null",
	"core.fsmonitor=false",
	"core.askPass=",
	"credential.helper=",
	"submodule.recurse=false",
	"fetch.recurseSubmodules=false",
	"filter.lfs.smudge=",
	"filter.lfs.process=",
	"filter.lfs.clean=",
	"filter.lfs.required=false",
	"protocol.version=2",
	"gc.autoDetach=false",
	"uploadpack.allowFilter=false",
}

// gitEnv builds the environment of a git process from ours: prompts and
// askpass programs off, LFS smudge off, the protocol allowlist, and the
// configuration in GIT_CONFIG_* variables so that secrets never appear in
// a process listing's argv.
func gitEnv(c gitCall) []string {
	env := make([]string, 0, len(os.Environ())+16)
	for _, kv := range os.Environ() {
		k, _, _ := strings.Cut(kv, "=")
		switch {
		case k == "GIT_ASKPASS", k == "SSH_ASKPASS", k == "GIT_DIR", k == "GIT_WORK_TREE",
			k == "GIT_ALLOW_PROTOCOL", k == "GIT_TERMINAL_PROMPT", k == "GIT_CONFIG_PARAMETERS",
			k == "GIT_CONFIG_COUNT", strings.HasPrefix(k, "GIT_CONFIG_KEY_"), strings.HasPrefix(k, "GIT_CONFIG_VALUE_"),
			k == "GIT_LFS_SKIP_SMUDGE", k == "GIT_TRACE",
			k == "GIT_TRACE_CURL", k == "GIT_CURL_VERBOSE", k == "GIT_TRACE_PACKET":
			continue // ours, or would print credentials
		}
		env = append(env, kv)
	}
	if c.dir != "" {
		env = append(env, "GIT_DIR="+c.dir)
	}
	env = append(env,
		"GIT_TERMINAL_PROMPT=0",
		"GIT_LFS_SKIP_SMUDGE=1",
		"GIT_ALLOW_PROTOCOL="+c.allow,
		"GCM_INTERACTIVE=never",
	)
	if os.Getenv("GIT_SSH_COMMAND") == "" && os.Getenv("GIT_SSH") == "" {
		// The user's ssh configuration applies; only prompting is off.
		env = append(env, "GIT_SSH_COMMAND=ssh -o BatchMode=yes")
	}
	cfg := append(slices.Clone(hardening), c.config...)
	env = append(env, "GIT_CONFIG_COUNT="+strconv.Itoa(len(cfg)))
	for i, kv := range cfg {
		k, v, _ := strings.Cut(kv, "=")
		env = append(env, fmt.Sprintf("GIT_CONFIG_KEY_%d=%s", i, k), fmt.Sprintf("GIT_CONFIG_VALUE_%d=%s", i, v))
	}
	return env
}

// run runs one git command, bounded by the process semaphore and its
// timeout; on cancellation the whole process group (git and its remote
// helpers) is killed.
func (r *runner) run(ctx context.Context, c gitCall) ([]byte, error) {
	select {
	case r.sem <- struct{}{}:
	case <-ctx.Done():
		return nil, ctx.Err()
	}
	defer func() { <-r.sem }()
	if c.timeout > 0 {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, c.timeout)
		defer cancel()
	}
	cmd := exec.CommandContext(ctx, "git", c.args...)
	cmd.Env = gitEnv(c)
	cmd.Dir = os.TempDir()
	if c.dir != "" {
		cmd.Dir = c.dir
	}
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	cmd.Cancel = func() error {
		if cmd.Process != nil {
			syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL)
		}
		return nil
	}
	cmd.WaitDelay = 5 * time.Second
	var stderr bytes.Buffer
	cmd.Stderr = &limitWriter{w: &stderr, n: 64 << 10}
	limit := c.limit
	if limit <= 0 {
		limit = 64 << 20
	}
	var out bytes.Buffer
	lw := &limitWriter{w: &out, n: limit}
	if c.stdout != nil {
		lw.w = c.stdout
	}
	cmd.Stdout = lw
	start := time.Now()
	err := cmd.Run()
	if c.phase != "" && r.observe != nil {
		r.observe(ctx, c.phase, time.Since(start))
	}
	if lw.over {
		return nil, &gitError{Args: c.args, Err: errOutputTooLarge}
	}
	if err != nil {
		if ctx.Err() != nil {
			err = fmt.Errorf("%s: %w", c.phase, ctx.Err())
			if c.phase == "" {
				err = ctx.Err()
			}
		}
		return nil, &gitError{Args: c.args, Stderr: stderr.String(), Err: err}
	}
	return out.Bytes(), nil
}

// limitWriter writes at most n bytes to w and then fails.
type limitWriter struct {
	w    io.Writer
	n    int64
	over bool
}

func (l *limitWriter) Write(p []byte) (int, error) {
	if int64(len(p)) > l.n {
		l.over = true
		return 0, errOutputTooLarge
	}
	l.n -= int64(len(p))
	return l.w.Write(p)
}

// mirror is the bare mirror of one remote git repository. Its refs follow
// the remote's branches and tags; a sync is shared by every request that
// arrives while it runs.
type mirror struct {
	r      *runner
	remote string // URL without credentials
	dir    string // GIT_DIR
	allow  string // GIT_ALLOW_PROTOCOL
	// auth returns the credentials (URL-scoped extra headers) for a sync;
	// forget reports that the remote refused them and whether auth will
	// look them up again (see credentials.forget).
	auth   func(context.Context) []string
	forget func() bool
	ttl    time.Duration

	flight  singleflight.Group
	fetchMu sync.Mutex // one git process at a time writes the mirror
	mu      sync.Mutex // guards last
	last    *snapshot
}

// snapshot is the remote's refs as of one ls-remote, with the mirror
// updated to hold every commit they name.
type snapshot struct {
	at     time.Time
	refs   map[string]string // HEAD, refs/heads/*, refs/tags/* -> commit (tags peeled)
	sha256 bool
}

// sync lists the remote's refs and fetches into the mirror what it lacks.
// Unless force is set, a sync younger than the mirror's ttl is reused
// (reused reports it): the .info, .mod and .zip requests of one version
// arrive together.
func (m *mirror) sync(ctx context.Context, force bool) (_ *snapshot, reused bool, _ error) {
	m.mu.Lock()
	if s := m.last; !force && s != nil && m.ttl > 0 && time.Since(s.at) < m.ttl {
		m.mu.Unlock()
		return s, true, nil
	}
	m.mu.Unlock()
	ch := m.flight.DoChan("sync", func() (any, error) {
		// Detached from the first caller (others wait for the same
		// sync), bounded by the Fetcher's life and the phase timeouts.
		if err := m.r.track(); err != nil {
			return nil, err
		}
		defer m.r.wg.Done()
		sctx, cancel := context.WithTimeout(detach(m.r.base, ctx), m.r.timeouts.LsRemote+m.r.timeouts.Fetch)
		defer cancel()
		s, err := m.doSync(sctx)
		if err != nil {
			return nil, err
		}
		m.mu.Lock()
		m.last = s
		m.mu.Unlock()
		return s, nil
	})
	select {
	case res := <-ch:
		if res.Err != nil {
			return nil, false, res.Err
		}
		return res.Val.(*snapshot), false, nil
	case <-ctx.Done():
		return nil, false, ctx.Err()
	}
}

// credentials returns the git configuration carrying the remote's
// credentials. They are looked up for every use (and cached for
// credentialTTL), so that a rotated token reaches a mirror that lives as
// long as the process. A lookup cut off by ctx is an error: git must not
// go on without credentials.
func (m *mirror) credentials(ctx context.Context) ([]string, error) {
	config := m.auth(ctx)
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	return config, nil
}

func (m *mirror) doSync(ctx context.Context) (*snapshot, error) {
	config, err := m.credentials(ctx)
	if err != nil {
		return nil, err
	}
	lsRemote := func() ([]byte, error) {
		out, err := m.r.run(ctx, gitCall{
			args: []string{"ls-remote", "-q", "--end-of-options", m.remote}, config: config,
			allow: m.allow, phase: PhaseLsRemote, timeout: m.r.timeouts.LsRemote,
		})
		if err != nil {
			return nil, m.remoteError(err)
		}
		return out, nil
	}
	out, err := lsRemote()
	var ae *AuthError
	if errors.As(err, &ae) && m.forget() {
		// Refused: the credentials may have been rotated since they
		// were looked up. Look them up again once.
		if config, err = m.credentials(ctx); err == nil {
			out, err = lsRemote()
		}
	}
	if err != nil {
		return nil, err
	}
	raw := map[string]string{}
	refs := map[string]string{}
	for line := range strings.SplitSeq(string(out), "\n") {
		f := strings.Fields(line)
		if len(f) != 2 {
			continue
		}
		if f[1] == "HEAD" || strings.HasPrefix(f[1], "refs/heads/") || strings.HasPrefix(f[1], "refs/tags/") {
			refs[f[1]] = f[0]
			if !strings.HasSuffix(f[1], "^{}") && f[1] != "HEAD" {
				raw[f[1]] = f[0]
			}
		}
	}
	for ref, hash := range refs {
		if k, ok := strings.CutSuffix(ref, "^{}"); ok {
			refs[k] = hash
			delete(refs, ref)
		}
	}
	s := &snapshot{at: time.Now(), refs: refs}
	for _, h := range refs {
		s.sha256 = len(h) == 64
		break
	}
	if len(raw) == 0 {
		return s, nil // an empty repository: nothing to fetch
	}
	m.fetchMu.Lock()
	defer m.fetchMu.Unlock()
	if err := m.fetchLocked(ctx, raw, s.sha256, config); err != nil {
		if _, lerr := m.localRefs(ctx); lerr == nil || ctx.Err() != nil {
			return nil, m.remoteError(err) // the remote failed, not the mirror
		}
		// A damaged mirror is rebuilt once from scratch.
		if rerr := os.RemoveAll(m.dir); rerr != nil {
			return nil, err
		}
		if err2 := m.fetchLocked(ctx, raw, s.sha256, config); err2 != nil {
			return nil, m.remoteError(err2)
		}
	}
	return s, nil
}

// fetchLocked makes the mirror's refs equal to raw (unpeeled), cloning
// on first use and fetching incrementally after, with the credentials in
// config.
func (m *mirror) fetchLocked(ctx context.Context, raw map[string]string, sha256 bool, config []string) error {
	if _, err := os.Stat(filepath.Join(m.dir, readyMarker)); err != nil {
		if err := m.init(ctx, sha256); err != nil {
			return err
		}
	} else if local, err := m.localRefs(ctx); err == nil && maps.Equal(local, raw) {
		return nil
	}
	// This process owns the directory (Fetcher's lock) and fetchMu
	// serializes its writers: any git lock file here was left by a git
	// killed midway, and would fail every later fetch.
	clearStaleLocks(m.dir)
	_, err := m.r.run(ctx, gitCall{
		dir: m.dir, config: config, allow: m.allow, phase: PhaseFetch, timeout: m.r.timeouts.Fetch,
		args: []string{"fetch", "-f", "--prune", "--no-tags", "--no-recurse-submodules", "--no-write-fetch-head",
			"--end-of-options", "origin", "refs/heads/*:refs/heads/*", "refs/tags/*:refs/tags/*"},
	})
	// If the remote moved between ls-remote and fetch, commits named by
	// the snapshot may be missing; a request says so (unknown revision)
	// and the next sync catches up.
	return err
}

func (m *mirror) init(ctx context.Context, sha256 bool) error {
	os.RemoveAll(m.dir)
	if err := os.MkdirAll(m.dir, 0o700); err != nil {
		return fmt.Errorf("create mirror: %w", err)
	}
	format := "--object-format=sha1"
	if sha256 {
		format = "--object-format=sha256"
	}
	if _, err := m.r.run(ctx, gitCall{dir: m.dir, allow: m.allow, args: []string{"init", "--bare", "-q", format}}); err != nil {
		os.RemoveAll(m.dir)
		return err
	}
	if _, err := m.r.run(ctx, gitCall{dir: m.dir, allow: m.allow, args: []string{"remote", "add", "origin", "--", m.remote}}); err != nil {
		os.RemoveAll(m.dir)
		return err
	}
	// As the go command does: archives must not depend on the
	// repository's export-subst/export-ignore attributes.
	if err := os.MkdirAll(filepath.Join(m.dir, "info"), 0o700); err != nil {
		return err
	}
	if err := os.WriteFile(filepath.Join(m.dir, "info", "attributes"), []byte("\n* -export-subst -export-ignore\n"), 0o600); err != nil {
		return err
	}
	// Written last: a mirror without it (a crash midway) is made anew.
	return os.WriteFile(filepath.Join(m.dir, readyMarker), nil, 0o600)
}

// readyMarker marks a mirror whose initialisation completed.
const readyMarker = "modproxy-mirror"

// clearStaleLocks removes git's *.lock files outside objects/.
func clearStaleLocks(dir string) {
	filepath.WalkDir(dir, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return nil
		}
		if d.IsDir() && p == filepath.Join(dir, "objects") {
			return filepath.SkipDir
		}
		if !d.IsDir() && strings.HasSuffix(p, ".lock") {
			os.Remove(p)
		}
		return nil
	})
}

func (m *mirror) localRefs(ctx context.Context) (map[string]string, error) {
	out, err := m.r.run(ctx, gitCall{dir: m.dir, allow: m.allow, args: []string{"for-each-ref", "--format=%(objectname) %(refname)", "refs/heads/", "refs/tags/"}})
	if err != nil {
		return nil, err
	}
	refs := map[string]string{}
	for line := range strings.SplitSeq(string(out), "\n") {
		if h, ref, ok := strings.Cut(line, " "); ok {
			refs[ref] = h
		}
	}
	return refs, nil
}

// remoteError classifies a failure to reach the remote: a repository that
// does not exist or refuses us is "not found" (the go command's
// notExistError), with a clear word about credentials.
func (m *mirror) remoteError(err error) error {
	var ge *gitError
	if !errors.As(err, &ge) {
		return err
	}
	s := ge.Stderr
	switch {
	case strings.Contains(s, "could not read Username"), strings.Contains(s, "Authentication failed"),
		strings.Contains(s, "could not read Password"), strings.Contains(s, "The requested URL returned error: 401"),
		strings.Contains(s, "The requested URL returned error: 403"):
		return &AuthError{URL: redactURL(m.remote), Err: err}
	case strings.Contains(s, "not found"), strings.Contains(s, "does not appear to be a git repository"),
		strings.Contains(s, "The requested URL returned error: 404"), strings.Contains(s, "Repository not found"):
		return notExist(fmt.Errorf("repository %s: %w", redactURL(m.remote), err))
	}
	return err
}

// AuthError is a repository that refused the credentials modproxy has
// (or has none for it).
type AuthError struct {
	URL string
	Err error
}

func (e *AuthError) Error() string {
	return fmt.Sprintf("authentication failed for %s (credentials come from --netrc / --goauth): %v", e.URL, e.Err)
}
func (e *AuthError) Unwrap() error { return e.Err }

// view is one request's look at a mirror: the refs of one sync, with
// per-request caches. It implements the go command's codehost.Repo
// operations for git over the local mirror.
type view struct {
	m    *mirror
	snap *snapshot

	statMu    sync.Mutex // guards statCache and files
	statCache map[string]statResult
	// files caches ReadFile by commit, file and limit: one request
	// reads a version's go.mod more than once.
	files map[string]fileResult
}

type fileResult struct {
	data []byte
	err  error
}

type statResult struct {
	info *hostRev
	err  error
}

func newView(m *mirror, s *snapshot) *view {
	return &view{m: m, snap: s, statCache: map[string]statResult{}, files: map[string]fileResult{}}
}

// git runs a local (untimed) git command in the mirror.
func (v *view) git(ctx context.Context, args ...string) ([]byte, error) {
	return v.m.r.run(ctx, gitCall{dir: v.m.dir, allow: v.m.allow, args: args})
}

func (v *view) hexHashLen() int {
	if v.snap.sha256 {
		return 64
	}
	return 40
}

func (v *view) shorten(hash string) string {
	if allHex(hash) && len(hash) == v.hexHashLen() {
		return hash[:12]
	}
	return hash
}

// Tags lists the tags with prefix, with the go command's TagSum.
func (v *view) Tags(ctx context.Context, prefix string) (*Tags, error) {
	tags := &Tags{Origin: &Origin{VCS: "git", URL: v.m.remote, TagPrefix: prefix}, List: []Tag{}}
	for ref, hash := range v.snap.refs {
		tag, ok := strings.CutPrefix(ref, "refs/tags/")
		if !ok || !strings.HasPrefix(tag, prefix) {
			continue
		}
		tags.List = append(tags.List, Tag{tag, hash})
	}
	sort.Slice(tags.List, func(i, j int) bool { return tags.List[i].Name < tags.List[j].Name })
	dir := prefix[:strings.LastIndex(prefix, "/")+1]
	h := sha256.New()
	for _, tag := range tags.List {
		if isOriginTag(strings.TrimPrefix(tag.Name, dir)) {
			fmt.Fprintf(h, "%q %s\n", tag.Name, tag.Hash)
		}
	}
	tags.Origin.TagSum = "t1:" + base64.StdEncoding.EncodeToString(h.Sum(nil))
	return tags, nil
}

func (v *view) repoSum() string {
	list := make([]string, 0, len(v.snap.refs))
	for ref := range v.snap.refs {
		list = append(list, ref)
	}
	sort.Strings(list)
	h := sha256.New()
	for _, ref := range list {
		fmt.Fprintf(h, "%q %s\n", ref, v.snap.refs[ref])
	}
	return "r1:" + base64.StdEncoding.EncodeToString(h.Sum(nil))
}

func (v *view) unknownRevisionInfo() *hostRev {
	return &hostRev{Origin: &Origin{VCS: "git", URL: v.m.remote, RepoSum: v.repoSum()}}
}

// Latest is the commit of the remote's HEAD.
func (v *view) Latest(ctx context.Context) (*hostRev, error) {
	head := v.snap.refs["HEAD"]
	if head == "" {
		return nil, errNoCommits
	}
	st, err := v.Stat(ctx, head)
	if err != nil {
		return nil, err
	}
	info := *st
	o := Origin{}
	if st.Origin != nil {
		o = *st.Origin
	}
	o.Ref, o.Hash = "HEAD", head
	info.Origin = &o
	return &info, nil
}

const minHashDigits = 7

// Stat resolves rev as the go command's gitRepo.stat does: a tag, a
// branch, HEAD, or a hash (prefix) of a commit the mirror holds. Only
// commits reachable from branches and tags are ever fetched.
func (v *view) Stat(ctx context.Context, rev string) (*hostRev, error) {
	if rev == "latest" {
		return v.Latest(ctx)
	}
	v.statMu.Lock()
	if r, ok := v.statCache[rev]; ok {
		v.statMu.Unlock()
		return r.info, r.err
	}
	v.statMu.Unlock()
	info, err := v.stat(ctx, rev)
	v.statMu.Lock()
	v.statCache[rev] = statResult{info, err}
	v.statMu.Unlock()
	return info, err
}

func (v *view) stat(ctx context.Context, rev string) (info *hostRev, err error) {
	refs := v.snap.refs
	var ref, hash string
	switch {
	case refs["refs/tags/"+rev] != "":
		ref = "refs/tags/" + rev
		hash = refs[ref]
	case refs["refs/heads/"+rev] != "":
		ref = "refs/heads/" + rev
		hash = refs[ref]
		rev = hash
	case rev == "HEAD" && refs["HEAD"] != "":
		ref = "HEAD"
		hash = refs[ref]
		rev = hash
	case len(rev) >= minHashDigits && len(rev) <= v.hexHashLen() && allHex(rev):
		prefix := rev
		for k, h := range refs {
			if strings.HasPrefix(h, prefix) {
				if hash != "" && hash != h {
					return nil, fmt.Errorf("ambiguous revision %s", rev)
				}
				if ref == "" || ref > k {
					ref = k
				}
				rev = h
				hash = h
			}
		}
		if hash == "" && len(rev) == v.hexHashLen() {
			hash = rev
		}
		if ref == "HEAD" {
			// The go command fetches such a commit by hash, not by HEAD,
			// and so records no ref for it.
			ref = hash
		}
	default:
		return v.unknownRevisionInfo(), &UnknownRevisionError{Rev: rev}
	}
	defer func() {
		if info != nil {
			info.Origin.Hash = info.Name
			if ref != info.Origin.Hash {
				info.Origin.Ref = ref
			}
		}
	}()
	if hash == "" {
		out, err := v.git(ctx, "rev-parse", "--verify", "--quiet", "--end-of-options", rev+"^{commit}")
		if err != nil && ctx.Err() != nil {
			return nil, err // canceled: no word on rev
		}
		if err != nil {
			return v.unknownRevisionInfo(), &UnknownRevisionError{Rev: rev}
		}
		hash = strings.TrimSpace(string(out))
	}
	if ref == "" {
		// A hash no branch or tag names: it exists only if a branch or
		// tag reaches it. The mirror may still hold commits the remote
		// dropped, which the go command's fresh clone would not have.
		out, err := v.git(ctx, "for-each-ref", "--count=1", "--format=%(refname)", "--contains="+hash, "refs/heads/", "refs/tags/")
		if err != nil && ctx.Err() != nil {
			return nil, err
		}
		if err != nil || strings.TrimSpace(string(out)) == "" {
			return v.unknownRevisionInfo(), &UnknownRevisionError{Rev: rev}
		}
	}
	return v.statLocal(ctx, rev, hash)
}

// statLocal describes rev in the mirror; version becomes info.Version
// when it is one of the commit's tags.
func (v *view) statLocal(ctx context.Context, version, rev string) (*hostRev, error) {
	out, err := v.git(ctx, "-c", "log.showsignature=false", "log", "--no-decorate", "-n1", "--format=format:%H %ct %D", "--end-of-options", rev, "--")
	if err != nil && ctx.Err() != nil {
		return nil, err
	}
	if err != nil {
		return v.unknownRevisionInfo(), &UnknownRevisionError{Rev: rev}
	}
	f := strings.Fields(string(out))
	if len(f) < 2 {
		return nil, fmt.Errorf("unexpected response from git log: %q", out)
	}
	hash := f[0]
	if strings.HasPrefix(hash, version) {
		version = hash
	}
	t, err := strconv.ParseInt(f[1], 10, 64)
	if err != nil {
		return nil, fmt.Errorf("invalid time from git log: %q", out)
	}
	info := &hostRev{
		Origin:  &Origin{VCS: "git", URL: v.m.remote, Hash: hash},
		Name:    hash,
		Short:   v.shorten(hash),
		Time:    time.Unix(t, 0).UTC(),
		Version: hash,
	}
	if !strings.HasPrefix(hash, rev) {
		info.Origin.Ref = rev
	}
	// Tags come from the remote's refs, as the go command's do: the
	// mirror's decorations would add nothing the snapshot lacks.
	for ref, h := range v.snap.refs {
		if h == hash {
			if tag, ok := strings.CutPrefix(ref, "refs/tags/"); ok {
				info.Tags = append(info.Tags, tag)
			}
		}
	}
	slices.Sort(info.Tags)
	info.Tags = slices.Compact(info.Tags)
	for _, tag := range info.Tags {
		if version == tag {
			info.Version = version
		}
	}
	return info, nil
}

// ReadFile reads file at rev; a missing file is fs.ErrNotExist.
func (v *view) ReadFile(ctx context.Context, rev, file string, maxSize int64) ([]byte, error) {
	info, err := v.Stat(ctx, rev)
	if err != nil {
		return nil, err
	}
	key := info.Name + ":" + file + "\x00" + strconv.FormatInt(maxSize, 10)
	v.statMu.Lock()
	r, ok := v.files[key]
	v.statMu.Unlock()
	if !ok {
		r.data, r.err = v.readFile(ctx, info.Name, file, maxSize)
		if ctx.Err() != nil {
			return r.data, r.err // a canceled read says nothing of the file
		}
		v.statMu.Lock()
		v.files[key] = r
		v.statMu.Unlock()
	}
	return bytes.Clone(r.data), r.err
}

func (v *view) readFile(ctx context.Context, hash, file string, maxSize int64) ([]byte, error) {
	out, err := v.m.r.run(ctx, gitCall{dir: v.m.dir, allow: v.m.allow, args: []string{"cat-file", "--end-of-options", "blob", hash + ":" + file}, limit: maxSize})
	if err != nil {
		if errors.Is(err, errOutputTooLarge) {
			return nil, fmt.Errorf("%s at %s is larger than %d bytes", file, hash, maxSize)
		}
		if ctx.Err() != nil {
			return nil, err // canceled: no word on the file
		}
		return nil, fs.ErrNotExist
	}
	return out, nil
}

// RecentTag is the highest allowed tag with prefix on rev or its
// ancestors. The mirror holds full history, so the answer is definitive.
func (v *view) RecentTag(ctx context.Context, rev, prefix string, allowed func(tag string) bool) (string, error) {
	info, err := v.Stat(ctx, rev)
	if err != nil {
		return "", err
	}
	out, err := v.git(ctx, "for-each-ref", "--format=%(refname)", "--merged="+info.Name)
	if err != nil {
		return "", err
	}
	var highest string
	for line := range strings.SplitSeq(string(out), "\n") {
		line = strings.TrimSpace(line)
		tag, ok := strings.CutPrefix(line, "refs/tags/")
		if !ok || !strings.HasPrefix(tag, prefix) || !allowed(tag) {
			continue
		}
		// Only tags the remote has count (the snapshot is the truth).
		if v.snap.refs["refs/tags/"+tag] == "" {
			continue
		}
		semtag := tag[len(prefix):]
		if semver.Compare(semtag, highest) > 0 {
			highest = semtag
		}
	}
	if highest == "" {
		return "", nil
	}
	return prefix + highest, nil
}

// DescendsFrom reports whether rev has tag among its ancestors.
func (v *view) DescendsFrom(ctx context.Context, rev, tag string) (bool, error) {
	if v.snap.refs["refs/tags/"+tag] == "" {
		return false, nil
	}
	_, err := v.git(ctx, "merge-base", "--is-ancestor", "--", "refs/tags/"+tag, rev)
	if err == nil {
		return true, nil
	}
	var ge *gitError
	if errors.As(err, &ge) && ge.exitCode() == 1 {
		return false, nil
	}
	return false, err
}

// ReadZip writes git's archive of subdir at rev into a new temporary file
// in tmpDir and returns it, positioned at the start.
func (v *view) ReadZip(ctx context.Context, rev, subdir, tmpDir string, maxSize int64) (*os.File, int64, error) {
	info, err := v.Stat(ctx, rev)
	if err != nil {
		return nil, 0, err
	}
	f, err := os.CreateTemp(tmpDir, "modproxy-git-archive-*")
	if err != nil {
		return nil, 0, fmt.Errorf("archive spool: %w", err)
	}
	os.Remove(f.Name()) // the descriptor is enough
	args := []string{"-c", "core.autocrlf=input", "-c", "core.eol=lf", "archive", "--format=zip", "--prefix=prefix/", "--end-of-options", info.Name}
	if subdir != "" {
		args = append(args, subdir)
	}
	_, err = v.m.r.run(ctx, gitCall{dir: v.m.dir, allow: v.m.allow, args: args, phase: PhaseArchive, timeout: v.m.r.timeouts.Archive, stdout: f, limit: maxSize})
	if err != nil {
		f.Close()
		var ge *gitError
		if errors.As(err, &ge) && strings.Contains(ge.Stderr, "did not match any files") {
			return nil, 0, fs.ErrNotExist
		}
		if errors.Is(err, errOutputTooLarge) {
			return nil, 0, errors.New("downloaded zip file too large")
		}
		return nil, 0, err
	}
	size, err := f.Seek(0, io.SeekCurrent)
	if err == nil {
		_, err = f.Seek(0, io.SeekStart)
	}
	if err != nil {
		f.Close()
		return nil, 0, err
	}
	return f, size, nil
}

func allHex(rev string) bool {
	for i := 0; i < len(rev); i++ {
		c := rev[i]
		if '0' <= c && c <= '9' || 'a' <= c && c <= 'f' {
			continue
		}
		return false
	}
	return true
}

// mirrorDir names a remote's mirror by a hash of its URL, so that no
// remote-chosen name reaches the file system.
func mirrorDir(root, remote string) string {
	sum := sha256.Sum256([]byte("git3:" + remote))
	return filepath.Join(root, hex.EncodeToString(sum[:16]))
}
