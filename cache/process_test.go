package cache

import (
	"bufio"
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"go.etcd.io/bbolt"
)

// Tests in this file re-execute the test binary (os.Args[0]) as a second
// process running TestHelperProcess, selected by these environment
// variables: bbolt's lock is per process, and a crash needs a process to
// kill.
const (
	envChild = "MODPROXY_CACHE_TEST_CHILD" // "lock" or "put"
	envPath  = "MODPROXY_CACHE_TEST_PATH"
)

// The child's big Put for TestKilledMidPut: 40 MiB in 64 KiB chunks, so a
// 4 MiB staging transaction holds 64 chunks.
const (
	killPutSize   = 40 << 20
	killChunkSize = 64 << 10
	killAfter     = 13 << 20 // bytes handed to Put before the child reports
)

var killKey = Key{Path: "example.com/big", Version: "v1.0.0", Kind: KindZip}

func helperCommand(t *testing.T, mode, path string) *exec.Cmd {
	cmd := exec.Command(os.Args[0], "-test.run=^TestHelperProcess$", "-test.count=1")
	cmd.Env = append(os.Environ(), envChild+"="+mode, envPath+"="+path)
	cmd.Stderr = os.Stderr
	return cmd
}

// TestHelperProcess is the child process; it does nothing in a normal run.
func TestHelperProcess(t *testing.T) {
	path := os.Getenv(envPath)
	switch os.Getenv(envChild) {
	case "":
		return
	case "lock":
		start := time.Now()
		s, err := Open(path, Options{LockTimeout: time.Second})
		elapsed := time.Since(start)
		if err == nil {
			s.Close()
			fmt.Println("opened")
			os.Exit(3)
		}
		fmt.Printf("%v\n%s\n", elapsed.Milliseconds(), err)
		if !errors.Is(err, ErrLocked) {
			os.Exit(4)
		}
		os.Exit(0)
	case "put":
		s, err := Open(path, Options{ChunkSize: killChunkSize})
		if err != nil {
			fmt.Fprintln(os.Stderr, err)
			os.Exit(5)
		}
		_, err = s.put(killKey, &stallingReader{data: content(killPutSize, 99)}, Meta{Size: killPutSize})
		fmt.Fprintln(os.Stderr, "Put returned:", err) // not reached: the parent kills us
		os.Exit(6)
	}
}

// stallingReader serves killAfter bytes, prints "staged" (by then at least
// two staging transactions have committed, since Put only reads the next
// batch after committing the previous one) and blocks until killed.
type stallingReader struct {
	data []byte
	off  int
}

func (r *stallingReader) Read(p []byte) (int, error) {
	if r.off >= killAfter {
		fmt.Println("staged")
		time.Sleep(time.Hour) // wait for SIGKILL (select{} could trip deadlock detection)
	}
	n := copy(p, r.data[r.off:killAfter])
	r.off += n
	return n, nil
}

