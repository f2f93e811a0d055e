package direct

import (
	"bytes"
	"context"
	"crypto/tls"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"log/slog"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"sync"
	"syscall"
	"time"

	"golang.org/x/mod/module"
	"golang.org/x/sync/singleflight"
)

// Timeouts bound each phase of a direct fetch.
type Timeouts struct {
	Discovery time.Duration // known-host match or ?go-get=1 discovery (default 30s)
	LsRemote  time.Duration // git ls-remote (default 1m)
	Fetch     time.Duration // git clone or incremental fetch (default 10m)
	Archive   time.Duration // git archive of one version (default 5m)
}

// Config configures a Fetcher.
type Config struct {
	// Dir holds one bare mirror per repository (required).
	Dir string
	// Client sends discovery (?go-get=1) and "mod" proxy requests. It
	// should honour the environment's HTTP proxy settings, as the go
	// command does. For --insecure paths a copy of its *http.Transport
	// skips certificate verification, as the go command's does.
	Client *http.Client
	// Insecure is GOINSECURE syntax: module path patterns whose discovery
	// may fall back to plain HTTP and whose repositories may use http://.
	Insecure string
	// GOVCS is the go command's GOVCS setting; its defaults (private:all,
	// public:git|hg) are always appended. Only git is spoken.
	GOVCS string
	// Private is GOPRIVATE syntax, for GOVCS's private/public rules.
	Private string
	// GOAUTH is the go command's GOAUTH syntax ("" means netrc); Netrc the
	// netrc file of its netrc method ("" means $NETRC or ~/.netrc).
	GOAUTH string
	Netrc  string
	// MaxGitProcs bounds concurrent git processes (default 2×CPUs, ≥ 4).
	MaxGitProcs int
	Timeouts    Timeouts
	// RefsTTL is how long one ls-remote answer is reused (default 2s):
	// the go command's .info, .mod, .zip of one version share it.
	RefsTTL time.Duration
	// DiscoveryTTL is how long a discovered repository is remembered
	// (default 5m).
	DiscoveryTTL time.Duration
	// TempDir holds archives while they are rewritten (default os.TempDir()).
	TempDir string
	// Observe receives the duration of each phase (PhaseDiscovery,
	// PhaseLsRemote, PhaseFetch, PhaseArchive) with the request kind that
	// caused it; nil discards.
	Observe func(kind, phase string, d time.Duration)
	Logger  *slog.Logger
}

// Fetcher answers the GOPROXY protocol's requests from version control,
// as the go command's GOPROXY=direct does.
type Fetcher struct {
	cfg            Config
	insecureClient *http.Client
	govcs          VCSPolicy
	auth           *credentials
	run            *runner

	rootFlight singleflight.Group
	rootsMu    sync.Mutex
	roots      map[string]rootEntry

	mirrorsMu sync.Mutex
	mirrors   map[string]*mirror

	lock   *os.File // flock on Config.Dir: one process per repository directory
	cancel context.CancelFunc
	once   sync.Once
}

// lockDir takes an exclusive lock on dir, so that no other process writes
// its mirrors.
func lockDir(dir string) (*os.File, error) {
	f, err := os.OpenFile(filepath.Join(dir, ".lock"), os.O_CREATE|os.O_RDWR, 0o600)
	if err != nil {
		return nil, fmt.Errorf("direct: lock repository directory: %w", err)
	}
	if err := syscall.Flock(int(f.Fd()), syscall.LOCK_EX|syscall.LOCK_NB); err != nil {
		f.Close()
		return nil, fmt.Errorf("direct: repository directory %s is in use by another process: %w", dir, err)
	}
	return f, nil
}

// Close stops shared work in flight (killing its git processes), waits
// for it and releases the repository directory.
func (f *Fetcher) Close() error {
	var err error
	f.once.Do(func() {
		f.cancel()
		f.run.close()
		err = f.lock.Close()
	})
	return err
}

