package bpf

import (
	"errors"
	"fmt"
	"time"
)

// ErrNotSupported is wrapped by the errors of [Available] and [Load] on
// platforms where the probes cannot exist at all (not Linux, big-endian).
var ErrNotSupported = errors.New("eBPF needs Linux")

// ErrClosed is returned by methods of a closed [Probes].
var ErrClosed = errors.New("bpf: probes closed")

// Purpose says what a registered socket is used for, and so which parser
// the programs apply to its packets.
type Purpose uint8

const (
	// PurposeTCP is an upstream TCP connection (HTTP/1.1 or HTTP/2, with or
	// without TLS): connect, retransmit, close, TLS and TTFB events.
	PurposeTCP Purpose = 1
	// PurposeDNS is a UDP socket of the DNS resolver: DNS events.
	PurposeDNS Purpose = 2
)

func (p Purpose) String() string {
	switch p {
	case PurposeTCP:
		return "tcp"
	case PurposeDNS:
		return "dns"
	}
	return fmt.Sprintf("purpose(%d)", uint8(p))
}

// EventKind says what an [Event] measured.
type EventKind uint8

const (
	EventConnect          EventKind = 1 // SYN sent → ESTABLISHED; Dur is the connect time
	EventConnectFailed    EventKind = 2 // SYN sent → CLOSE without ESTABLISHED; see Reason
	EventTLSServerHello   EventKind = 3 // ClientHello sent → ServerHello received
	EventTLSHandshakeDone EventKind = 4 // ClientHello sent → handshake complete
	EventTLSAlert         EventKind = 5 // plaintext TLS alert; Dur is since ClientHello if during the handshake
	EventTTFB             EventKind = 6 // HTTP/1.1 request's first egress byte → first response byte
	EventDNS              EventKind = 7 // DNS query sent → response received
	EventRetransmit       EventKind = 8 // one TCP retransmission (SYN included)
	EventClose            EventKind = 9 // connection left ESTABLISHED; SRTT, Retransmits, byte counts
)

var kindNames = [...]string{
	EventConnect:          "connect",
	EventConnectFailed:    "connect_failed",
	EventTLSServerHello:   "tls_server_hello",
	EventTLSHandshakeDone: "tls_handshake_done",
	EventTLSAlert:         "tls_alert",
	EventTTFB:             "ttfb",
	EventDNS:              "dns",
	EventRetransmit:       "retransmit",
	EventClose:            "close",
}

func (k EventKind) String() string {
	if int(k) < len(kindNames) && kindNames[k] != "" {
		return kindNames[k]
	}
	return fmt.Sprintf("kind(%d)", uint8(k))
}

// ConnectFailReason classifies an [EventConnectFailed].
type ConnectFailReason uint8

const (
	ReasonUnknown ConnectFailReason = 0
	// ReasonRefused: the peer answered the SYN with a RST.
	ReasonRefused ConnectFailReason = 1
	// ReasonTimeout: the kernel gave up after net.ipv4.tcp_syn_retries
	// retransmitted SYNs.
	ReasonTimeout ConnectFailReason = 2
	// ReasonClosed: the socket was closed before it was established, usually
	// by the application (dial timeout, cancelled context); ICMP errors
	// (host/network unreachable) also end here.
	ReasonClosed ConnectFailReason = 3
)

func (r ConnectFailReason) String() string {
	switch r {
	case ReasonUnknown:
		return "unknown"
	case ReasonRefused:
		return "refused"
	case ReasonTimeout:
		return "timeout"
	case ReasonClosed:
		return "closed"
	}
	return fmt.Sprintf("reason(%d)", uint8(r))
}

// TLS versions as they appear on the wire.
const (
	VersionTLS10 = 0x0301
	VersionTLS11 = 0x0302
	VersionTLS12 = 0x0303
	VersionTLS13 = 0x0304
)

