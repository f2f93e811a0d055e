package main

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/modproxy/modproxy/internal/testupstream"
)

// Env is what scenarios share: the modproxy binary, a temp dir removed at
// the end, and the servers and upstreams they start.
type Env struct {
	Opts  options
	Bin   string // modproxy binary
	GoBin string // the go command
	Dir   string // temp dir; everything a scenario writes goes under it

	mu        sync.Mutex
	servers   []*Server
	upstreams []*testupstream.Server
	seq       int
}

func newEnv(ctx context.Context, o options) (*Env, error) {
	goBin, err := exec.LookPath("go")
	if err != nil {
		return nil, fmt.Errorf("find the go command: %w", err)
	}
	dir, err := os.MkdirTemp("", "modproxy-bench-")
	if err != nil {
		return nil, fmt.Errorf("temp dir: %w", err)
	}
	env := &Env{Opts: o, GoBin: goBin, Dir: dir, Bin: o.bin}
	if env.Bin == "" {
		env.Bin = filepath.Join(dir, "modproxy")
		fmt.Fprintln(os.Stderr, "== building modproxy")
		cmd := exec.CommandContext(ctx, goBin, "build", "-trimpath", "-o", env.Bin, "./cmd/modproxy")
		cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
		if out, err := cmd.CombinedOutput(); err != nil {
			env.Close()
			return nil, fmt.Errorf("go build ./cmd/modproxy (run from the repository root): %w\n%s", err, out)
		}
	}
	return env, nil
}

// Close stops every server and upstream and removes the temp dir (unless
// --keep).
func (e *Env) Close() {
	e.stopServers()
	e.mu.Lock()
	ups := e.upstreams
	e.upstreams = nil
	e.mu.Unlock()
	for _, u := range ups {
		u.Close()
	}
	if e.Opts.keep {
		fmt.Fprintln(os.Stderr, "kept", e.Dir)
		return
	}
	// Module caches are read-only; make them writable to remove them.
	filepath.WalkDir(e.Dir, func(p string, d os.DirEntry, err error) error {
		if err == nil && d.IsDir() {
			os.Chmod(p, 0o755)
		}
		return nil
	})
	if err := os.RemoveAll(e.Dir); err != nil {
		fmt.Fprintln(os.Stderr, "bench: remove temp dir:", err)
	}
}

// TempDir returns a new directory under the Env's temp dir.
func (e *Env) TempDir(prefix string) (string, error) {
	d, err := os.MkdirTemp(e.Dir, prefix+"-")
	if err != nil {
		return "", fmt.Errorf("temp dir: %w", err)
	}
	return d, nil
}

// Upstream starts a fake upstream serving mods; Env.Close stops it.
func (e *Env) Upstream(mods ...testupstream.Module) (*testupstream.Server, error) {
	u, err := testupstream.New(mods...)
	if err != nil {
		return nil, fmt.Errorf("start fake upstream: %w", err)
	}
	e.mu.Lock()
	e.upstreams = append(e.upstreams, u)
	e.mu.Unlock()
	return u, nil
}

// Server is a running modproxy subprocess.
type Server struct {
	URL  string
	Pid  int
	Log  string // file with its stdout and stderr
	DB   string
	cmd  *exec.Cmd
	done chan struct{}
	err  error
}

// StartServer runs "modproxy serve" with a fresh store in front of
// upstream, plus extra flags, and waits until it is ready.
func (e *Env) StartServer(ctx context.Context, upstream string, extra ...string) (*Server, error) {
	e.mu.Lock()
	e.seq++
	n := e.seq
	e.mu.Unlock()
	dir, err := e.TempDir(fmt.Sprintf("server%d", n))
	if err != nil {
		return nil, err
	}
	spool := filepath.Join(dir, "spool")
	if err := os.Mkdir(spool, 0o755); err != nil {
		return nil, fmt.Errorf("spool dir: %w", err)
	}
	addr, err := freeAddr()
	if err != nil {
		return nil, err
	}
	s := &Server{URL: "http://" + addr, DB: filepath.Join(dir, "modproxy.db"), Log: filepath.Join(dir, "server.log"), done: make(chan struct{})}
	logf, err := os.Create(s.Log)
	if err != nil {
		return nil, fmt.Errorf("server log: %w", err)
	}
	defer logf.Close() // the child has its own descriptor
	args := append([]string{"serve",
		"--listen", addr, "--db", s.DB, "--upstream", upstream,
		"--sumdb", "off", "--private=", "--nosumdb=", "--ebpf=off",
		"--spool-dir", spool, "--log-level", e.Opts.serverLog,
	}, extra...)
	// Not CommandContext: the server is stopped by stopServers (SIGTERM,
	// then SIGKILL), whatever happens to ctx.
	s.cmd = exec.Command(e.Bin, args...)
	s.cmd.Stdout, s.cmd.Stderr = logf, logf
	s.cmd.Env = append(os.Environ(), "GOFLAGS=")
	// Die with the bench process even if it is killed outright.
	s.cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if err := s.cmd.Start(); err != nil {
		return nil, fmt.Errorf("start modproxy: %w", err)
	}
	s.Pid = s.cmd.Process.Pid
	go func() { s.err = s.cmd.Wait(); close(s.done) }()
	e.mu.Lock()
	e.servers = append(e.servers, s)
	e.mu.Unlock()

	// With an admin listener (and auth on) readiness is asked there.
	readyURL := s.URL + "/readyz"
	for i, a := range extra {
		if a == "--admin-listen" && i+1 < len(extra) {
			readyURL = "http://" + extra[i+1] + "/readyz"
		}
	}
	deadline := time.Now().Add(15 * time.Second)
	c := &http.Client{Timeout: time.Second}
	for {
		select {
		case <-s.done:
			return nil, fmt.Errorf("modproxy exited early: %v\n%s", s.err, tail(s.Log))
		case <-ctx.Done():
			return nil, ctx.Err()
		default:
		}
		if resp, err := c.Get(readyURL); err == nil {
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				return s, nil
			}
		}
		if time.Now().After(deadline) {
			return nil, fmt.Errorf("modproxy not ready after 15s\n%s", tail(s.Log))
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// stopServers stops every running modproxy: SIGTERM, then SIGKILL after 5 s.
func (e *Env) stopServers() {
	e.mu.Lock()
	srvs := e.servers
	e.servers = nil
	e.mu.Unlock()
	for _, s := range srvs {
		s.stop()
	}
}

func (s *Server) stop() {
	select {
	case <-s.done:
		return
	default:
	}
	s.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-s.done:
	case <-time.After(5 * time.Second):
		s.cmd.Process.Kill()
		<-s.done
	}
}

// Alive returns an error when the server has exited.
func (s *Server) Alive() error {
	select {
	case <-s.done:
		return fmt.Errorf("modproxy exited: %v\n%s", s.err, tail(s.Log))
	default:
		return nil
	}
}

func freeAddr() (string, error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return "", fmt.Errorf("find a free port: %w", err)
	}
	defer ln.Close()
	return ln.Addr().String(), nil
}

// tail returns the last lines of a log file, for error messages.
func tail(path string) string {
	b, err := os.ReadFile(path)
	if err != nil {
		return ""
	}
	if len(b) > 2000 {
		b = b[len(b)-2000:]
		if i := bytes.IndexByte(b, '\n'); i >= 0 {
			b = b[i+1:]
		}
	}
	return strings.TrimRight(string(b), "\n")
}

var errStatus = errors.New("unexpected status")
