package main

import (
	"context"
	"crypto/rand"
	"encoding/base64"
	"errors"
	"io"
	"net/http"
	"net/http/httptest"
	"net/http/httputil"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/modproxy/modproxy/cache"
	"github.com/modproxy/modproxy/cache/s3store"
	"github.com/modproxy/modproxy/internal/tests3"
	"github.com/modproxy/modproxy/internal/testsumdb"
	"github.com/modproxy/modproxy/internal/testupstream"
)

// replicaSet is a bucket on a moto_server and the replicas' common flags.
type replicaSet struct {
	t      *testing.T
	srv    *tests3.Server
	bucket string
	env    []string
	flags  []string
}

func newReplicaSet(t *testing.T, up *testupstream.Server, db *testsumdb.DB, extra ...string) *replicaSet {
	t.Helper()
	if testing.Short() {
		t.Skip("end-to-end test builds the binary and runs replicas")
	}
	srv := tests3.Start(t)
	rs := &replicaSet{t: t, srv: srv, bucket: srv.NewBucket(t), env: srv.Env()}
	rs.flags = append([]string{"--s3-bucket", rs.bucket, "--s3-prefix", "mp/", "--s3-endpoint", srv.URL, "--s3-path-style",
		"--sumdb", db.VerifierKey() + " " + db.URL(), "--private", "", "--nosumdb", "", "--list-ttl", "1s"}, extra...)
	return rs
}

// start runs one replica with its own local tier.
func (rs *replicaSet) start(upstream string, extra ...string) *proc {
	rs.t.Helper()
	args := append([]string{"--db", filepath.Join(rs.t.TempDir(), "local.db"), "--upstream", upstream}, rs.flags...)
	return startModproxyEnv(rs.t, rs.env, append(args, extra...)...)
}

// s3 opens the bucket from the test, to look at what the replicas stored.
func (rs *replicaSet) s3() *s3store.Store {
	rs.t.Helper()
	for _, kv := range rs.env {
		k, v, _ := strings.Cut(kv, "=")
		rs.t.Setenv(k, v)
	}
	s, err := s3store.New(context.Background(), s3store.Config{Bucket: rs.bucket, Prefix: "mp/", Endpoint: rs.srv.URL, PathStyle: true})
	if err != nil {
		rs.t.Fatal(err)
	}
	return s
}

// waitCommitted waits until p has committed every artifact it answered.
func waitCommitted(t *testing.T, p *proc) {
	t.Helper()
	for deadline := time.Now().Add(time.Minute); ; time.Sleep(10 * time.Millisecond) { // hang guard only
		_, metrics := p.get(t, "/metrics")
		v := metricValue(metrics, "modproxy_store_commits_pending")
		if v == "0" {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("modproxy_store_commits_pending = %q a minute after the last answer", v)
		}
	}
}

func (p *proc) kill() {
	p.cmd.Process.Kill() // SIGKILL: no drain, no cleanup
	err := <-p.done
	p.done <- err
}

// Two and three replicas on one bucket: what the go command downloaded
// through A is served and verified by B and C with no upstream at all,
// after A was killed, from a fresh module cache.
func TestReplicasShareOneBucketEndToEnd(t *testing.T) {
	up, db := startUniverse(t, e2eModules)
	rs := newReplicaSet(t, up, db)
	a := rs.start(up.URL())
	project := writeProject(t)
	newGoEnv(t, a.URL, db).run(project, "mod", "download")
	// A verified artifact is answered before its store commit: killed
	// now, A would lose the last commits (a graceful stop waits for them).
	waitCommitted(t, a)
	a.kill()

	up.Close()
	db.SetDown(true)
	for _, name := range []string{"B", "C"} {
		r := rs.start("off")
		fresh := newGoEnv(t, r.URL, db)
		fresh.run(project, "mod", "download")
		fresh.run(project, "build", "./...")
		fresh.run(project, "mod", "verify")
		_, metrics := r.get(t, "/metrics")
		if !hasNonZero(metrics, `modproxy_store_tier_reads_total{tier="s3"}`) {
			t.Errorf("replica %s served nothing from S3", name)
		}
	}
}