func TestSecondProcessFailsFast(t *testing.T) {
	path := filepath.Join(t.TempDir(), "store.db")
	s, err := Open(path, Options{})
	if err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	cmd := helperCommand(t, "lock", path)
	// A child that ignores its LockTimeout (bbolt then waits for the lock
	// forever) must fail the test, not hang it.
	cmd.WaitDelay = time.Second
	timer := time.AfterFunc(hangGuard, func() { cmd.Process.Kill() })
	out, err := cmd.Output()
	timer.Stop()
	total := time.Since(start)
	if err != nil {
		t.Fatalf("child: %v, output:\n%s", err, out)
	}
	ms, msg, _ := strings.Cut(strings.TrimSpace(string(out)), "\n")
	t.Logf("child: Open failed after %s ms (process %v): %s", ms, total.Round(time.Millisecond), msg)
	var elapsed int
	if _, err := fmt.Sscan(ms, &elapsed); err != nil {
		t.Fatalf("child output %q: %v", out, err)
	}
	// bbolt polls the lock until more than LockTimeout less one 50 ms retry
	// interval has passed, so giving up sooner means the timeout was not
	// honoured. There is no upper bound: load can delay the child's polling
	// by any amount; an ignored timeout waits forever, which the kill timer
	// above turns into a failure.
	if elapsed < 950 {
		t.Errorf("Open gave up after %d ms, before its 1 s LockTimeout", elapsed)
	}
	if !strings.Contains(msg, path) || !strings.Contains(msg, "modproxy serve") {
		t.Errorf("error %q should name the file and the likely holder", msg)
	}
	// Once released, the file opens.
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	s, err = Open(path, Options{})
	if err != nil {
		t.Fatal(err)
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
}

func TestKilledMidPut(t *testing.T) {
	if testing.Short() {
		t.Skip("writes ~13 MiB with fsync")
	}
	path := filepath.Join(t.TempDir(), "store.db")
	opts := Options{ChunkSize: killChunkSize}
	s, err := Open(path, opts)
	if err != nil {
		t.Fatal(err)
	}
	other := content(3*killChunkSize+5, 1)
	kept := map[Key][]byte{
		{Path: "example.com/other", Version: "v1.0.0", Kind: KindMod}:  []byte("module example.com/other\n"),
		{Path: "example.com/other", Version: "v1.0.0", Kind: KindZip}:  other,
		{Path: "example.com/other", Version: "v1.0.0", Kind: KindInfo}: []byte(`{"Version":"v1.0.0"}`),
	}
	for k, v := range kept {
		if _, err := s.put(k, bytes.NewReader(v), Meta{}); err != nil {
			t.Fatal(err)
		}
	}
	if err := s.PutEntry("list/example.com/other", []byte("v1.0.0\n")); err != nil {
		t.Fatal(err)
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}

	cmd := helperCommand(t, "put", path)
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	staged := make(chan error, 1)
	go func() {
		line, err := bufio.NewReader(stdout).ReadString('\n')
		if err == nil && line != "staged\n" {
			err = fmt.Errorf("child said %q", line)
		}
		staged <- err
		io.Copy(io.Discard, stdout)
	}()
	select {
	case err = <-staged:
	case <-time.After(hangGuard):
		err = fmt.Errorf("child did not stage in %v", hangGuard)
	}
	if kerr := cmd.Process.Signal(syscall.SIGKILL); kerr != nil {
		t.Fatal(kerr)
	}
	werr := cmd.Wait()
	if err != nil {
		t.Fatal(err)
	}
	if ws, ok := cmd.ProcessState.Sys().(syscall.WaitStatus); !ok || !ws.Signaled() || ws.Signal() != syscall.SIGKILL {
		t.Fatalf("child was not killed by SIGKILL: %v", werr)
	}

	// The crash left staged chunks behind: look with bbolt directly, so the
	// test cannot pass by accident.
	orphans := orphanChunks(t, path)
	t.Logf("killed child left %d orphan chunks (%d MiB)", orphans, orphans*killChunkSize>>20)
	if orphans < 2*(stageBytes/killChunkSize) {
		t.Fatalf("only %d orphan chunks: the child did not commit two staging transactions", orphans)
	}

	s, err = Open(path, opts)
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	if _, err := s.Stat(killKey); !errors.Is(err, ErrNotFound) {
		t.Errorf("Stat of the killed Put: %v, want ErrNotFound", err)
	}
	checkInvariants(t, s) // no orphan chunks, nothing pending, counters right
	if chunks, _ := countChunks(t, s); chunks != 1+1+4 {
		t.Errorf("%d chunks after garbage collection, want the 6 of the kept artifacts", chunks)
	}
	for k, v := range kept {
		if got, _, err := s.Get(k); err != nil || !bytes.Equal(got, v) {
			t.Errorf("Get(%s) after crash: %v", k, err)
		}
	}
	if e, err := s.GetEntry("list/example.com/other"); err != nil || string(e.Value) != "v1.0.0\n" {
		t.Errorf("GetEntry after crash: %q, %v", e.Value, err)
	}
	// The key can be stored now (a smaller artifact keeps the test fast).
	data := content(2*stageBytes+killChunkSize+1, 7)
	if _, err := s.put(killKey, bytes.NewReader(data), Meta{}); err != nil {
		t.Fatal(err)
	}
	if got, _, err := s.Get(killKey); err != nil || !bytes.Equal(got, data) {
		t.Fatalf("Get after re-put: %v", err)
	}
	checkInvariants(t, s)
}

// orphanChunks counts chunks of blobs that no record references, opening
// the file with bbolt alone.
func orphanChunks(t *testing.T, path string) int {
	t.Helper()
	db, err := bbolt.Open(path, 0o600, &bbolt.Options{ReadOnly: true, Timeout: time.Second})
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	n := 0
	err = db.View(func(tx *bbolt.Tx) error {
		referenced := map[uint64]bool{}
		if err := tx.Bucket(bucketArtifacts).ForEach(func(k, v []byte) error {
			blob, err := recordBlob(v)
			referenced[blob] = true
			return err
		}); err != nil {
			return err
		}
		if tx.Bucket(bucketPending).Stats().KeyN == 0 {
			t.Error("no pending blob recorded for the staged Put")
		}
		err := tx.Bucket(bucketChunks).ForEach(func(k, _ []byte) error {
			if !referenced[binary.BigEndian.Uint64(k)] {
				n++
			}
			return nil
		})
		if err != nil {
			return err
		}
		blobs := tx.Bucket(bucketBlobs)
		return blobs.ForEach(func(k, _ []byte) error {
			if !referenced[binary.BigEndian.Uint64(k)] {
				n += blobs.Bucket(k).Stats().KeyN
			}
			return nil
		})
	})
	if err != nil {
		t.Fatal(err)
	}
	return n
}
