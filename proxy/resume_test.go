package proxy

import (
	"bytes"
	"crypto/sha256"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"testing"
	"time"

	"github.com/modproxy/modproxy/cache"
	"github.com/modproxy/modproxy/internal/testupstream"
)

// bigModule has an incompressible zip of about 200 KiB, far past a 1 KiB
// hold-back: a download of it streams to clients before it ends.
func bigModule() testupstream.Module {
	var big []byte
	for i := 0; len(big) < 200<<10; i++ {
		big = fmt.Appendf(big, "// %x\n", sha256.Sum256([]byte{byte(i), byte(i >> 8)}))
	}
	return testupstream.Module{Path: "example.com/big", Version: "v1.0.0", Files: map[string]string{"big.go": "package big\n" + string(big)}}
}

// A zip that fails after streaming began is resumed from the next '|'
// upstream: with Range where it supports it, else by skipping what the
// clients already have. The client sees one whole, correct zip.
func TestStreamingZipResumesFromNextUpstream(t *testing.T) {
	mod := bigModule()
	tests := []struct {
		name    string
		ranges  bool
		fault   testupstream.Fault
		wantHow string
	}{
		{"reset, range", true, testupstream.Fault{Truncate: true, SlowBody: 200 * time.Millisecond, Match: isZip}, "range"},
		{"reset, no range support", false, testupstream.Fault{Truncate: true, SlowBody: 200 * time.Millisecond, Match: isZip}, "full_body"},
		{"stall, range", true, testupstream.Fault{Stall: 10 * time.Second, Match: isZip}, "range"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			a, b := newUpstream(t, mod), newUpstream(t, mod)
			a.SetFaults(tt.fault)
			b.SupportRanges(tt.ranges)
			want, err := io.ReadAll(mustOpen(t, b.URL()+"/example.com/big/@v/v1.0.0.zip"))
			if err != nil {
				t.Fatal(err)
			}
			h := newFakeHealth()
			e := newEnv(t, a.URL()+"|"+b.URL(), func(c *Config) {
				c.HoldBackBytes = 1 << 10
				c.Health = h
				// A stalled flow is cut by the client's own timeout here
				// (the kernel stall watch lives in netprobe's transport).
				c.Client.Timeout = 2 * time.Second
			})
			start := time.Now()
			resp, err := e.srv.Client().Get(e.srv.URL + "/example.com/big/@v/v1.0.0.zip")
			if err != nil {
				t.Fatal(err)
			}
			got, err := io.ReadAll(resp.Body)
			resp.Body.Close()
			t.Logf("%d bytes in %v", len(got), time.Since(start))
			if err != nil || resp.StatusCode != 200 {
				t.Fatalf("status %d, %d bytes, err %v", resp.StatusCode, len(got), err)
			}
			if !bytes.Equal(got, want) {
				t.Fatalf("client got %d bytes that differ from the %d-byte zip", len(got), len(want))
			}
			if !h.has(b.URL(), "resumed", tt.wantHow) {
				t.Errorf("decisions %v, want B resumed %s", h.decisions, tt.wantHow)
			}
			if tt.ranges && b.Ranged(".zip") != 1 {
				t.Errorf("B answered %d range requests, want 1", b.Ranged(".zip"))
			}
			waitFlights(t, e.f)
			if _, err := e.store.Stat(cache.Key{Path: mod.Path, Version: mod.Version, Kind: cache.KindZip}); err != nil {
				t.Errorf("resumed zip not stored: %v", err)
			}
		})
	}
}

