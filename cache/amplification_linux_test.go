package cache

import (
	"bytes"
	"fmt"
	"math/rand/v2"
	"os"
	"strconv"
	"strings"
	"testing"
)

// writtenBytes is what the process has written so far (wchar of
// /proc/self/io): every write and pwrite, whatever the file.
func writtenBytes(t *testing.T) int64 {
	t.Helper()
	b, err := os.ReadFile("/proc/self/io")
	if err != nil {
		t.Skipf("no /proc/self/io: %v", err)
	}
	for _, l := range strings.Split(string(b), "\n") {
		if v, ok := strings.CutPrefix(l, "wchar: "); ok {
			n, err := strconv.ParseInt(v, 10, 64)
			if err != nil {
				t.Fatal(err)
			}
			return n
		}
	}
	t.Skip("no wchar in /proc/self/io")
	return 0
}

// TestPutWriteAmplification stores a cold download's mix of zips (many
// small ones, a few of several MB, with the default chunk and staging
// sizes) and counts what the store writes to its file. A new blob in the
// shared chunks bucket rewrote the leaf holding the last chunks of the
// blobs before it: 2.35 times the content for this mix. In buckets of
// their own the blobs write 1.3 times it (a staging transaction rewrites
// the leaf of the blob's own previous chunks). Bytes written, not time:
// the count does not depend on the machine's load.
//
// It does not run in parallel: wchar counts the whole process.
func TestPutWriteAmplification(t *testing.T) {
	rng := rand.New(rand.NewPCG(1, 1))
	var sizes []int
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
		before := writtenBytes(t)
		for i, n := range sizes {
			data := content(n, uint64(i))
			k := Key{fmt.Sprintf("example.com/m%03d", i), "v1.0.0", KindZip}
			if _, err := s.put(k, bytes.NewReader(data), Meta{Size: int64(n)}); err != nil {
				t.Fatal(err)
			}
			total += n
		}
		ratio := float64(writtenBytes(t)-before) / float64(total)
		t.Logf("%s: %d MB of content, %.2f times that written", tc.name, total>>20, ratio)
		if tc.limit > 0 && ratio > tc.limit {
			t.Errorf("%s: wrote %.2f times the content, want at most %.2f", tc.name, ratio, tc.limit)
		}
		if tc.limit == 0 && ratio < 2 {
			t.Errorf("%s: wrote %.2f times the content; the reference should show the amplification (is wchar counting?)", tc.name, ratio)
		}
	}
}
