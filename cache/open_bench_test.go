package cache

import (
	"bytes"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"
)

// BenchmarkOpen measures Open of a store holding N GiB of zips, for the
// sizes in MODPROXY_BENCH_OPEN_GIB (comma-separated, default "0.25"; the
// issue's figures use "1,20", which needs that much free disk in
// MODPROXY_BENCH_DIR, default the test's temp dir). The store is filled
// once per size, then opened and closed b.N times; with
// MODPROXY_BENCH_DROP_CACHES=1 the page cache is emptied before each Open.
func BenchmarkOpen(b *testing.B) {
	sizes := os.Getenv("MODPROXY_BENCH_OPEN_GIB")
	if sizes == "" {
		sizes = "0.25"
	}
	for _, f := range strings.Split(sizes, ",") {
		gib, err := strconv.ParseFloat(strings.TrimSpace(f), 64)
		if err != nil {
			b.Fatalf("MODPROXY_BENCH_OPEN_GIB: %v", err)
		}
		b.Run(fmt.Sprintf("%gGiB", gib), func(b *testing.B) {
			dir := os.Getenv("MODPROXY_BENCH_DIR")
			if dir == "" {
				dir = b.TempDir()
			}
			path := filepath.Join(dir, fmt.Sprintf("open-bench-%g.db", gib))
			defer os.Remove(path)
			fill(b, path, int64(gib*(1<<30)))
			fi, _ := os.Stat(path)
			b.ReportMetric(float64(fi.Size())/(1<<30), "file-GiB")
			cold := os.Getenv("MODPROXY_BENCH_DROP_CACHES") == "1"
			var opening, closing time.Duration
			b.ResetTimer()
			for b.Loop() {
				if cold {
					b.StopTimer()
					dropCaches(b)
					b.StartTimer()
				}
				start := time.Now()
				s, err := Open(path, Options{})
				if err != nil {
					b.Fatal(err)
				}
				opening += time.Since(start)
				start = time.Now()
				s.Close()
				closing += time.Since(start)
			}
			b.ReportMetric(float64(opening.Milliseconds())/float64(b.N), "open-ms")
			b.ReportMetric(float64(closing.Milliseconds())/float64(b.N), "close-ms")
		})
	}
}

// dropCaches empties the kernel's page cache (root only), so that Open
// reads the file from disk, as after a reboot or with a store larger than
// memory.
func dropCaches(b *testing.B) {
	exec.Command("sync").Run()
	if err := os.WriteFile("/proc/sys/vm/drop_caches", []byte("3"), 0); err != nil {
		b.Skipf("MODPROXY_BENCH_DROP_CACHES=1 needs root: %v", err)
	}
}

// fill writes total bytes of 64 MiB zips.
func fill(b *testing.B, path string, total int64) {
	b.Helper()
	start := time.Now()
	const zip = 64 << 20
	data := bytes.Repeat([]byte{0x5a}, zip)
	// Chunks as a server writes them (512 KiB), 64 MiB per transaction.
	s, err := Open(path, Options{stageBytes: 64 << 20})
	if err != nil {
		b.Fatal(err)
	}
	defer func() { s.Close() }()
	for i := 0; int64(i)*zip < total; i++ {
		data[0], data[1] = byte(i), byte(i>>8)
		k := Key{Path: "example.com/fill", Version: fmt.Sprintf("v0.0.%d", i), Kind: KindZip}
		if _, err := s.put(k, bytes.NewReader(data), Meta{}); err != nil {
			b.Fatal(err)
		}
	}
	b.Logf("filled %d MiB in %v; %d free pages", total>>20, time.Since(start).Round(time.Millisecond), s.db.Stats().FreePageN)
}
