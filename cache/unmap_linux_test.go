package cache

import (
	"bufio"
	"bytes"
	"fmt"
	"os"
	"strings"
	"testing"
)

// mappedRss returns the resident kB of the process's mappings of path,
// from /proc/self/smaps.
func mappedRss(t *testing.T, path string) int {
	t.Helper()
	f, err := os.Open("/proc/self/smaps")
	if err != nil {
		t.Skipf("no smaps: %v", err)
	}
	defer f.Close()
	total, in := 0, false
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		line := sc.Text()
		fields := strings.Fields(line)
		switch {
		case len(fields) >= 5 && strings.Contains(fields[0], "-") && !strings.HasSuffix(fields[0], ":"):
			in = len(fields) >= 6 && fields[5] == path
		case in && fields[0] == "Rss:":
			var kb int
			fmt.Sscan(fields[1], &kb)
			total += kb
		}
	}
	return total
}

// Storing a large artifact must not leave it in the process's resident
// set: appending chunks rewrites bbolt's last leaf, copying chunks out of
// the mapping, and those pages stayed mapped (half of every large zip a
// cold download stored).
func TestPutLeavesLittleMapped(t *testing.T) {
	s := openTest(t, Options{})
	const size = 48 << 20
	if _, err := s.put(keyZip, bytes.NewReader(content(size, 3)), Meta{}); err != nil {
		t.Fatal(err)
	}
	kb := mappedRss(t, s.Path())
	t.Logf("store mapping resident after storing %d MiB: %d kB", size>>20, kb)
	// The last (publishing) transaction's leaf may stay: a few chunks.
	if limit := (8 << 20) >> 10; kb > limit {
		t.Errorf("%d kB of the store file mapped after the put, want at most %d", kb, limit)
	}
}