// Hostile: the next upstream's copy cannot continue the stream (another
// size); the client is aborted and nothing is stored.
func TestStreamingZipResumeRefusesOtherCopy(t *testing.T) {
	mod := bigModule()
	other := mod
	other.Files = map[string]string{"big.go": mod.Files["big.go"] + "// more\n"}
	a, b := newUpstream(t, mod), newUpstream(t, other)
	a.SetFaults(testupstream.Fault{Truncate: true, SlowBody: 200 * time.Millisecond, Match: isZip})
	h := newFakeHealth()
	e := newEnv(t, a.URL()+"|"+b.URL(), func(c *Config) { c.HoldBackBytes = 1 << 10; c.Health = h })
	resp, err := e.srv.Client().Get(e.srv.URL + "/example.com/big/@v/v1.0.0.zip")
	if err != nil {
		t.Fatal(err)
	}
	n, err := io.Copy(io.Discard, resp.Body)
	resp.Body.Close()
	if err == nil {
		t.Fatalf("client got a clean end (%d bytes) of a zip spliced from two copies", n)
	}
	if _, err := e.store.Stat(cache.Key{Path: mod.Path, Version: mod.Version, Kind: cache.KindZip}); !errors.Is(err, cache.ErrNotFound) {
		t.Errorf("spliced zip stored: %v", err)
	}
}

func mustOpen(t *testing.T, url string) io.Reader {
	t.Helper()
	resp, err := http.Get(url)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { resp.Body.Close() })
	return resp.Body
}

// Hostile: the resuming upstream lies about the range or the size. Each lie
// is refused on the real bytes; the client is aborted, nothing is stored.
func TestStreamingZipResumeRefusesLies(t *testing.T) {
	mod := bigModule()
	tests := []struct {
		name string
		lie  func(w http.ResponseWriter, body []byte, from int64)
	}{
		{"range from the start", func(w http.ResponseWriter, body []byte, from int64) {
			w.Header().Set("Content-Range", fmt.Sprintf("bytes 0-%d/%d", len(body)-1, len(body)))
			w.WriteHeader(http.StatusPartialContent)
			w.Write(body)
		}},
		{"extra bytes past the declared total", func(w http.ResponseWriter, body []byte, from int64) {
			w.Header().Set("Content-Range", fmt.Sprintf("bytes %d-%d/%d", from, len(body)-1, len(body)))
			w.WriteHeader(http.StatusPartialContent)
			w.Write(body[from:])
			w.Write([]byte("PK\x05\x06 trailing junk"))
		}},
		{"another total", func(w http.ResponseWriter, body []byte, from int64) {
			w.Header().Set("Content-Range", fmt.Sprintf("bytes %d-%d/%d", from, len(body)+9, len(body)+10))
			w.WriteHeader(http.StatusPartialContent)
			w.Write(body[from:])
			w.Write(make([]byte, 10))
		}},
		{"HTML instead of a zip", func(w http.ResponseWriter, body []byte, from int64) {
			w.Header().Set("Content-Type", "text/html")
			w.WriteHeader(http.StatusOK)
			w.Write([]byte("<html>login</html>"))
		}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			a, real := newUpstream(t, mod), newUpstream(t, mod)
			a.SetFaults(testupstream.Fault{Truncate: true, SlowBody: 200 * time.Millisecond, Match: isZip})
			zip, err := io.ReadAll(mustOpen(t, real.URL()+"/example.com/big/@v/v1.0.0.zip"))
			if err != nil {
				t.Fatal(err)
			}
			liar := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
				if !isZip(r.URL.Path) {
					http.Redirect(w, r, real.URL()+r.URL.Path, http.StatusFound)
					return
				}
				var from int64
				fmt.Sscanf(r.Header.Get("Range"), "bytes=%d-", &from)
				tt.lie(w, zip, from)
			}))
			defer liar.Close()
			e := newEnv(t, a.URL()+"|"+liar.URL, func(c *Config) { c.HoldBackBytes = 1 << 10 })
			resp, err := e.srv.Client().Get(e.srv.URL + "/example.com/big/@v/v1.0.0.zip")
			if err != nil {
				t.Fatal(err)
			}
			got, err := io.ReadAll(resp.Body)
			resp.Body.Close()
			if err == nil {
				t.Fatalf("client got a clean end of %d bytes (zip is %d) from a lying resume", len(got), len(zip))
			}
			if _, err := e.store.Stat(cache.Key{Path: mod.Path, Version: mod.Version, Kind: cache.KindZip}); !errors.Is(err, cache.ErrNotFound) {
				t.Errorf("zip stored after a lying resume: %v", err)
			}
		})
	}
}
