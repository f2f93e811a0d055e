//go:build linux && (386 || amd64 || arm || arm64 || loong64 || mips64le || mipsle || ppc64le || riscv64)

package bpf

import (
	"bufio"
	"encoding/binary"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"
	"unsafe"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/asm"
	"github.com/cilium/ebpf/link"
	"github.com/cilium/ebpf/ringbuf"
	"github.com/cilium/ebpf/rlimit"
	"golang.org/x/sys/unix"
)

const (
	btfPath             = "/sys/kernel/btf/vmlinux"
	defaultPollInterval = 100 * time.Millisecond
	defaultWakeupEvents = 32
	// eventSize is sizeof(struct event) in modproxy.bpf.c.
	eventSize = 72
)

// Stat slots of the per-CPU stats map (enum stat_slot in modproxy.bpf.c).
const (
	statEvents       = 0
	statDropped      = 1
	statDNSUnmatched = 2
)

// attachTypes are the cgroup hooks the probes use, in attach order.
var attachTypes = []ebpf.AttachType{
	ebpf.AttachCGroupSockOps,
	ebpf.AttachCGroupInetEgress,
	ebpf.AttachCGroupInetIngress,
}

// Probes are the loaded and attached programs and the reader delivering
// their events. Methods are safe for concurrent use.
type Probes struct {
	objs  modproxyObjects
	links []link.Link
	rd    *ringbuf.Reader
	// wake is a duplicate of the ring buffer's fd registered with Go's
	// network poller, which the reader waits on; nil if that is not
	// possible (the reader then blocks in rd's own epoll_wait).
	wake       *os.File
	wakeRC     syscall.RawConn
	stopping   atomic.Bool // set by Close: the reader returns
	cgroupPath string
	progIDs    []ebpf.ProgramID
	onEvent    func(Event)
	poll       time.Duration

	delivered   atomic.Uint64
	parseErrors atomic.Uint64
	regErrors   atomic.Uint64

	done      chan struct{} // closed when the reader goroutine exits
	closeOnce sync.Once
	closeErr  error

	// life guards the kernel objects against Close: users of the maps and
	// the reader hold it for reading while closed is false.
	life       sync.RWMutex
	closed     bool
	finalStats Stats // kernel counters read at Close

	flushMu sync.Mutex // serializes Flush
	mu      sync.Mutex
	flushCh chan struct{} // closed by the reader at the next ErrFlushed
}

// Available reports whether this process can load and attach the probes
// here: nil if so, otherwise an error naming the missing piece (BTF, cgroup
// v2, CAP_BPF, CAP_NET_ADMIN). It loads a tiny cgroup_skb program and
// attaches it to the process's cgroup for a moment (it returns 1: packets
// pass).
func Available() error {
	if _, err := os.Stat(btfPath); err != nil {
		return fmt.Errorf("bpf: no kernel BTF at %s (kernel built without CONFIG_DEBUG_INFO_BTF?): %w", btfPath, err)
	}
	cg, err := OwnCgroup()
	if err != nil {
		return err
	}
	memlockErr := removeMemlock()
	prog, err := ebpf.NewProgram(&ebpf.ProgramSpec{
		Name: "modproxy_probe",
		Type: ebpf.CGroupSKB,
		Instructions: asm.Instructions{
			asm.Mov.Imm(asm.R0, 1),
			asm.Return(),
		},
		License: "Dual BSD/GPL",
	})
	if err != nil {
		if errors.Is(err, unix.EPERM) {
			return fmt.Errorf("bpf: loading a cgroup_skb program: %w (needs CAP_BPF, or CAP_SYS_ADMIN before Linux 5.8)%s", err, memlockErr)
		}
		return fmt.Errorf("bpf: loading a cgroup_skb program: %w%s", err, memlockErr)
	}
	defer prog.Close()
	l, err := link.AttachCgroup(link.CgroupOptions{Path: cg, Attach: ebpf.AttachCGroupInetEgress, Program: prog})
	if err != nil {
		if errors.Is(err, unix.EPERM) || errors.Is(err, unix.EACCES) {
			return fmt.Errorf("bpf: attaching a cgroup_skb program to %s: %w (needs CAP_NET_ADMIN or CAP_SYS_ADMIN)", cg, err)
		}
		return fmt.Errorf("bpf: attaching a cgroup_skb program to %s: %w", cg, err)
	}
	return l.Close()
}