// Three replicas x 20 clients ask for one cold zip at once: the fetch
// lease lets one replica fetch it; the bound is one upstream fetch as long
// as the fetch takes less than the lease TTL (renewed while it runs, so in
// practice as long as the holder lives).
func TestReplicasFetchAColdZipOnce(t *testing.T) {
	up, db := startUniverse(t, e2eModules)
	rs := newReplicaSet(t, up, db)
	up.SetFaults(testupstream.Fault{Match: func(p string) bool { return strings.HasSuffix(p, ".zip") }, Delay: 500 * time.Millisecond})
	var reps []*proc
	for range 3 {
		reps = append(reps, rs.start(up.URL()))
	}
	up.ResetCounts()
	const clients = 20
	zipPath := "/example.com/dep/@v/v1.2.0.zip"
	want := up.Zip("example.com/dep", "v1.2.0")
	var wg sync.WaitGroup
	var failed atomic.Int64
	start := make(chan struct{})
	for i := range len(reps) * clients {
		r := reps[i%len(reps)]
		wg.Add(1)
		go func() {
			defer wg.Done()
			<-start
			resp, err := http.Get(r.URL + zipPath)
			if err != nil {
				t.Error(err)
				failed.Add(1)
				return
			}
			body, err := io.ReadAll(resp.Body)
			resp.Body.Close()
			if err != nil || resp.StatusCode != 200 || string(body) != string(want) {
				t.Errorf("client of %s: %s, %d bytes, %v", r.URL, resp.Status, len(body), err)
				failed.Add(1)
			}
		}()
	}
	close(start)
	wg.Wait()
	if n := up.Count(zipPath); n != 1 {
		t.Fatalf("%d upstream fetches of the zip for 3 replicas x %d clients, want 1", n, clients)
	}
	if failed.Load() != 0 {
		t.Fatalf("%d client requests failed", failed.Load())
	}
}

// A replica killed (SIGKILL) in the middle of fetching a zip leaves no
// object in the bucket, and its lease blocks the others only until it
// expires: another replica then fetches and serves the zip.
func TestReplicaKilledMidFetch(t *testing.T) {
	// A zip of about 1 MB, sent 32 KiB per 200ms: A is killed mid-way.
	rnd := make([]byte, 768<<10)
	rand.Read(rnd)
	big := testupstream.Module{Path: "example.com/big", Version: "v1.0.0", Files: map[string]string{
		"go.mod": "module example.com/big\n\ngo 1.21\n", "data.txt": base64.StdEncoding.EncodeToString(rnd)}}
	up, db := startUniverse(t, append([]testupstream.Module{big}, e2eModules...))
	const ttl = 2 * time.Second
	rs := newReplicaSet(t, up, db, "--s3-lease-ttl", ttl.String())
	zipPath := "/example.com/big/@v/v1.0.0.zip"
	up.SetFaults(testupstream.Fault{Match: func(p string) bool { return p == zipPath }, SlowBody: 200 * time.Millisecond})
	a := rs.start(up.URL())
	b := rs.start(up.URL())
	go func() {
		resp, err := http.Get(a.URL + zipPath)
		if err == nil {
			io.Copy(io.Discard, resp.Body)
			resp.Body.Close()
		}
	}()
	// Wait for A to be downloading (it holds the lease by then).
	deadline := time.Now().Add(20 * time.Second)
	for up.Count(zipPath) == 0 && time.Now().Before(deadline) {
		time.Sleep(20 * time.Millisecond)
	}
	time.Sleep(300 * time.Millisecond)
	a.kill()
	killed := time.Now()
	st := rs.s3()
	k := cache.Key{Path: "example.com/big", Version: "v1.0.0", Kind: cache.KindZip}
	if _, err := st.Stat(k); !errors.Is(err, cache.ErrNotFound) {
		t.Fatalf("after the fetching replica was killed, the bucket has the zip: %v", err)
	}
	up.SetFaults()
	resp, err := http.Get(b.URL + zipPath)
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != 200 || string(body) != string(up.Zip("example.com/big", "v1.0.0")) {
		t.Fatalf("replica B after A died: %s, %d bytes", resp.Status, len(body))
	}
	if waited := time.Since(killed); waited > ttl+10*time.Second {
		t.Errorf("B served after %v; the dead replica's lease (TTL %v) blocked it too long", waited, ttl)
	}
	// The zip streamed to the client while B downloaded it; B commits it
	// to the bucket after the stream's last byte.
	m, err := st.Stat(k)
	for deadline := time.Now().Add(10 * time.Second); errors.Is(err, cache.ErrNotFound) && time.Now().Before(deadline); m, err = st.Stat(k) {
		time.Sleep(20 * time.Millisecond)
	}
	if err != nil || m.State != cache.StateVerified {
		t.Errorf("zip in the bucket after B fetched it: %+v %v", m, err)
	}
	_, metrics := b.get(t, "/metrics")
	if !hasNonZero(metrics, "modproxy_fetch_lease_takeovers_total") {
		t.Error("B did not report taking over the expired lease")
	}
}

