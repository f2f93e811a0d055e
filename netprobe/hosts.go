package netprobe

import (
	"bufio"
	"net/netip"
	"os"
	"strings"
	"sync"
	"time"
)

// hostsFile is a lazily reloaded view of /etc/hosts: the file is stat'ed at
// most every hostsRecheck and re-read when its modification time or size
// changed.
type hostsFile struct {
	path string

	mu      sync.Mutex
	checked time.Time
	mtime   time.Time
	size    int64
	byName  map[string][]netip.Addr // lower-case name without trailing dot
}

const hostsRecheck = 5 * time.Second

func newHostsFile(path string) *hostsFile {
	h := &hostsFile{path: path}
	h.reload(time.Now())
	return h
}

// lookup returns the addresses for name from the hosts file.
func (h *hostsFile) lookup(name string) []netip.Addr {
	now := time.Now()
	h.mu.Lock()
	defer h.mu.Unlock()
	if now.Sub(h.checked) >= hostsRecheck {
		h.reloadLocked(now)
	}
	return h.byName[name]
}

func (h *hostsFile) reload(now time.Time) {
	h.mu.Lock()
	defer h.mu.Unlock()
	h.reloadLocked(now)
}

func (h *hostsFile) reloadLocked(now time.Time) {
	h.checked = now
	fi, err := os.Stat(h.path)
	if err != nil {
		h.byName, h.mtime, h.size = nil, time.Time{}, 0
		return
	}
	if h.byName != nil && fi.ModTime().Equal(h.mtime) && fi.Size() == h.size {
		return
	}
	f, err := os.Open(h.path)
	if err != nil {
		return
	}
	defer f.Close()
	h.byName = parseHosts(bufio.NewScanner(f))
	h.mtime, h.size = fi.ModTime(), fi.Size()
}

func parseHosts(sc *bufio.Scanner) map[string][]netip.Addr {
	m := make(map[string][]netip.Addr)
	for sc.Scan() {
		line := sc.Text()
		if i := strings.IndexByte(line, '#'); i >= 0 {
			line = line[:i]
		}
		f := strings.Fields(line)
		if len(f) < 2 {
			continue
		}
		ip, err := netip.ParseAddr(f[0])
		if err != nil {
			continue
		}
		ip = ip.WithZone("").Unmap()
		for _, name := range f[1:] {
			name = strings.TrimSuffix(strings.ToLower(name), ".")
			if !containsAddr(m[name], ip) {
				m[name] = append(m[name], ip)
			}
		}
	}
	return m
}

func containsAddr(list []netip.Addr, a netip.Addr) bool {
	for _, b := range list {
		if a == b {
			return true
		}
	}
	return false
}
