package filewatch

import (
	"context"
	"os"
	"path/filepath"
	"sync/atomic"
	"testing"
	"time"
)

func TestWatch(t *testing.T) {
	dir := t.TempDir()
	f := filepath.Join(dir, "auth.yaml")
	if err := os.WriteFile(f, []byte("a"), 0o600); err != nil {
		t.Fatal(err)
	}
	var n atomic.Int32
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { Watch(ctx, 10*time.Millisecond, []string{f}, func() { n.Add(1) }); close(done) }()
	wait := func(want int32) {
		t.Helper()
		deadline := time.Now().Add(5 * time.Second)
		for n.Load() < want {
			if time.Now().After(deadline) {
				t.Fatalf("%d change callbacks, want %d", n.Load(), want)
			}
			time.Sleep(5 * time.Millisecond)
		}
	}
	time.Sleep(50 * time.Millisecond)
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
	case <-time.After(5 * time.Second):
		t.Fatal("Watch did not return after cancel")
	}
}