// removeMemlock lifts RLIMIT_MEMLOCK for kernels before 5.11, which
// charge BPF memory to it. Failing is not fatal (newer kernels charge the
// memory cgroup instead); the returned note is appended to load errors.
func removeMemlock() string {
	if err := rlimit.RemoveMemlock(); err != nil {
		return fmt.Sprintf("; note: raising RLIMIT_MEMLOCK failed: %v", err)
	}
	return ""
}

// OwnCgroup returns the directory of this process's cgroup v2, from
// /proc/self/cgroup and the cgroup2 mount in /proc/self/mountinfo.
func OwnCgroup() (string, error) {
	data, err := os.ReadFile("/proc/self/cgroup")
	if err != nil {
		return "", fmt.Errorf("bpf: reading own cgroup: %w", err)
	}
	rel, found := "", false
	for line := range strings.SplitSeq(string(data), "\n") {
		if p, ok := strings.CutPrefix(line, "0::"); ok {
			rel, found = p, true
			break
		}
	}
	if !found {
		return "", errors.New("bpf: no cgroup v2 membership in /proc/self/cgroup (cgroup v1 only?)")
	}
	mnt, root, err := cgroup2Mount()
	if err != nil {
		return "", err
	}
	if root != "/" {
		rel = strings.TrimPrefix(rel, root)
	}
	return filepath.Join(mnt, rel), nil
}

// cgroup2Mount returns the mount point and the mount root of the first
// cgroup2 file system in /proc/self/mountinfo.
func cgroup2Mount() (mountPoint, root string, err error) {
	f, err := os.Open("/proc/self/mountinfo")
	if err != nil {
		return "", "", fmt.Errorf("bpf: reading mountinfo: %w", err)
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		// id parent major:minor root mountpoint options [optional...] - fstype source superopts
		pre, post, ok := strings.Cut(sc.Text(), " - ")
		if !ok {
			continue
		}
		if fs := strings.Fields(post); len(fs) == 0 || fs[0] != "cgroup2" {
			continue
		}
		fields := strings.Fields(pre)
		if len(fields) < 5 {
			continue
		}
		return unescapeMountinfo(fields[4]), unescapeMountinfo(fields[3]), nil
	}
	if err := sc.Err(); err != nil {
		return "", "", fmt.Errorf("bpf: reading mountinfo: %w", err)
	}
	return "", "", errors.New("bpf: no cgroup v2 (cgroup2) file system mounted")
}

