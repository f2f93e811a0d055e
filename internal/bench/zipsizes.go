package main

import (
	"context"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/modproxy/modproxy/internal/testupstream"
)

// Targets from issue 14: warm zips of every size at least as fast as a
// plain file server over the same bytes, at most 0.25 s of server CPU per GB.
const (
	targetZipVsStatic   = 1.0
	targetSizedZipCPUGB = 0.25
)

// staticEnv names the environment variable that turns the bench binary
// into the reference file server (a subprocess, so that its CPU time is
// its own): MODPROXY_BENCH_STATIC=<addr> <dir>.
const staticEnv = "MODPROXY_BENCH_STATIC"

func init() {
	register(scenario{
		Name: "zip-sizes", Order: 25, Timeout: 240 * time.Second,
		Desc: "warm zips of 1, 8, 40 and 100 MB at concurrency 8: modproxy vs net/http.FileServer over the same bytes, side by side",
		Run:  runZipSizes,
	})
}

// maybeServeStatic runs the reference file server and never returns when
// the bench binary was started as one.
func maybeServeStatic() {
	addr := os.Getenv(staticEnv)
	if addr == "" || len(os.Args) < 2 {
		return
	}
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		fmt.Fprintln(os.Stderr, "static server:", err)
		os.Exit(1)
	}
	srv := &http.Server{Handler: http.FileServer(http.Dir(os.Args[1])), ReadHeaderTimeout: 10 * time.Second}
	fmt.Fprintln(os.Stderr, "static server:", srv.Serve(ln))
	os.Exit(1)
}

// staticServer is the reference file server subprocess.
type staticServer struct {
	URL string
	Pid int
	cmd *exec.Cmd
}