// Event is one kernel measurement on a registered socket.
type Event struct {
	Kind       EventKind
	Cookie     uint64 // socket cookie (SO_COOKIE) of the connection or DNS socket
	UpstreamID uint32 // as given to RegisterSocket
	Purpose    Purpose
	// Dur is the measured interval (connect time, TLS phase, TTFB, DNS
	// latency; for EventClose the connection's lifetime; 0 for
	// EventRetransmit).
	Dur time.Duration
	// KernelTime is bpf_ktime_get_ns() (CLOCK_MONOTONIC, see MonotonicNow)
	// at the end of the interval; KernelTime - Dur is its start.
	KernelTime uint64
	// ReqSeq numbers the HTTP/1.1 requests on a connection, from 1 (EventTTFB;
	// on EventClose the number of requests seen).
	ReqSeq uint32
	DNSID  uint16 // EventDNS: the query ID
	Rcode  uint8  // EventDNS: the response code (0 NOERROR, 2 SERVFAIL, 3 NXDOMAIN, …)
	// TLSVersion is the negotiated version (VersionTLS12, VersionTLS13),
	// known from EventTLSServerHello on.
	TLSVersion uint16
	AlertLevel uint8 // EventTLSAlert: 1 warning, 2 fatal
	AlertDesc  uint8 // EventTLSAlert: description (40 handshake_failure, 70 protocol_version, …)
	// AlertReceived: the alert came from the peer (false: we sent it).
	AlertReceived bool
	Reason        ConnectFailReason // EventConnectFailed
	// SRTT is the smoothed round-trip time (EventConnect, EventRetransmit,
	// EventClose, and EventTTFB: the connection's SRTT when the response's
	// first byte arrived).
	SRTT time.Duration
	// Retransmits counts the connection's retransmitted segments so far.
	Retransmits   uint32
	TCPState      uint8 // EventRetransmit: state then (2 SYN_SENT); EventConnectFailed: state before CLOSE; EventClose: new state
	BytesAcked    uint64
	BytesReceived uint64
}

// Start returns the kernel time at which the measured interval began.
func (e Event) Start() uint64 { return e.KernelTime - uint64(e.Dur) }

func (e Event) String() string {
	s := fmt.Sprintf("%s cookie=%d upstream=%d dur=%s", e.Kind, e.Cookie, e.UpstreamID, e.Dur)
	switch e.Kind {
	case EventConnect:
		s += fmt.Sprintf(" srtt=%s retrans=%d", e.SRTT, e.Retransmits)
	case EventConnectFailed:
		s += fmt.Sprintf(" reason=%s retrans=%d", e.Reason, e.Retransmits)
	case EventTLSServerHello, EventTLSHandshakeDone:
		s += fmt.Sprintf(" version=%#04x", e.TLSVersion)
	case EventTLSAlert:
		s += fmt.Sprintf(" level=%d desc=%d received=%t", e.AlertLevel, e.AlertDesc, e.AlertReceived)
	case EventTTFB:
		s += fmt.Sprintf(" req=%d", e.ReqSeq)
	case EventDNS:
		s += fmt.Sprintf(" id=%d rcode=%d", e.DNSID, e.Rcode)
	case EventRetransmit:
		s += fmt.Sprintf(" total=%d state=%d", e.Retransmits, e.TCPState)
	case EventClose:
		s += fmt.Sprintf(" srtt=%s retrans=%d reqs=%d acked=%d received=%d",
			e.SRTT, e.Retransmits, e.ReqSeq, e.BytesAcked, e.BytesReceived)
	}
	return s
}

// Options configure [Load].
type Options struct {
	// CgroupPath is the cgroup v2 directory to attach to. Default: this
	// process's own cgroup v2 directory (see OwnCgroup).
	CgroupPath string
	// OnEvent is called from the reader goroutine for every event, in
	// order; it must not block for long. Nil discards events (they are
	// still counted).
	OnEvent func(Event)
	// PollInterval bounds how long an event waits in the ring buffer
	// before the reader picks it up. Default 100 ms.
	PollInterval time.Duration
	// WakeupEvents: besides the poll, the programs wake the reader every
	// WakeupEvents events per CPU (1 wakes it for every event, which costs
	// far more CPU than the programs do). Default 32; the ring buffer holds
	// about 3,000 events.
	WakeupEvents uint32
}

// Stats are the probes' counters since Load.
type Stats struct {
	Events      uint64 // events submitted by the programs
	Delivered   uint64 // events decoded and passed to OnEvent
	Dropped     uint64 // ring buffer reservation failures (events lost in the kernel)
	ParseErrors uint64 // records userspace could not decode
	// DNSUnmatched counts DNS responses on registered sockets without a
	// recorded query (late duplicates, queries evicted from the table).
	DNSUnmatched   uint64
	RegisterErrors uint64 // failed registrations through Control
}