// unescapeMountinfo undoes the octal escapes (\040 for space, …) of mountinfo paths.
func unescapeMountinfo(s string) string {
	if !strings.Contains(s, `\`) {
		return s
	}
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		if s[i] == '\\' && i+3 < len(s) {
			if n, err := strconv.ParseUint(s[i+1:i+4], 8, 8); err == nil {
				b.WriteByte(byte(n))
				i += 3
				continue
			}
		}
		b.WriteByte(s[i])
	}
	return b.String()
}

// Load loads the programs, attaches them to the cgroup and starts the
// event reader. Close releases everything.
func Load(opts Options) (*Probes, error) {
	if _, err := os.Stat(btfPath); err != nil {
		return nil, fmt.Errorf("bpf: no kernel BTF at %s: %w", btfPath, err)
	}
	cg := opts.CgroupPath
	if cg == "" {
		var err error
		if cg, err = OwnCgroup(); err != nil {
			return nil, err
		}
	}
	memlockErr := removeMemlock()
	spec, err := loadModproxy()
	if err != nil {
		return nil, fmt.Errorf("bpf: %w", err)
	}
	wakeup := opts.WakeupEvents
	if wakeup == 0 {
		wakeup = defaultWakeupEvents
	}
	if err := spec.Variables["wakeup_events"].Set(wakeup); err != nil {
		return nil, fmt.Errorf("bpf: setting wakeup_events: %w", err)
	}
	if err := spec.Variables["syn_retries"].Set(synRetries()); err != nil {
		return nil, fmt.Errorf("bpf: setting syn_retries: %w", err)
	}

	p := &Probes{
		cgroupPath: cg,
		onEvent:    opts.OnEvent,
		poll:       opts.PollInterval,
		done:       make(chan struct{}),
	}
	if p.poll <= 0 {
		p.poll = defaultPollInterval
	}
	if err := spec.LoadAndAssign(&p.objs, nil); err != nil {
		var ve *ebpf.VerifierError
		if errors.As(err, &ve) {
			return nil, fmt.Errorf("bpf: loading programs (verifier): %+v", ve)
		}
		if errors.Is(err, unix.EPERM) {
			return nil, fmt.Errorf("bpf: loading programs: %w (needs CAP_BPF)%s", err, memlockErr)
		}
		return nil, fmt.Errorf("bpf: loading programs: %w%s", err, memlockErr)
	}
	// RegisterSocket passes pointers to these types to the map.
	if ks, vs := p.objs.Sockets.KeySize(), p.objs.Sockets.ValueSize(); ks != 8 || vs != uint32(unsafe.Sizeof(modproxyRegistration{})) {
		p.closeResources()
		return nil, fmt.Errorf("bpf: sockets map has key/value sizes %d/%d, want 8/%d", ks, vs, unsafe.Sizeof(modproxyRegistration{}))
	}
	progs := []*ebpf.Program{p.objs.ModproxySockops, p.objs.ModproxyEgress, p.objs.ModproxyIngress}
	for _, prog := range progs {
		if info, err := prog.Info(); err == nil {
			if id, ok := info.ID(); ok {
				p.progIDs = append(p.progIDs, id)
			}
		}
	}
	for i, prog := range progs {
		l, err := link.AttachCgroup(link.CgroupOptions{Path: cg, Attach: attachTypes[i], Program: prog})
		if err != nil {
			p.closeResources()
			if errors.Is(err, unix.EPERM) || errors.Is(err, unix.EACCES) {
				return nil, fmt.Errorf("bpf: attaching %s to %s: %w (needs CAP_NET_ADMIN or CAP_SYS_ADMIN)", attachTypes[i], cg, err)
			}
			return nil, fmt.Errorf("bpf: attaching %s to %s: %w", attachTypes[i], cg, err)
		}
		p.links = append(p.links, l)
	}
	p.rd, err = ringbuf.NewReader(p.objs.Events)
	if err != nil {
		p.closeResources()
		return nil, fmt.Errorf("bpf: ring buffer reader: %w", err)
	}
	p.wake, p.wakeRC = pollableRing(p.objs.Events)
	go p.read()
	return p, nil
}

// pollableRing returns a duplicate of the ring buffer map's fd in Go's
// network poller, or nil if the poller does not take it.
//
// The reader waits for the programs' (batched) wakeups there rather than
// in ringbuf.Reader's own epoll_wait: a goroutine blocked in a system call
// keeps its P (one of GOMAXPROCS) until sysmon retakes it, which on a
// 2-CPU machine cost the proxy's other goroutines a P after every wakeup,
// kept sysmon polling every 20 µs, and added thread handoffs (futex
// wakeups, context switches): about 10 µs of CPU per new upstream
// connection in BenchmarkKernelColdFetch, more than the programs' run time.
func pollableRing(m *ebpf.Map) (*os.File, syscall.RawConn) {
	fd, err := unix.FcntlInt(uintptr(m.FD()), unix.F_DUPFD_CLOEXEC, 0)
	if err != nil {
		return nil, nil
	}
	// O_NONBLOCK is what makes os.NewFile register the fd with the poller
	// (it is a flag of the shared open file; the bpf(2) calls on the map
	// and ringbuf.Reader's epoll ignore it).
	if err := unix.SetNonblock(fd, true); err != nil {
		unix.Close(fd)
		return nil, nil
	}
	f := os.NewFile(uintptr(fd), "modproxy-ringbuf")
	// Deadlines work only on files in the poller.
	if err := f.SetReadDeadline(time.Time{}); err != nil {
		f.Close()
		return nil, nil
	}
	rc, err := f.SyscallConn()
	if err != nil {
		f.Close()
		return nil, nil
	}
	return f, rc
}

// synRetries reads net.ipv4.tcp_syn_retries (the kernel's own connect
// timeout), falling back to its default, 6.
func synRetries() uint32 {
	b, err := os.ReadFile("/proc/sys/net/ipv4/tcp_syn_retries")
	if err == nil {
		if n, err := strconv.ParseUint(strings.TrimSpace(string(b)), 10, 32); err == nil && n > 0 {
			return uint32(n)
		}
	}
	return 6
}

// read is the reader goroutine.
func (p *Probes) read() {
	defer close(p.done)
	if p.wake == nil {
		p.readBlocking()
		return
	}
	var rec ringbuf.Record
	for {
		// Flushes requested before this drain are complete after it.
		p.mu.Lock()
		flushed := p.flushCh
		p.flushCh = nil
		p.mu.Unlock()
		if !p.drain(&rec) {
			return
		}
		if flushed != nil {
			close(flushed)
		}
		// Wait for a wakeup from the programs, the poll interval, a Flush
		// (which moves the deadline into the past) or Close (which closes
		// p.wake), in the network poller.
		p.wake.SetReadDeadline(time.Now().Add(p.poll))
		p.mu.Lock()
		pending := p.flushCh != nil
		p.mu.Unlock()
		if pending {
			continue
		}
		err := p.wakeRC.Read(func(uintptr) bool { return p.stopping.Load() || p.rd.AvailableBytes() > 0 })
		if p.stopping.Load() || errors.Is(err, os.ErrClosed) {
			return
		}
	}
}

// drain delivers every record in the ring buffer without blocking. It
// returns false when the reader is closed.
func (p *Probes) drain(rec *ringbuf.Record) bool {
	// A deadline in the past: ReadInto returns the records present, then
	// os.ErrDeadlineExceeded, without waiting.
	p.rd.SetDeadline(time.Unix(1, 0))
	for {
		err := p.rd.ReadInto(rec)
		switch {
		case err == nil:
			p.deliver(rec.RawSample)
		case errors.Is(err, os.ErrDeadlineExceeded):
			return true
		case errors.Is(err, ringbuf.ErrFlushed):
			// Only readBlocking uses the reader's own flush.
		case errors.Is(err, ringbuf.ErrClosed), errors.Is(err, os.ErrClosed):
			return false
		default:
			p.parseErrors.Add(1)
			return true
		}
	}
}

func (p *Probes) deliver(b []byte) {
	ev, ok := decodeEvent(b)
	if !ok {
		p.parseErrors.Add(1)
		return
	}
	p.delivered.Add(1)
	if p.onEvent != nil {
		p.onEvent(ev)
	}
}

// readBlocking is the reader when the ring buffer's fd cannot be put in the
// network poller: it blocks in ringbuf.Reader's epoll_wait.
func (p *Probes) readBlocking() {
	var rec ringbuf.Record
	for {
		p.rd.SetDeadline(time.Now().Add(p.poll))
		err := p.rd.ReadInto(&rec)
		switch {
		case err == nil:
			p.deliver(rec.RawSample)
		case errors.Is(err, os.ErrDeadlineExceeded):
		case errors.Is(err, ringbuf.ErrFlushed):
			p.mu.Lock()
			if p.flushCh != nil {
				close(p.flushCh)
				p.flushCh = nil
			}
			p.mu.Unlock()
		case errors.Is(err, ringbuf.ErrClosed), errors.Is(err, os.ErrClosed):
			return
		default:
			// Unexpected (EINTR is retried inside); avoid spinning.
			p.parseErrors.Add(1)
			time.Sleep(p.poll)
		}
	}
}

// decodeEvent decodes a struct event record (little-endian: the objects are
// compiled for bpfel only).
func decodeEvent(b []byte) (Event, bool) {
	if len(b) < eventSize {
		return Event{}, false
	}
	le := binary.LittleEndian
	e := Event{
		KernelTime:    le.Uint64(b[0:]),
		Cookie:        le.Uint64(b[8:]),
		Dur:           time.Duration(le.Uint64(b[16:])),
		BytesAcked:    le.Uint64(b[24:]),
		BytesReceived: le.Uint64(b[32:]),
		UpstreamID:    le.Uint32(b[40:]),
		SRTT:          time.Duration(le.Uint32(b[48:])) * time.Microsecond,
		Retransmits:   le.Uint32(b[52:]),
		TLSVersion:    le.Uint16(b[56:]),
		Kind:          EventKind(b[58]),
		Purpose:       Purpose(b[59]),
		Rcode:         b[60],
		AlertLevel:    b[61],
		AlertDesc:     b[62],
		Reason:        ConnectFailReason(b[63]),
		AlertReceived: b[64] != 0,
		TCPState:      b[65],
	}
	seq := le.Uint32(b[44:])
	if e.Kind == EventDNS {
		e.DNSID = uint16(seq)
	} else {
		e.ReqSeq = seq
	}
	if e.Kind < EventConnect || e.Kind > EventClose {
		return Event{}, false
	}
	return e, true
}

// RegisterSocket tells the programs to measure the socket fd, which must
// not be connected yet (call it from net.Dialer.Control, before connect()).
// The registration is consumed by the socket's first measured operation;
// later state lives in socket storage and dies with the socket. It returns
// the socket cookie, which identifies the socket's events.
func (p *Probes) RegisterSocket(fd uintptr, upstreamID uint32, purpose Purpose) (uint64, error) {
	p.life.RLock()
	defer p.life.RUnlock()
	if p.closed {
		return 0, ErrClosed
	}
	cookie, err := SocketCookie(fd)
	if err != nil {
		return 0, err
	}
	reg := modproxyRegistration{UpstreamId: upstreamID, Purpose: uint8(purpose)}
	// Pointers skip cilium/ebpf's reflection-based marshalling (~0.3 µs
	// and four allocations per socket); both types match the map's BTF.
	if err := p.objs.Sockets.Update(unsafe.Pointer(&cookie), unsafe.Pointer(&reg), ebpf.UpdateAny); err != nil {
		return 0, fmt.Errorf("bpf: registering socket %d: %w", cookie, err)
	}
	return cookie, nil
}

// ErrNotMeasured is returned by [Probes.LastIngress] for a socket the
// programs do not measure (never registered, or not connected yet).
var ErrNotMeasured = errors.New("bpf: socket not measured")

// LastIngress returns the kernel time (see MonotonicNow) at which the
// measured TCP socket fd last received a packet carrying payload, 0 if none
// yet. Unlike a userspace read timer it sees packets that userspace has not
// read yet (a segment behind a hole waits in the out-of-order queue): a
// flow is stalled only when nothing arrives at all.
func (p *Probes) LastIngress(fd uintptr) (uint64, error) {
	p.life.RLock()
	defer p.life.RUnlock()
	if p.closed {
		return 0, ErrClosed
	}
	// Socket storage is looked up from userspace by the socket's fd.
	key := int32(fd)
	var st modproxyConnState
	if err := p.objs.Conns.Lookup(unsafe.Pointer(&key), unsafe.Pointer(&st)); err != nil {
		if errors.Is(err, ebpf.ErrKeyNotExist) {
			return 0, ErrNotMeasured
		}
		return 0, fmt.Errorf("bpf: socket storage of fd %d: %w", fd, err)
	}
	return st.LastInTs, nil
}

// Control returns a net.Dialer.Control function that registers every socket
// the dialer creates. A failed registration is counted in
// Stats.RegisterErrors and does not fail the dial: telemetry never breaks
// traffic.
func (p *Probes) Control(upstreamID uint32, purpose Purpose) func(network, address string, c syscall.RawConn) error {
	return func(_, _ string, c syscall.RawConn) error {
		var err error
		if cerr := c.Control(func(fd uintptr) {
			_, err = p.RegisterSocket(fd, upstreamID, purpose)
		}); cerr != nil {
			err = cerr
		}
		if err != nil {
			p.regErrors.Add(1)
		}
		return nil
	}
}

// SocketCookie returns the kernel's socket cookie (SO_COOKIE) of fd: a
// unique, never reused identifier of the socket, the key of its events.
func SocketCookie(fd uintptr) (uint64, error) {
	c, err := unix.GetsockoptUint64(int(fd), unix.SOL_SOCKET, unix.SO_COOKIE)
	if err != nil {
		return 0, fmt.Errorf("bpf: reading SO_COOKIE: %w", err)
	}
	return c, nil
}

// MonotonicNow returns CLOCK_MONOTONIC in nanoseconds, the clock of
// Event.KernelTime. Unlike unix.ClockGettime it makes no system call (the
// transport reads it twice per request): it adds the Go runtime's
// monotonic clock (CLOCK_MONOTONIC through the vDSO on Linux) to one
// reading of CLOCK_MONOTONIC taken at start-up.
func MonotonicNow() uint64 { return monoBase + uint64(time.Since(monoStart)) }

// monoStart and monoBase pair a Go time with CLOCK_MONOTONIC read around
// it: the closest of a few brackets, so that a preemption during start-up
// cannot skew every later reading.
var monoStart, monoBase = func() (time.Time, uint64) {
	clock := func() uint64 {
		var ts unix.Timespec
		if err := unix.ClockGettime(unix.CLOCK_MONOTONIC, &ts); err != nil {
			panic("bpf: CLOCK_MONOTONIC: " + err.Error()) // cannot fail on Linux
		}
		return uint64(ts.Nano())
	}
	var start time.Time
	var base, width uint64
	for i := 0; i < 8; i++ {
		before := clock()
		now := time.Now()
		after := clock()
		if i == 0 || after-before < width {
			start, base, width = now, before+(after-before)/2, after-before
		}
	}
	return start, base
}()

// KernelTimeToTime converts an Event.KernelTime to wall-clock time.
func KernelTimeToTime(kt uint64) time.Time {
	now := time.Now()
	return now.Add(-time.Duration(MonotonicNow() - kt))
}

// Flush delivers every event submitted before the call to OnEvent before
// returning, without waiting for the next poll.
func (p *Probes) Flush() error {
	p.flushMu.Lock()
	defer p.flushMu.Unlock()
	p.life.RLock()
	if p.closed {
		p.life.RUnlock()
		return ErrClosed
	}
	ch, err := p.startFlush()
	p.life.RUnlock()
	if err != nil {
		return err
	}
	select {
	case <-ch:
		return nil
	case <-p.done:
		return ErrClosed
	}
}

// startFlush asks the reader to deliver what is pending; the returned
// channel is closed when it has. The caller holds flushMu and keeps the
// reader open.
func (p *Probes) startFlush() (<-chan struct{}, error) {
	ch := make(chan struct{})
	p.mu.Lock()
	p.flushCh = ch
	p.mu.Unlock()
	if p.wake != nil {
		// Interrupts the reader's wait (it checks flushCh after setting
		// its own deadline, so a flush between the two is not missed).
		if err := p.wake.SetReadDeadline(time.Unix(1, 0)); err != nil {
			return nil, fmt.Errorf("bpf: flush: %w", err)
		}
		return ch, nil
	}
	if err := p.rd.Flush(); err != nil {
		return nil, fmt.Errorf("bpf: flush: %w", err)
	}
	return ch, nil
}

// Stats returns the counters since Load.
func (p *Probes) Stats() Stats {
	p.life.RLock()
	defer p.life.RUnlock()
	var s Stats
	if p.closed {
		s = p.finalStats
	} else {
		s = p.kernelStats()
	}
	s.Delivered = p.delivered.Load()
	s.ParseErrors = p.parseErrors.Load()
	s.RegisterErrors = p.regErrors.Load()
	return s
}

// kernelStats sums the per-CPU counters of the programs.
func (p *Probes) kernelStats() Stats {
	var s Stats
	sum := func(slot uint32) uint64 {
		var vals []uint64
		if err := p.objs.Stats.Lookup(slot, &vals); err != nil {
			return 0
		}
		var n uint64
		for _, v := range vals {
			n += v
		}
		return n
	}
	s.Events = sum(statEvents)
	s.Dropped = sum(statDropped)
	s.DNSUnmatched = sum(statDNSUnmatched)
	return s
}

// CgroupPath returns the cgroup v2 directory the programs are attached to.
func (p *Probes) CgroupPath() string { return p.cgroupPath }

// ProgramIDs returns the kernel IDs of the probes' programs (sockops,
// egress, ingress), also after Close.
func (p *Probes) ProgramIDs() []ebpf.ProgramID { return append([]ebpf.ProgramID(nil), p.progIDs...) }

// Attached returns the IDs of the probes' programs currently attached to
// their cgroup, queried from the kernel (BPF_PROG_QUERY): three while
// loaded, none after Close.
func (p *Probes) Attached() ([]ebpf.ProgramID, error) {
	all, err := AttachedPrograms(p.cgroupPath)
	if err != nil {
		return nil, err
	}
	var ours []ebpf.ProgramID
	for _, id := range all {
		for _, mine := range p.progIDs {
			if id == mine {
				ours = append(ours, id)
			}
		}
	}
	return ours, nil
}

// AttachedPrograms lists the programs of any owner attached to the
// sockops, cgroup_skb egress and cgroup_skb ingress hooks of a cgroup.
func AttachedPrograms(cgroupPath string) ([]ebpf.ProgramID, error) {
	f, err := os.Open(cgroupPath)
	if err != nil {
		return nil, fmt.Errorf("bpf: %w", err)
	}
	defer f.Close()
	var ids []ebpf.ProgramID
	for _, at := range attachTypes {
		res, err := link.QueryPrograms(link.QueryOptions{Target: int(f.Fd()), Attach: at})
		if err != nil {
			return nil, fmt.Errorf("bpf: querying %s programs of %s: %w", at, cgroupPath, err)
		}
		for _, ap := range res.Programs {
			ids = append(ids, ap.ID)
		}
	}
	return ids, nil
}

// Close detaches the programs, stops the reader and frees the maps. It is
// idempotent.
func (p *Probes) Close() error {
	p.closeOnce.Do(func() {
		p.flushMu.Lock()
		defer p.flushMu.Unlock()
		p.life.Lock()
		defer p.life.Unlock()
		p.closed = true
		p.closeErr = p.closeResources()
	})
	return p.closeErr
}

func (p *Probes) closeResources() error {
	var errs []error
	for _, l := range p.links {
		if err := l.Close(); err != nil {
			errs = append(errs, fmt.Errorf("bpf: detaching: %w", err))
		}
	}
	p.links = nil
	if p.rd != nil {
		// The programs are detached: deliver what they left in the ring
		// buffer before closing it (bounded, in case OnEvent blocks).
		if ch, err := p.startFlush(); err == nil {
			select {
			case <-ch:
			case <-time.After(time.Second):
			}
		}
		p.finalStats = p.kernelStats()
		if p.wake != nil {
			// Stop the reader (a deadline in the past ends its wait; the
			// wait's callback sees stopping) and only then close what it
			// uses: closing the file would not wake a pending RawRead.
			p.stopping.Store(true)
			p.wake.SetReadDeadline(time.Unix(1, 0))
			<-p.done
			p.wake.Close()
		}
		if err := p.rd.Close(); err != nil {
			errs = append(errs, fmt.Errorf("bpf: closing reader: %w", err))
		}
		<-p.done // readBlocking returns once the ring buffer is closed
	}
	if err := p.objs.Close(); err != nil {
		errs = append(errs, fmt.Errorf("bpf: closing objects: %w", err))
	}
	return errors.Join(errs...)
}