// startStatic serves dir with net/http.FileServer from a subprocess.
func startStatic(ctx context.Context, dir string) (*staticServer, error) {
	self, err := os.Executable()
	if err != nil {
		return nil, fmt.Errorf("find the bench binary: %w", err)
	}
	addr, err := freeAddr()
	if err != nil {
		return nil, err
	}
	cmd := exec.Command(self, dir)
	cmd.Env = append(os.Environ(), staticEnv+"="+addr)
	cmd.Stderr = os.Stderr
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		return nil, fmt.Errorf("start static server: %w", err)
	}
	s := &staticServer{URL: "http://" + addr, Pid: cmd.Process.Pid, cmd: cmd}
	deadline := time.Now().Add(10 * time.Second)
	for {
		if c, err := net.DialTimeout("tcp", addr, time.Second); err == nil {
			c.Close()
			return s, nil
		}
		if time.Now().After(deadline) || ctx.Err() != nil {
			s.stop()
			return nil, fmt.Errorf("static server not listening on %s", addr)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func (s *staticServer) stop() {
	s.cmd.Process.Kill()
	s.cmd.Wait()
}

// zipSide is one server's figures for one zip size.
type zipSide struct {
	mbps, cpuPerGB float64
	n              int
}

func measureZip(ctx context.Context, env *Env, url string, pid int) (zipSide, error) {
	const conc = 8
	c := newClient(conc)
	defer c.CloseIdleConnections()
	urls := []string{url}
	if _, err := runLoad(ctx, c, urls, conc, env.Opts.warmup/2, 0, 256<<10); err != nil {
		return zipSide{}, fmt.Errorf("warm-up: %w", err)
	}
	r, err := runLoad(ctx, c, urls, conc, env.Opts.duration, pid, 256<<10)
	if err != nil {
		return zipSide{}, err
	}
	if r.Errors > 0 {
		return zipSide{}, fmt.Errorf("%d of %d downloads failed, first: %w", r.Errors, r.Errors+r.Requests, r.FirstErr)
	}
	return zipSide{
		mbps:     float64(r.Bytes) / 1e6 / r.Elapsed.Seconds(),
		cpuPerGB: r.CPU.Seconds() / (float64(r.Bytes) / 1e9),
		n:        r.Requests,
	}, nil
}

// zipRounds is the number of interleaved rounds per size and server.
const zipRounds = 3

// medianSide returns the median MB/s and the median CPU per GB of rounds.
func medianSide(rounds []zipSide) zipSide {
	mb := make([]float64, len(rounds))
	cpu := make([]float64, len(rounds))
	n := 0
	for i, r := range rounds {
		mb[i], cpu[i] = r.mbps, r.cpuPerGB
		n += r.n
	}
	slices.Sort(mb)
	slices.Sort(cpu)
	return zipSide{mbps: mb[len(mb)/2], cpuPerGB: cpu[len(cpu)/2], n: n}
}

func runZipSizes(ctx context.Context, env *Env) ([]Result, error) {
	var sizes []int
	for f := range strings.SplitSeq(env.Opts.zipSizes, ",") {
		mb, err := strconv.Atoi(strings.TrimSpace(f))
		if err != nil || mb <= 0 {
			return nil, fmt.Errorf("invalid --zip-sizes %q", env.Opts.zipSizes)
		}
		sizes = append(sizes, mb)
	}
	var mods []testupstream.Module
	for i, mb := range sizes {
		mods = append(mods, bigModule(fmt.Sprintf("example.com/bench/sized/z%03dmb", mb), mb*1e6, 2<<20, uint64(100+i)))
	}
	up, err := env.Upstream(mods...)
	if err != nil {
		return nil, err
	}
	// The same bytes, laid out as GOPROXY paths, for the file server.
	dir, err := env.TempDir("static")
	if err != nil {
		return nil, err
	}
	for _, m := range mods {
		p := filepath.Join(dir, m.Path, "@v", m.Version+".zip")
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			return nil, err
		}
		if err := os.WriteFile(p, up.Zip(m.Path, m.Version), 0o644); err != nil {
			return nil, err
		}
	}
	static, err := startStatic(ctx, dir)
	if err != nil {
		return nil, err
	}
	defer static.stop()
	srv, err := env.StartServer(ctx, up.URL())
	if err != nil {
		return nil, err
	}
	if err := fill(ctx, env, artifactURLs(srv.URL, mods, "zip"), 2); err != nil {
		return nil, err
	}
	var res []Result
	for i, m := range mods {
		zipMB := float64(len(up.Zip(m.Path, m.Version))) / 1e6
		// Side by side: rounds alternate which server goes first, and each
		// side reports its median round (the machine is shared and noisy).
		var mps, sts []zipSide
		for round := range zipRounds {
			for j := range 2 {
				if (round+j)%2 == 0 {
					r, err := measureZip(ctx, env, artifactURLs(srv.URL, mods[i:i+1], "zip")[0], srv.Pid)
					if err != nil {
						return res, fmt.Errorf("%d MB through modproxy: %w", sizes[i], err)
					}
					mps = append(mps, r)
				} else {
					r, err := measureZip(ctx, env, artifactURLs(static.URL, mods[i:i+1], "zip")[0], static.Pid)
					if err != nil {
						return res, fmt.Errorf("%d MB from the file server: %w", sizes[i], err)
					}
					sts = append(sts, r)
				}
			}
		}
		if err := srv.Alive(); err != nil {
			return res, err
		}
		mp, st := medianSide(mps), medianSide(sts)
		ratio := mp.mbps / st.mbps
		fmt.Fprintf(os.Stderr, "   %3d MB: modproxy %6.0f MB/s %.3f CPU-s/GB | file server %6.0f MB/s %.3f CPU-s/GB | %.2fx\n",
			sizes[i], mp.mbps, mp.cpuPerGB, st.mbps, st.cpuPerGB, ratio)
		name := fmt.Sprintf("%d MB", sizes[i])
		res = append(res,
			Result{Metric: name + ": modproxy / file server MB/s", Value: ratio, Unit: "x", Target: atLeast(targetZipVsStatic),
				Note: fmt.Sprintf("%.0f vs %.0f MB/s; %d vs %d zips of %.1f MB", mp.mbps, st.mbps, mp.n, st.n, zipMB)},
			Result{Metric: name + ": modproxy CPU per GB", Value: mp.cpuPerGB, Unit: "s/GB", Target: atMost(targetSizedZipCPUGB),
				Note: fmt.Sprintf("file server %.3f s/GB (%.2fx)", st.cpuPerGB, mp.cpuPerGB/st.cpuPerGB)},
		)
	}
	return res, nil
}