// balancer is what a Kubernetes Service does for the test: it sends each
// request to a ready replica, round robin, and stops sending to one taken
// out (terminating) before it is stopped.
type balancer struct {
	mu       sync.Mutex
	backends []*url.URL
	out      map[string]bool
	next     int
}

func (b *balancer) pick() *url.URL {
	b.mu.Lock()
	defer b.mu.Unlock()
	for range b.backends {
		u := b.backends[b.next%len(b.backends)]
		b.next++
		if !b.out[u.Host] {
			return u
		}
	}
	return nil
}

func (b *balancer) set(host string, out bool) {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.out[host] = out
}

func (b *balancer) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	u := b.pick()
	if u == nil {
		http.Error(w, "no ready replica", http.StatusServiceUnavailable)
		return
	}
	req, err := http.NewRequestWithContext(r.Context(), r.Method, u.String()+r.URL.RequestURI(), nil)
	if err != nil {
		http.Error(w, err.Error(), http.StatusBadGateway)
		return
	}
	req.Header = r.Header.Clone()
	resp, err := http.DefaultTransport.RoundTrip(req)
	if err != nil {
		http.Error(w, err.Error(), http.StatusBadGateway)
		return
	}
	defer resp.Body.Close()
	for k, v := range resp.Header {
		w.Header()[k] = v
	}
	w.WriteHeader(resp.StatusCode)
	io.Copy(w, resp.Body)
}

// Replicas restarted one at a time (taken out of the balancer, drained by
// SIGTERM, restarted on a fresh local tier, put back once ready) while go
// commands run through the balancer: no client request fails.
func TestRollingRestartUnderLoad(t *testing.T) {
	up, db := startUniverse(t, e2eModules)
	rs := newReplicaSet(t, up, db)
	reps := []*proc{rs.start(up.URL()), rs.start(up.URL())}
	lb := &balancer{out: map[string]bool{}}
	for _, r := range reps {
		u, _ := url.Parse(r.URL)
		lb.backends = append(lb.backends, u)
	}
	front := httptest.NewServer(lb)
	defer front.Close()

	project := writeProject(t)
	stop := make(chan struct{})
	var runs, failures atomic.Int64
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		for {
			select {
			case <-stop:
				return
			default:
			}
			g := newGoEnv(t, front.URL, db) // fresh module cache: every request reaches a replica
			if out, err := g.try(project, "mod", "download"); err != nil {
				failures.Add(1)
				t.Errorf("go mod download during the rolling restart: %v\n%s", err, out)
			}
			runs.Add(1)
		}
	}()
	for i, r := range reps {
		u, _ := url.Parse(r.URL)
		lb.set(u.Host, true)
		time.Sleep(300 * time.Millisecond) // the endpoint update reaching the balancer
		r.stop(t)
		n := rs.startAt(u.Host, up.URL())
		reps[i] = n
		lb.set(u.Host, false)
		time.Sleep(time.Second)
	}
	close(stop)
	wg.Wait()
	if runs.Load() < 2 {
		t.Fatalf("only %d go commands ran during the restart", runs.Load())
	}
	t.Logf("%d go mod download runs, %d failed", runs.Load(), failures.Load())
}

// startAt starts a replica listening on addr (the restarted pod keeps its
// address in the balancer).
func (rs *replicaSet) startAt(addr, upstream string) *proc {
	rs.t.Helper()
	args := append([]string{"--db", filepath.Join(rs.t.TempDir(), "local.db"), "--upstream", upstream}, rs.flags...)
	return startModproxyAddr(rs.t, addr, rs.env, args...)
}

