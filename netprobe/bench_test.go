package netprobe

import (
	"io"
	"net/http"
	"net/http/httptest"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
)

// BenchmarkRoundTripTelemetry compares warm keep-alive round trips through
// the instrumented transport with a bare http.Transport against a local
// server. The instrumented sub-benchmark reports its cost relative to the
// bare one as "ratio".
func BenchmarkRoundTripTelemetry(b *testing.B) {
	payload := make([]byte, 1024)
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { w.Write(payload) }))
	defer srv.Close()
	url := srv.URL + "/go/example.org/m/@v/v1.0.0.info"

	run := func(b *testing.B, c *http.Client) time.Duration {
		// warm the connection
		for range 10 {
			resp, err := c.Get(url)
			if err != nil {
				b.Fatal(err)
			}
			io.Copy(io.Discard, resp.Body)
			resp.Body.Close()
		}
		b.ReportAllocs()
		b.ResetTimer()
		for i := 0; i < b.N; i++ {
			resp, err := c.Get(url)
			if err != nil {
				b.Fatal(err)
			}
			io.Copy(io.Discard, resp.Body)
			resp.Body.Close()
		}
		b.StopTimer()
		return b.Elapsed() / time.Duration(b.N)
	}

	var bare time.Duration
	b.Run("bare", func(b *testing.B) {
		tr := &http.Transport{MaxIdleConnsPerHost: 16}
		defer tr.CloseIdleConnections()
		bare = run(b, &http.Client{Transport: tr})
	})
	b.Run("instrumented", func(b *testing.B) {
		p, err := New(Config{
			Upstreams:  []string{srv.URL + "/go"},
			DNSServers: []string{"127.0.0.1:1"},
			Registerer: prometheus.NewRegistry(),
		})
		if err != nil {
			b.Fatal(err)
		}
		defer p.Close()
		per := run(b, p.Client())
		if bare > 0 {
			b.ReportMetric(float64(per)/float64(bare), "ratio")
		}
	})
}
