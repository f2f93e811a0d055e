// Package bpf measures the network path of modproxy's own upstream
// connections in the kernel, with eBPF programs attached to the proxy's
// cgroup, and streams the measurements to userspace as [Event] values.
//
// # What is measured
//
// Only sockets that modproxy registers are measured: the upstream dialer and
// the DNS resolver's dialer call [Probes.RegisterSocket] (or use
// [Probes.Control] as their net.Dialer.Control) after socket() and before
// connect(), which hands the socket's cookie (SO_COOKIE) to the programs
// (sockets connected before Load are not measured). Any other socket in the
// cgroup is ignored after one socket-storage lookup per packet (UDP: plus
// one hash lookup). Per-connection state lives in
// socket-local storage (BPF_MAP_TYPE_SK_STORAGE), which the kernel frees with
// the socket, so nothing leaks.
//
//   - TCP (sockops program): connect time from the SYN (TCP_CONNECT_CB) to
//     ESTABLISHED ([EventConnect]), retransmissions ([EventRetransmit], SYN
//     retransmissions included), connect failures by reason
//     ([EventConnectFailed]: refused when the peer answered the SYN with a
//     RST, timeout when the kernel gave up after tcp_syn_retries SYN
//     retransmissions, closed when the application closed the socket first —
//     a dial timeout or a cancelled context; ICMP errors also land here because
//     the kernel's socket error is not readable from these program types), and
//     the end of the connection with its smoothed RTT, retransmission count and
//     byte counts ([EventClose], reported when the socket leaves ESTABLISHED).
//   - TLS (cgroup_skb egress/ingress programs, reading only the first bytes of
//     each TCP payload, i.e. record headers): ClientHello to ServerHello
//     ([EventTLSServerHello], with the negotiated version from the
//     supported_versions extension), ClientHello to the end of the handshake
//     ([EventTLSHandshakeDone]: TLS 1.3, the client's Finished flight; TLS 1.2,
//     the server's ChangeCipherSpec/Finished flight, or the client's
//     ChangeCipherSpec on an abbreviated handshake), and plaintext alerts in
//     either direction ([EventTLSAlert]; alerts after the handshake are
//     encrypted and invisible).
//   - HTTP/1.1 time to first byte ([EventTTFB]): the first egress payload on an
//     idle connection (after the TLS handshake, if any) starts request n of
//     the connection; the first ingress payload after it is its first byte.
//     Event.ReqSeq numbers the requests on a connection (1, 2, …) so that a
//     sample can be matched to the request that userspace sent.
//     HTTP/2 time to first byte is not measurable from packets: the server's
//     SETTINGS frames, window updates and responses of other streams arrive
//     first, so on h2 connections use connect, TLS, retransmit and RTT events
//     only and ignore TTFB. TLS 1.3 servers that send session tickets after
//     the client's Finished (most non-Go servers) make the first request's
//     sample too early; consumers should drop kernel TTFB samples that do not
//     fall inside the userspace request interval.
//   - DNS over UDP ([EventDNS]) on sockets registered with [PurposeDNS]: a
//     query (QR=0) records {cookie, id} → time; the response (QR=1) gives the
//     latency of that single exchange and its RCODE. Unlike a userspace timer
//     around a whole lookup, this shows resolver retries individually.
//
// Event.KernelTime is bpf_ktime_get_ns() (CLOCK_MONOTONIC) at the end of the
// measured interval; [MonotonicNow] reads the same clock in userspace, so the
// gap between the kernel seeing a first byte and the Go code getting it (the
// runtime delay: scheduling, decryption) can be computed.
//
// # Delivery
//
// Events go through a BPF ring buffer. Waking the reader for every event
// costs far more than the programs themselves: about 40% more CPU per
// loopback keep-alive request in BenchmarkKeepAlive, against about 1 µs of
// program time per request (~3%) with batching. So the programs submit with
// BPF_RB_NO_WAKEUP and force a wakeup only every [Options.WakeupEvents]
// events per CPU; the reader also polls every
// [Options.PollInterval] (100 ms by default). The reader waits in Go's
// network poller (on a duplicate of the ring buffer's fd), not in a blocking
// epoll_wait, which would hold one of the runtime's Ps for the whole wait.
// Events therefore reach
// [Options.OnEvent] up to one poll interval late, except the few that a
// fallback decision waits for (a failed connect, a SYN retransmit, a TLS
// alert), which wake the reader at once; [Probes.Flush] delivers
// everything pending synchronously. Ring buffer reservation failures are
// counted as dropped events and records that cannot be decoded as parse
// errors ([Probes.Stats]).
//
// # Requirements
//
// Linux 5.8 or later with BTF (/sys/kernel/btf/vmlinux), a cgroup v2
// hierarchy, and the capabilities CAP_BPF (load programs and maps) and
// CAP_NET_ADMIN (attach sockops and cgroup_skb programs to a cgroup;
// CAP_SYS_ADMIN also allows it); root has both. CAP_PERFMON is
// not needed: these programs use no tracing helpers. By default the programs
// attach to the process's own cgroup v2 directory, found from
// /proc/self/cgroup and /proc/self/mountinfo; attaching needs no write access
// to it. [Available] reports why the probes cannot run here. The cgroup_skb
// programs always return 1: they never drop or modify a packet.
//
// # Regenerating
//
// The C source is modproxy.bpf.c; the compiled object and its Go bindings
// (modproxy_bpfel.o, modproxy_bpfel.go, little-endian targets only) are
// generated by bpf2go and committed, so building needs no C toolchain.
// Regenerate with `go generate ./bpf/` (clang and llvm-strip required; see
// gen.go); the output is deterministic for a given clang version.
package bpf
