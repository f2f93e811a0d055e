package netprobe

import (
	"syscall"
	"time"

	"github.com/modproxy/modproxy/bpf"
)

// Kernel stall detection: while a response body Read waits, a timer checks
// the connection's last payload arrival as the kernel saw it (bpf
// LastIngress, read by the socket's fd). When nothing has arrived for
// KernelStallAfter, and the Read has waited as long, the flow is dead: the
// request is aborted with ErrKernelStall (decision "abandoned",
// "kernel_stall") so that the caller can go on to the next upstream long
// before IdleBodyTimeout. Packets that arrive but cannot be read yet (a
// segment behind a lost one) keep the flow alive: that is loss, not a
// stall, and the idle timeout still guards it.

// watchStall arms the kernel stall watch of b, if the kernel probes
// measure its connection.
func (b *body) watchStall(p *Probe, after time.Duration) {
	k := p.kernel.Load()
	if after <= 0 || k == nil {
		return
	}
	b.st.mu.Lock()
	kc := b.st.t.info.kc
	b.st.mu.Unlock()
	if kc == nil || kc.raw == nil {
		return
	}
	b.stallAfter, b.stallK, b.stallConn = after, k, kc
	b.stallTimer = time.AfterFunc(after, b.onStallCheck)
	b.stallTimer.Stop()
}

// onStallCheck runs when a Read may have waited stallAfter.
func (b *body) onStallCheck() {
	started := b.stallReading.Load()
	if started == 0 || b.stalled.Load() {
		return
	}
	started--
	last, ok := b.stallK.lastIngress(b.stallConn)
	if !ok {
		return // the socket is gone or unmeasured: leave it to the idle timeout
	}
	now := bpf.MonotonicNow()
	from := max(last, started)
	after := uint64(b.stallAfter)
	if now-from < after {
		// Something arrived (or the Read is younger): look again when the
		// quiet period could reach stallAfter.
		b.stallTimer.Reset(time.Duration(from + after - now))
		return
	}
	if b.stallReading.Load() != started+1 {
		return // that Read ended meanwhile
	}
	b.stalled.Store(true)
	up := b.st.upstream
	b.st.p.health.RecordDecision(up, "abandoned", ReasonKernelStall)
	b.st.p.health.kernelStall(up)
	b.cancel(ErrKernelStall)
}

// lastIngress is the kernel time of the last payload arrival on kc.
func (k *Kernel) lastIngress(kc *kernelConn) (uint64, bool) {
	var ts uint64
	var lerr error
	if err := kc.raw.Control(func(fd uintptr) { ts, lerr = k.probes.LastIngress(fd) }); err != nil || lerr != nil {
		return 0, false
	}
	return ts, true
}

// rawConnOf returns c's syscall.RawConn, nil if it has none.
func rawConnOf(c any) syscall.RawConn {
	sc, ok := c.(syscall.Conn)
	if !ok {
		return nil
	}
	raw, err := sc.SyscallConn()
	if err != nil {
		return nil
	}
	return raw
}