// New checks cfg and returns a Fetcher.
func New(cfg Config) (*Fetcher, error) {
	if cfg.Dir == "" {
		return nil, errors.New("direct: no repository directory")
	}
	if _, err := exec.LookPath("git"); err != nil {
		return nil, fmt.Errorf("direct: git is needed to fetch from version control: %w", err)
	}
	if err := os.MkdirAll(cfg.Dir, 0o700); err != nil {
		return nil, fmt.Errorf("direct: repository directory: %w", err)
	}
	lock, err := lockDir(cfg.Dir)
	if err != nil {
		return nil, err
	}
	govcs, err := ParseGOVCS(cfg.GOVCS)
	if err != nil {
		return nil, fmt.Errorf("direct: %w", err)
	}
	netrc := cfg.Netrc
	if netrc == "" {
		netrc = defaultNetrc()
	}
	auth, err := parseGOAUTH(cfg.GOAUTH, netrc)
	if err != nil {
		return nil, fmt.Errorf("direct: %w", err)
	}
	if cfg.Client == nil {
		cfg.Client = &http.Client{Transport: &http.Transport{Proxy: http.ProxyFromEnvironment}}
	}
	if cfg.MaxGitProcs <= 0 {
		cfg.MaxGitProcs = max(4, 2*runtime.NumCPU())
	}
	t := &cfg.Timeouts
	def := func(d *time.Duration, v time.Duration) {
		if *d <= 0 {
			*d = v
		}
	}
	def(&t.Discovery, 30*time.Second)
	def(&t.LsRemote, time.Minute)
	def(&t.Fetch, 10*time.Minute)
	def(&t.Archive, 5*time.Minute)
	if cfg.RefsTTL == 0 {
		cfg.RefsTTL = 2 * time.Second
	}
	def(&cfg.DiscoveryTTL, 5*time.Minute)
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	f := &Fetcher{
		cfg: cfg, govcs: govcs, auth: auth, lock: lock,
		roots:   map[string]rootEntry{},
		mirrors: map[string]*mirror{},
	}
	f.insecureClient = cfg.Client
	if tr, ok := cfg.Client.Transport.(*http.Transport); ok {
		tr = tr.Clone()
		if tr.TLSClientConfig == nil {
			tr.TLSClientConfig = &tls.Config{}
		}
		tr.TLSClientConfig.InsecureSkipVerify = true
		c := *cfg.Client
		c.Transport = tr
		f.insecureClient = &c
	}
	base, cancel := context.WithCancel(context.Background())
	f.cancel = cancel
	f.run = &runner{sem: make(chan struct{}, cfg.MaxGitProcs), timeouts: cfg.Timeouts, observe: f.observe, base: base}
	return f, nil
}

type kindKey struct{}

func (f *Fetcher) observe(ctx context.Context, phase string, d time.Duration) {
	if f.cfg.Observe != nil {
		kind, _ := ctx.Value(kindKey{}).(string)
		f.cfg.Observe(kind, phase, d)
	}
}

// mirrorFor returns the mirror of repo (created on first use). Plain
// HTTP is allowed only for an http:// repository, which discovery
// accepts only for --insecure paths; redirects to it are refused
// otherwise.
func (f *Fetcher) mirrorFor(repo string) *mirror {
	clean := redactURL(repo)
	f.mirrorsMu.Lock()
	defer f.mirrorsMu.Unlock()
	if m := f.mirrors[clean]; m != nil {
		return m
	}
	allow := "https:ssh"
	if strings.HasPrefix(clean, "http://") {
		allow = "https:ssh:http"
	}
	m := &mirror{
		r: f.run, remote: clean, dir: mirrorDir(f.cfg.Dir, clean), allow: allow,
		ttl:    f.cfg.RefsTTL,
		auth:   func(ctx context.Context) []string { return f.auth.gitAuthConfig(ctx, repo) },
		forget: func() bool { return f.auth.forgetRepo(repo) },
	}
	f.mirrors[clean] = m
	return m
}

// Request kinds, as the GOPROXY protocol names them.
const (
	KindList   = "list"
	KindInfo   = "info"
	KindMod    = "mod"
	KindZip    = "zip"
	KindLatest = "latest"
)

// Open answers one GOPROXY protocol request for module path: kind is
// list, latest, info, mod or zip; version is a version or, for info, any
// query the go command's Repo.Stat accepts (a branch, a commit hash).
// Errors for which errors.Is(err, fs.ErrNotExist) holds mean "not here":
// no such module, version or revision.
func (f *Fetcher) Open(ctx context.Context, path, kind, version string) (io.ReadCloser, int64, error) {
	if err := module.CheckPath(path); err != nil {
		return nil, 0, notExist(err)
	}
	ctx = context.WithValue(ctx, kindKey{}, kind)
	rr, err := f.lookup(ctx, path)
	if err != nil {
		return nil, 0, err
	}
	if rr.VCS == "mod" {
		return f.openProxy(ctx, rr.Repo, path, kind, version)
	}
	m := f.mirrorFor(rr.Repo)
	rc, n, err := f.openGit(ctx, m, rr, path, kind, version, false)
	if IsNotExist(err) && errors.Is(err, errStaleRefs) {
		// A reused ls-remote may predate the version asked for (a tag
		// pushed a moment ago): ask the remote again before saying no.
		rc, n, err = f.openGit(ctx, m, rr, path, kind, version, true)
	}
	return rc, n, err
}

// errStaleRefs marks a not-found answer computed from reused refs.
var errStaleRefs = errors.New("refs reused from an earlier request")

type staleNotExist struct{ error }

func (e staleNotExist) Is(target error) bool { return target == errStaleRefs }
func (e staleNotExist) Unwrap() error        { return e.error }

