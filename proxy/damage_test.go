package proxy

import (
	"bytes"
	"crypto/sha256"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"path/filepath"
	"testing"

	"github.com/modproxy/modproxy/cache"
	"github.com/modproxy/modproxy/cache/storedamage"
	"github.com/modproxy/modproxy/internal/testupstream"
)

// servePath runs a Server over the store file at path (opened as serve
// opens it: damaged artifacts are quarantined) and returns its URL, the
// store and a stop function.
func servePath(t *testing.T, path, upstream string) (string, *cache.Store, func()) {
	t.Helper()
	st, err := cache.Open(path, cache.Options{QuarantineCorrupt: true})
	if err != nil {
		t.Fatal(err)
	}
	ups, err := ParseUpstreams(upstream)
	if err != nil {
		t.Fatal(err)
	}
	client := &http.Client{Transport: &http.Transport{}}
	f, err := NewFetcher(Config{Store: st, Upstreams: ups, Client: client, SpoolDir: t.TempDir(),
		Logger: slog.New(slog.NewTextHandler(io.Discard, nil))})
	if err != nil {
		t.Fatal(err)
	}
	srv := httptest.NewServer(NewServer(f, ServerOptions{}))
	return srv.URL, st, func() {
		srv.CloseClientConnections()
		srv.Close()
		f.Close()
		client.CloseIdleConnections()
		if err := st.Close(); err != nil {
			t.Error(err)
		}
	}
}

// flipStoredChunk flips one byte of chunk idx of every stored zip, behind
// the store's back (the file must be closed).
func flipStoredChunk(t *testing.T, path string, idx uint32) {
	storedamage.FlipChunks(t, path, func(i uint32, v []byte) bool { return i == idx && len(v) > 1000 })
}

// TestDamagedStoredZip flips a bit in a stored zip chunk. A client must
// never get the damaged bytes: damage in the first chunk is found before a
// byte is sent and the zip is refetched at once; damage further in aborts
// the response. Either way the artifact is quarantined and counted, and
// the next request is served a good copy.
func TestDamagedStoredZip(t *testing.T) {
	var big []byte
	for i := 0; len(big) < 1500<<10; i++ { // incompressible: a zip of 3+ chunks
		big = fmt.Appendf(big, "// %x\n", sha256.Sum256([]byte{byte(i), byte(i >> 8), byte(i >> 16)}))
	}
	mod := testupstream.Module{Path: "example.com/big", Version: "v1.0.0", Files: map[string]string{"big.go": "package big\n" + string(big)}}
	up := newUpstream(t, mod)
	want := up.Zip(mod.Path, mod.Version)
	const p = "/example.com/big/@v/v1.0.0.zip"

	for _, c := range []struct {
		chunk     uint32
		wantAbort bool
	}{{0, false}, {1, true}} {
		t.Run(fmt.Sprintf("chunk %d", c.chunk), func(t *testing.T) {
			path := filepath.Join(t.TempDir(), "store.db")
			url, _, stop := servePath(t, path, up.URL())
			if body := getBody(t, url+p); !bytes.Equal(body, want) {
				t.Fatal("first fetch differs")
			}
			stop()
			flipStoredChunk(t, path, c.chunk)
			fetchesBefore := up.Count(p)

			url, st, stop := servePath(t, path, up.URL())
			defer stop()
			resp, err := http.Get(url + p)
			if err != nil {
				t.Fatal(err)
			}
			got, readErr := io.ReadAll(resp.Body)
			resp.Body.Close()
			if c.wantAbort {
				if readErr == nil {
					t.Fatalf("status %d, %d bytes, clean end: a damaged zip must abort the response", resp.StatusCode, len(got))
				}
				if int64(len(got)) >= int64(len(want)) || !bytes.Equal(got, want[:len(got)]) {
					t.Errorf("before the abort the client got %d bytes that are not a prefix of the zip", len(got))
				}
			} else if resp.StatusCode != 200 || readErr != nil || !bytes.Equal(got, want) || resp.Header.Get(headerCache) != "miss" {
				t.Fatalf("damage before the first byte: status %d cache %q, %d bytes, %v; want the zip refetched", resp.StatusCode, resp.Header.Get(headerCache), len(got), readErr)
			}
			if n := st.Corruptions(); n != 1 {
				t.Errorf("Corruptions() = %d, want 1", n)
			}
			quarantined := 0
			st.WalkQuarantine(func(cache.Key, cache.Meta, string) error { quarantined++; return nil })
			if quarantined != 1 {
				t.Errorf("%d quarantined artifacts, want 1", quarantined)
			}
			// The next request is served a good copy, fetched once more.
			if body := getBody(t, url+p); !bytes.Equal(body, want) {
				t.Error("the request after the damage was not served the good zip")
			}
			if n := up.Count(p) - fetchesBefore; n != 1 {
				t.Errorf("upstream asked %d times after the damage, want 1", n)
			}
			if body := getBody(t, url+p); !bytes.Equal(body, want) {
				t.Error("refetched copy not served from the store")
			}
		})
	}
}

func getBody(t *testing.T, url string) []byte {
	t.Helper()
	resp, err := http.Get(url)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil || resp.StatusCode != 200 {
		t.Fatalf("GET %s: %d, %v", url, resp.StatusCode, err)
	}
	return b
}

// TestDamagedStoredMod: a damaged .mod is found when it is read whole, so
// the request itself is answered with a fresh copy from upstream.
func TestDamagedStoredMod(t *testing.T) {
	up := newUpstream(t)
	const p = "/example.com/hello/@v/v1.0.0.mod"
	path := filepath.Join(t.TempDir(), "store.db")
	url, _, stop := servePath(t, path, up.URL())
	want := getBody(t, url+p)
	stop()
	storedamage.FlipChunks(t, path, func(_ uint32, v []byte) bool { return bytes.HasPrefix(v, []byte("module ")) })
	url, st, stop := servePath(t, path, up.URL())
	defer stop()
	if got := getBody(t, url+p); !bytes.Equal(got, want) {
		t.Fatalf("served %q, want %q", got, want)
	}
	if n := st.Corruptions(); n != 1 {
		t.Errorf("Corruptions() = %d, want 1", n)
	}
	if n := up.Count(p); n != 2 {
		t.Errorf("upstream asked %d times for the .mod, want 2 (first fetch and refetch)", n)
	}
}
