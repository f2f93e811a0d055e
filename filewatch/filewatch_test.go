package filewatch

import (
	"context"
	"os"
	"path/filepath"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// startedCtx reports the first call of Done: Watch makes it once it has
// taken its baseline fingerprint, so that a change made after started is
// closed is a change Watch must see (a fixed sleep would not tell a loaded
// machine's late start from a missed change).
type startedCtx struct {
	context.Context
	once    sync.Once
	started chan struct{}
}

func (c *startedCtx) Done() <-chan struct{} {
	c.once.Do(func() { close(c.started) })
	return c.Context.Done()
}

func TestWatch(t *testing.T) {
	dir := t.TempDir()
	f := filepath.Join(dir, "auth.yaml")
	if err := os.WriteFile(f, []byte("a"), 0o600); err != nil {
		t.Fatal(err)
	}
	var n atomic.Int32
	const hangGuard = 2 * time.Minute
	base, cancel := context.WithCancel(context.Background())
	ctx := &startedCtx{Context: base, started: make(chan struct{})}
	done := make(chan struct{})
	go func() { Watch(ctx, 10*time.Millisecond, []string{f}, func() { n.Add(1) }); close(done) }()
	wait := func(want int32) {
		t.Helper()
		deadline := time.Now().Add(hangGuard)
		for n.Load() < want {
			if time.Now().After(deadline) {
				t.Fatalf("%d change callbacks, want %d", n.Load(), want)
			}
			time.Sleep(5 * time.Millisecond)
		}
	}
	select {
	case <-ctx.started:
	case <-time.After(hangGuard):
		t.Fatal("Watch never started polling")
	}
	time.Sleep(50 * time.Millisecond) // a few unchanged polls
	if n.Load() != 0 {
		t.Fatal("callback without a change")
	}
	// Same size, same second: only the contents differ.
	os.WriteFile(f, []byte("b"), 0o600)
	wait(1)
	// A symlink swap, as a Kubernetes Secret update does.
	other := filepath.Join(dir, "other")
	os.WriteFile(other, []byte("c"), 0o600)
	link := filepath.Join(dir, "link")
	os.Symlink(other, link)
	os.Rename(link, f)
	wait(2)
	// Removal and return are changes too.
	os.Remove(f)
	wait(3)
	os.WriteFile(f, []byte("c"), 0o600)
	wait(4)
	cancel()
	select {
	case <-done:
	case <-time.After(hangGuard):
		t.Fatal("Watch did not return after cancel")
	}
}

// A file larger than what is hashed still changes its fingerprint when it
// grows past the hashed prefix.
func TestFingerprintSeesChangesPastTheHashedPrefix(t *testing.T) {
	f := filepath.Join(t.TempDir(), "policy.yaml")
	data := make([]byte, maxRead+10)
	if err := os.WriteFile(f, data, 0o600); err != nil {
		t.Fatal(err)
	}
	before := Fingerprint([]string{f})
	if err := os.WriteFile(f, append(data, '\n'), 0o600); err != nil {
		t.Fatal(err)
	}
	if Fingerprint([]string{f}) == before {
		t.Error("appending past the hashed prefix left the fingerprint unchanged")
	}
}
