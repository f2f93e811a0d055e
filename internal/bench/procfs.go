package main

import (
	"bytes"
	"fmt"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"sync"
	"time"
)

// clkTck is the kernel's clock-tick rate for /proc/<pid>/stat times.
var clkTck = sync.OnceValue(func() float64 {
	out, err := exec.Command("getconf", "CLK_TCK").Output()
	if err == nil {
		if v, err := strconv.Atoi(strings.TrimSpace(string(out))); err == nil && v > 0 {
			return float64(v)
		}
	}
	return 100
})

// cpuTime returns the user+system CPU time the process has used, from
// /proc/<pid>/stat (clock-tick resolution).
func cpuTime(pid int) (time.Duration, error) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return 0, fmt.Errorf("read process CPU time: %w", err)
	}
	// The command name (field 2) may hold spaces; fields after it are
	// split from the last ')'.
	i := bytes.LastIndexByte(b, ')')
	if i < 0 {
		return 0, fmt.Errorf("parse /proc/%d/stat: no ')'", pid)
	}
	f := strings.Fields(string(b[i+1:]))
	// f[0] is field 3 (state); utime is field 14, stime field 15.
	if len(f) < 13 {
		return 0, fmt.Errorf("parse /proc/%d/stat: %d fields", pid, len(f))
	}
	ut, err1 := strconv.ParseUint(f[11], 10, 64)
	st, err2 := strconv.ParseUint(f[12], 10, 64)
	if err1 != nil || err2 != nil {
		return 0, fmt.Errorf("parse /proc/%d/stat: bad utime/stime %q %q", pid, f[11], f[12])
	}
	return time.Duration(float64(ut+st) / clkTck() * float64(time.Second)), nil
}

// memStatus is the memory part of /proc/<pid>/status, in bytes.
type memStatus struct {
	HWM, RSS, RSSAnon, RSSFile int64
}

func readMem(pid int) (memStatus, error) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return memStatus{}, fmt.Errorf("read process memory: %w", err)
	}
	var m memStatus
	for line := range strings.SplitSeq(string(b), "\n") {
		k, v, ok := strings.Cut(line, ":")
		if !ok {
			continue
		}
		var dst *int64
		switch k {
		case "VmHWM":
			dst = &m.HWM
		case "VmRSS":
			dst = &m.RSS
		case "RssAnon":
			dst = &m.RSSAnon
		case "RssFile":
			dst = &m.RSSFile
		default:
			continue
		}
		kb, err := strconv.ParseInt(strings.TrimSuffix(strings.TrimSpace(v), " kB"), 10, 64)
		if err != nil {
			return memStatus{}, fmt.Errorf("parse %s in /proc/%d/status: %w", k, pid, err)
		}
		*dst = kb << 10
	}
	return m, nil
}

// resetHWM resets the process's peak RSS (VmHWM) to its current RSS.
func resetHWM(pid int) error {
	if err := os.WriteFile(fmt.Sprintf("/proc/%d/clear_refs", pid), []byte("5"), 0); err != nil {
		return fmt.Errorf("reset peak RSS: %w", err)
	}
	return nil
}

// rssSampler samples a process's memory every interval until stopped.
type rssSampler struct {
	stopc chan struct{}
	done  chan struct{}
	max   memStatus // field-wise maxima
	n     int
}

func sampleRSS(pid int, interval time.Duration) *rssSampler {
	s := &rssSampler{stopc: make(chan struct{}), done: make(chan struct{})}
	go func() {
		defer close(s.done)
		t := time.NewTicker(interval)
		defer t.Stop()
		for {
			if m, err := readMem(pid); err == nil {
				s.n++
				s.max.RSS = max(s.max.RSS, m.RSS)
				s.max.RSSAnon = max(s.max.RSSAnon, m.RSSAnon)
				s.max.RSSFile = max(s.max.RSSFile, m.RSSFile)
				s.max.HWM = max(s.max.HWM, m.HWM)
			}
			select {
			case <-s.stopc:
				return
			case <-t.C:
			}
		}
	}()
	return s
}

// stop ends sampling and returns the maxima.
func (s *rssSampler) stop() memStatus {
	close(s.stopc)
	<-s.done
	return s.max
}
