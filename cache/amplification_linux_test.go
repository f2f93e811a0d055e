package cache

import (
	"bytes"
	"fmt"
	"math/rand/v2"
	"os"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"
)

// TestPutWriteAmplification stores a cold download's mix of zips (many
// small ones, a few of several MB, with the default chunk and staging
// sizes) and counts what the store writes to its file. A new blob in the
// shared chunks bucket rewrote the leaf holding the last chunks of the
// blobs before it: 2.12 times the content for this mix. In buckets of
// their own the blobs write 1.40 times it (a staging transaction rewrites
// the leaf of the blob's own previous chunks). Bytes written, not time:
// the count does not depend on the machine's load.
//
// It does not run in parallel: wchar counts the whole process.
func TestPutWriteAmplification(t *testing.T) {
	rng := rand.New(rand.NewPCG(1, 1))
	var sizes []int
	if wchar() < 0 {
		t.Skip("no wchar in /proc/self/io")
	}
	for range 150 {
		sizes = append(sizes, 2000+int(150e3*rng.ExpFloat64()))
	}
	sizes = append(sizes, 40<<20, 12<<20, 6<<20)
	for _, tc := range []struct {
		name  string
		own   int64
		limit float64
	}{
		{"own buckets", 0, 1.5},
		{"shared bucket (schema 2)", -1, 0}, // the reference: shows what is counted
	} {
		opts := Options{ownBucketSize: tc.own}
		s := openTest(t, opts)
		total := 0
		before := wchar()
		for i, n := range sizes {
			data := content(n, uint64(i))
			k := Key{fmt.Sprintf("example.com/m%03d", i), "v1.0.0", KindZip}
			if _, err := s.put(k, bytes.NewReader(data), Meta{Size: int64(n)}); err != nil {
				t.Fatal(err)
			}
			total += n
		}
		ratio := float64(wchar()-before) / float64(total)
		t.Logf("%s: %d MB of content, %.2f times that written", tc.name, total>>20, ratio)
		if tc.limit > 0 && ratio > tc.limit {
			t.Errorf("%s: wrote %.2f times the content, want at most %.2f", tc.name, ratio, tc.limit)
		}
		if tc.limit == 0 && ratio < 2 {
			t.Errorf("%s: wrote %.2f times the content; the reference should show the amplification (is wchar counting?)", tc.name, ratio)
		}
	}
}

// BenchmarkPutZipMix stores the zips of a cold download, sizes drawn like
// a real project's (most below 300 KB, some of a few MB), fsynced, in the
// layout Put uses (own: content of 16 KiB and more in a bucket of its own)
// and in that of schema 2 (shared: every chunk in one bucket), side by
// side. Besides time it reports the process's CPU time and the bytes it
// wrote, per byte of content.
func BenchmarkPutZipMix(b *testing.B) {
	rng := rand.New(rand.NewPCG(1, 1))
	var sizes []int
	for range 64 {
		sizes = append(sizes, 2000+int(150e3*rng.ExpFloat64()))
	}
	sizes = append(sizes, 6<<20, 2<<20)
	datas := make([][]byte, len(sizes))
	for i, n := range sizes {
		datas[i] = content(n, uint64(i))
	}
	for _, layout := range []struct {
		name string
		own  int64
	}{{"own", 0}, {"shared", -1}} {
		b.Run("layout="+layout.name, func(b *testing.B) {
			s, err := Open(b.TempDir()+"/store.db", Options{ownBucketSize: layout.own})
			if err != nil {
				b.Fatal(err)
			}
			defer s.Close()
			var total int64
			cpu0, w0 := cpuTime(), wchar()
			i := 0
			for b.Loop() {
				data := datas[i%len(datas)]
				k := Key{Path: "example.com/bench", Version: fmt.Sprintf("v1.0.%d", i), Kind: KindZip}
				i++
				if _, err := s.put(k, bytes.NewReader(data), Meta{Size: int64(len(data))}); err != nil {
					b.Fatal(err)
				}
				total += int64(len(data))
			}
			b.ReportMetric(float64(cpuTime()-cpu0)/float64(total), "cpu-s/GB")
			b.ReportMetric(float64(wchar()-w0)/float64(total), "written/content")
			b.SetBytes(total / int64(i))
		})
	}
}

// cpuTime is the process's user and system CPU time.
func cpuTime() time.Duration {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		return 0
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

// wchar is what the process has written so far (wchar of /proc/self/io:
// every write and pwrite, whatever the file), -1 if unknown.
func wchar() int64 {
	b, err := os.ReadFile("/proc/self/io")
	if err != nil {
		return -1
	}
	for _, l := range strings.Split(string(b), "\n") {
		if v, ok := strings.CutPrefix(l, "wchar: "); ok {
			if n, err := strconv.ParseInt(v, 10, 64); err == nil {
				return n
			}
		}
	}
	return -1
}