func (f *Fetcher) openGit(ctx context.Context, m *mirror, rr *repoRoot, path, kind, version string, force bool) (_ io.ReadCloser, _ int64, err error) {
	snap, reused, err := m.sync(ctx, force)
	if err != nil {
		return nil, 0, fmt.Errorf("%s: %w", path, err)
	}
	defer func() {
		// A version the module cannot have (a +incompatible that is
		// not, a major version the path does not allow) does not exist,
		// as a proxy answers it (404 with the reason).
		var ive *module.InvalidVersionError
		if err != nil && !IsNotExist(err) && errors.As(err, &ive) && !IsUnreachable(err) && ctx.Err() == nil {
			err = notExist(err)
		}
		if reused && IsNotExist(err) {
			err = staleNotExist{err}
		}
	}()
	code := newView(m, snap)
	r, err := newCodeRepo(code, rr.Root, rr.SubDir, path)
	if err != nil {
		return nil, 0, notExist(err)
	}
	r.tmpDir = f.cfg.TempDir
	small := func(data []byte, err error) (io.ReadCloser, int64, error) {
		if err != nil {
			return nil, 0, err
		}
		return io.NopCloser(bytes.NewReader(data)), int64(len(data)), nil
	}
	switch kind {
	case KindList:
		vs, err := r.Versions(ctx, "")
		if err != nil {
			return nil, 0, err
		}
		var b strings.Builder
		for _, v := range vs.List {
			b.WriteString(v + "\n")
		}
		return small([]byte(b.String()), nil)
	case KindLatest:
		info, err := r.Latest(ctx)
		if err != nil {
			return nil, 0, err
		}
		return small(json.Marshal(info))
	case KindInfo:
		info, err := r.Stat(ctx, version)
		if err != nil {
			return nil, 0, err
		}
		return small(json.Marshal(info))
	case KindMod:
		if err := checkCanonical(version); err != nil {
			return nil, 0, err
		}
		return small(r.GoMod(ctx, version))
	case KindZip:
		if err := checkCanonical(version); err != nil {
			return nil, 0, err
		}
		tmp, err := os.CreateTemp(f.cfg.TempDir, "modproxy-direct-zip-*")
		if err != nil {
			return nil, 0, fmt.Errorf("zip spool: %w", err)
		}
		os.Remove(tmp.Name())
		if err := r.Zip(ctx, tmp, version); err != nil {
			tmp.Close()
			return nil, 0, err
		}
		size, err := tmp.Seek(0, io.SeekCurrent)
		if err == nil {
			_, err = tmp.Seek(0, io.SeekStart)
		}
		if err != nil {
			tmp.Close()
			return nil, 0, err
		}
		return tmp, size, nil
	}
	return nil, 0, fmt.Errorf("unknown request kind %q", kind)
}

func checkCanonical(v string) error {
	if v != module.CanonicalVersion(v) {
		return notExistf("version %s is not canonical", v)
	}
	return nil
}

// openProxy forwards a request to the module proxy a "mod" go-import tag
// names.
func (f *Fetcher) openProxy(ctx context.Context, base, path, kind, version string) (io.ReadCloser, int64, error) {
	client := f.cfg.Client
	if f.insecure(path) {
		client = f.insecureClient
	}
	ep, err := module.EscapePath(path)
	if err != nil {
		return nil, 0, notExist(err)
	}
	p := ep + "/@latest"
	if kind != KindLatest {
		p = ep + "/@v/list"
		if kind != KindList {
			ev, err := module.EscapeVersion(version)
			if err != nil {
				return nil, 0, notExist(err)
			}
			p = ep + "/@v/" + ev + "." + kind
		}
	}
	u := strings.TrimSuffix(base, "/") + "/" + p
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, u, nil)
	if err != nil {
		return nil, 0, err
	}
	resp, err := f.auth.do(client, req)
	if err != nil {
		return nil, 0, fmt.Errorf("module proxy %s: %s", redactURL(base), redactText(err.Error()))
	}
	switch resp.StatusCode {
	case http.StatusOK:
		return resp.Body, resp.ContentLength, nil
	case http.StatusNotFound, http.StatusGone:
		resp.Body.Close()
		return nil, 0, notExistf("module proxy %s: %s not found", redactURL(base), path)
	}
	resp.Body.Close()
	return nil, 0, fmt.Errorf("module proxy %s: %s", redactURL(base), resp.Status)
}

// IsNotExist reports whether err means the module, version or revision
// does not exist (as opposed to a failure to find out).
func IsNotExist(err error) bool { return errors.Is(err, fs.ErrNotExist) }

// RepoDir is the default repository directory beside a store file.
func RepoDir(storePath string) string {
	return filepath.Join(filepath.Dir(storePath), filepath.Base(storePath)+".vcs")
}

// unreachable are git's and curl's words for a server that could not be
// reached or dropped the connection.
var unreachable = []string{
	"Could not resolve host", "Failed to connect", "Connection refused", "Connection timed out",
	"Connection reset", "Operation timed out", "Empty reply from server", "early EOF",
	"SSL_ERROR", "gnutls_handshake", "Could not resolve proxy",
}

// IsUnreachable reports whether err means a repository's server could not
// be reached (name resolution, connection, TLS, a dropped connection), as
// opposed to a failure of one repository or version.
func IsUnreachable(err error) bool {
	var ge *gitError
	if errors.As(err, &ge) {
		for _, s := range unreachable {
			if strings.Contains(ge.Stderr, s) {
				return true
			}
		}
		return false
	}
	var ne net.Error
	return errors.As(err, &ne)
}