// startModproxyAddr is startModproxyEnv on a given address.
func startModproxyAddr(t *testing.T, addr string, env []string, args ...string) *proc {
	t.Helper()
	var p *proc
	deadline := time.Now().Add(10 * time.Second)
	for {
		p = tryStartModproxy(t, addr, env, args...)
		if p != nil || time.Now().After(deadline) {
			break
		}
		time.Sleep(100 * time.Millisecond) // the old process's port not yet free
	}
	if p == nil {
		t.Fatalf("could not restart modproxy on %s", addr)
	}
	return p
}

func tryStartModproxy(t *testing.T, addr string, env []string, args ...string) *proc {
	t.Helper()
	p := &proc{URL: "http://" + addr, logs: &syncBuffer{}, done: make(chan error, 1)}
	p.cmd = newServeCommand(t, addr, env, args...)
	p.cmd.Stdout, p.cmd.Stderr = p.logs, p.logs
	if err := p.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	go func() { p.done <- p.cmd.Wait() }()
	deadline := time.Now().Add(15 * time.Second)
	for time.Now().Before(deadline) {
		select {
		case err := <-p.done:
			p.done <- err
			if strings.Contains(p.logs.String(), "address already in use") {
				return nil
			}
			t.Fatalf("modproxy exited early: %v\n%s", err, p.logs)
		default:
		}
		resp, err := http.Get(p.URL + "/readyz")
		if err == nil {
			resp.Body.Close()
			if resp.StatusCode == 200 {
				t.Cleanup(func() { p.stop(t) })
				return p
			}
		}
		time.Sleep(50 * time.Millisecond)
	}
	t.Fatalf("modproxy not ready\n%s", p.logs)
	return nil
}

// newServeCommand is the command startModproxyEnv runs.
func newServeCommand(t *testing.T, addr string, env []string, args ...string) *exec.Cmd {
	cmd := exec.Command(modproxyBin(t), append([]string{"serve", "--listen", addr, "--ebpf=off"}, args...)...)
	cmd.Env = append(append(os.Environ(), "GOFLAGS="), env...)
	return cmd
}

// While a replica starts (here: its bucket is slow to answer), /healthz
// answers 200 and /readyz 503, and module requests a clear 503; once the
// store is open it is ready.
func TestStartingReplicaIsAliveButNotReady(t *testing.T) {
	up, db := startUniverse(t, e2eModules)
	rs := newReplicaSet(t, up, db)
	target, _ := url.Parse(rs.srv.URL)
	release := make(chan struct{})
	slow := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		<-release
		httputil.NewSingleHostReverseProxy(target).ServeHTTP(w, r)
	}))
	defer slow.Close()
	var released sync.Once
	defer released.Do(func() { close(release) })
	for i, f := range rs.flags {
		if f == rs.srv.URL {
			rs.flags[i] = slow.URL
		}
	}
	addr := freeAddr(t)
	p := &proc{URL: "http://" + addr, logs: &syncBuffer{}, done: make(chan error, 1)}
	p.cmd = newServeCommand(t, addr, rs.env, append([]string{"--db", filepath.Join(t.TempDir(), "local.db"), "--upstream", up.URL()}, rs.flags...)...)
	p.cmd.Stdout, p.cmd.Stderr = p.logs, p.logs
	if err := p.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	go func() { p.done <- p.cmd.Wait() }()
	t.Cleanup(func() { p.stop(t) })
	status := func(path string) int {
		resp, err := http.Get(p.URL + path)
		if err != nil {
			return 0
		}
		resp.Body.Close()
		return resp.StatusCode
	}
	deadline := time.Now().Add(15 * time.Second)
	for status("/healthz") != 200 {
		if time.Now().After(deadline) {
			t.Fatalf("no /healthz while starting\n%s", p.logs)
		}
		time.Sleep(50 * time.Millisecond)
	}
	for path, want := range map[string]int{"/readyz": 503, "/example.com/dep/@v/list": 503, "/healthz": 200} {
		if got := status(path); got != want {
			t.Errorf("while starting, %s answered %d, want %d", path, got, want)
		}
	}
	released.Do(func() { close(release) })
	deadline = time.Now().Add(30 * time.Second)
	for status("/readyz") != 200 {
		if time.Now().After(deadline) {
			t.Fatalf("not ready after the bucket answered\n%s", p.logs)
		}
		time.Sleep(50 * time.Millisecond)
	}
	if got := status("/example.com/dep/@v/list"); got != 200 {
		t.Errorf("after start, list answered %d", got)
	}
}
