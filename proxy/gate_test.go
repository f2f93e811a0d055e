package proxy

import (
	"archive/zip"
	"bytes"
	"compress/flate"
	"hash/crc32"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"

	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"

	"github.com/modproxy/modproxy/cache"
)

// zeroReader yields zeros forever.
type zeroReader struct{}

func (zeroReader) Read(p []byte) (int, error) { clear(p); return len(p), nil }

// lyingSizeZip is a module zip whose entry declares 1 KiB and inflates to
// 200 MiB.
func lyingSizeZip(t *testing.T, path, version string) []byte {
	t.Helper()
	var comp bytes.Buffer
	fw, _ := flate.NewWriter(&comp, flate.BestSpeed)
	if _, err := io.CopyN(fw, zeroReader{}, 200<<20); err != nil {
		t.Fatal(err)
	}
	fw.Close()
	var out bytes.Buffer
	zw := zip.NewWriter(&out)
	w, err := zw.CreateRaw(&zip.FileHeader{Name: path + "@" + version + "/big.go", Method: zip.Deflate,
		CompressedSize64: uint64(comp.Len()), UncompressedSize64: 1024, CRC32: crc32.ChecksumIEEE(make([]byte, 1024))})
	if err != nil {
		t.Fatal(err)
	}
	w.Write(comp.Bytes())
	zw.Close()
	return out.Bytes()
}

// A private upstream answers garbage that only the content checks can
// catch: the checksum database is never asked about private paths.
func TestPrivateUpstreamGarbageIsRefused(t *testing.T) {
	const mod = "private.example/app"
	bomb := lyingSizeZip(t, mod, "v1.0.0")
	private := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		switch {
		case strings.HasSuffix(r.URL.Path, ".info"):
			w.Write([]byte(`{"Version":"v1.0.0"}`))
		case strings.HasSuffix(r.URL.Path, ".mod"):
			w.Header().Set("Content-Type", "text/html")
			w.Write([]byte("<!DOCTYPE html>\n<html><body>Please sign in</body></html>\n"))
		case strings.HasSuffix(r.URL.Path, ".zip"):
			w.Write(bomb)
		default:
			http.NotFound(w, r)
		}
	}))
	defer private.Close()
	e := newEnv(t, "off", func(c *Config) {
		c.Private = "private.example"
		c.PrivateUpstreams, _ = ParseUpstreams(private.URL)
		c.Verifier = &hashVerifier{} // exempts private.example
	})
	for _, tt := range []struct {
		kind, path, reason string
	}{
		{"mod", "/" + mod + "/@v/v1.0.0.mod", "go.mod of private.example/app@v1.0.0 does not parse"},
		{"zip", "/" + mod + "/@v/v1.0.0.zip", "inflates past its declared 1024 bytes"},
	} {
		r := e.get(tt.path)
		if r.status != http.StatusBadGateway || !strings.Contains(r.body, tt.reason) || !strings.Contains(r.body, private.URL) {
			t.Errorf("GET %s = %d %q, want 502 naming the item and %q", tt.path, r.status, r.body, tt.reason)
		}
		if got := counter(t, e.f.m.fetches.WithLabelValues(tt.kind, "error")); got != 1 {
			t.Errorf("fetches{%s,error} = %v, want 1", tt.kind, got)
		}
		t.Logf("%s: %d %s", tt.path, r.status, r.body)
	}
	e.store.Walk(func(k cache.Key, m cache.Meta) error {
		if k.Kind != cache.KindInfo {
			t.Errorf("garbage stored: %s", k)
		}
		return nil
	})
	// The .info is fine and stored, exempt.
	e.mustGet("/"+mod+"/@v/v1.0.0.info", 200)
	waitFlights(t, e.f)
	if m, err := e.store.Stat(cache.Key{Path: mod, Version: "v1.0.0", Kind: cache.KindInfo}); err != nil || m.State != cache.StateExempt {
		t.Errorf(".info: %+v, %v", m, err)
	}
}

func counter(t *testing.T, c prometheus.Counter) float64 {
	t.Helper()
	var m dto.Metric
	if err := c.Write(&m); err != nil {
		t.Fatal(err)
	}
	return m.GetCounter().GetValue()
}
