//go:build ignore

// SPDX-License-Identifier: GPL-2.0 OR BSD-2-Clause
//
// modproxy network-path probes: sockops + cgroup_skb programs that time the
// phases of modproxy's own upstream connections (TCP connect, TLS handshake,
// HTTP/1.1 time to first byte, DNS over UDP) and report them through a ring
// buffer. Only sockets registered by userspace (by socket cookie) are
// measured; every other socket costs one storage lookup and one hash lookup
// per packet and is otherwise ignored. cgroup_skb programs always return 1:
// they never drop or alter a packet.

#include "vmlinux.h"
#include "bpf_helpers.h"
#include "bpf_endian.h"

char __license[] SEC("license") = "Dual BSD/GPL";

#define ETH_P_IP 0x0800
#define ETH_P_IPV6 0x86DD
#define IPPROTO_TCP_ 6
#define IPPROTO_UDP_ 17

#define SOL_TCP_ 6
#define TCP_SYNCNT_ 7

#define TCPHDR_FIN 0x01
#define TCPHDR_SYN 0x02
#define TCPHDR_RST 0x04

// Socket purposes (Purpose in Go).
#define PURPOSE_TCP 1
#define PURPOSE_DNS 2

// Event kinds (EventKind in Go).
enum event_kind {
	EV_CONNECT = 1,
	EV_CONNECT_FAILED = 2,
	EV_TLS_SERVER_HELLO = 3,
	EV_TLS_HANDSHAKE_DONE = 4,
	EV_TLS_ALERT = 5,
	EV_TTFB = 6,
	EV_DNS = 7,
	EV_RETRANSMIT = 8,
	EV_CLOSE = 9,
};

// Connect failure reasons (ConnectFailReason in Go).
enum fail_reason {
	FAIL_UNKNOWN = 0,
	FAIL_REFUSED = 1,   // RST received in SYN_SENT
	FAIL_TIMEOUT = 2,   // kernel gave up after tcp_syn_retries SYN retransmits
	FAIL_CLOSED = 3,    // closed before established (application timeout/cancel, or ICMP error)
};

// TLS progress on a TCP connection.
enum tls_state {
	TLS_UNKNOWN = 0,     // no payload yet
	TLS_PLAIN = 1,       // first egress payload was not a ClientHello
	TLS_CH_SENT = 2,     // ClientHello sent, waiting for ServerHello
	TLS_SH_RCVD = 3,     // ServerHello received, waiting for the client's next flight
	TLS_WAIT_SERVER_FIN = 4, // TLS 1.2 full handshake: client flight sent, waiting for server CCS
	TLS_DONE = 5,        // handshake finished (or failed); payloads are application data
};

// Connection flags.
#define CF_ESTABLISHED 0x01
#define CF_RST_SEEN 0x02
#define CF_CLOSE_SENT 0x04
#define CF_AWAITING 0x08    // a request was sent, its first response byte not yet seen
#define CF_FAILED_SENT 0x10

// Statistic slots (per-CPU array).
enum stat_slot {
	STAT_EVENTS = 0,    // events submitted
	STAT_DROPPED = 1,   // ring buffer reserve failures
	STAT_DNS_UNMATCHED = 2, // DNS responses with no recorded query
	STAT_MAX = 4,
};

// Set by userspace before load.
volatile const __u32 wakeup_events = 32;    // force a wakeup every this many events per CPU
volatile const __u32 syn_retries = 6;       // net.ipv4.tcp_syn_retries, for kernels < 6.0

struct registration {
	__u32 upstream_id;
	__u8 purpose;
	__u8 _pad[3];
};

struct conn_state {
	__u64 cookie;
	__u64 connect_ts;
	__u64 ch_ts;       // ClientHello sent
	__u64 req_ts;      // current request's first egress payload
	__u64 last_in_ts;  // last ingress packet carrying payload (stall detection;
			   // read by userspace through the socket's fd)
	__u32 upstream_id;
	__u32 req_seq;
	__u32 retrans;
	__u16 tls_version;
	__u8 purpose;
	__u8 tls_state;
	__u8 flags;
	__u8 _pad[7];
};

struct dns_key {
	__u64 cookie;
	__u16 id;
	__u8 _pad[6];
};

struct event {
	__u64 ktime;         // bpf_ktime_get_ns() at the end of the measured interval
	__u64 cookie;
	__u64 dur_ns;
	__u64 bytes_acked;   // close
	__u64 bytes_received; // close
	__u32 upstream_id;
	__u32 req_seq;       // TTFB: request number on the connection (1-based); DNS: query id
	__u32 srtt_us;
	__u32 retrans;       // total retransmits on the connection so far
	__u16 tls_version;
	__u8 kind;
	__u8 purpose;
	__u8 rcode;
	__u8 alert_level;
	__u8 alert_desc;
	__u8 reason;
	__u8 ingress;        // alert: 1 if received from the peer, 0 if sent by us
	__u8 tcp_state;      // retransmit/failure: TCP state at the time
	__u8 _pad[6];
};

// Force BTF for the Go type generator.
volatile const struct event *const unused_event = 0;

struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 16384);
	__type(key, __u64);  // socket cookie
	__type(value, struct registration);
} sockets SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_SK_STORAGE);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, int);
	__type(value, struct conn_state);
} conns SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 4096);
	__type(key, struct dns_key);
	__type(value, __u64);
} dns_queries SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_RINGBUF);
	__uint(max_entries, 256 * 1024);
} events SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, STAT_MAX);
	__type(key, __u32);
	__type(value, __u64);
} stats SEC(".maps");

static __always_inline __u64 stat_inc(__u32 slot)
{
	__u64 *v = bpf_map_lookup_elem(&stats, &slot);
	if (!v)
		return 0;
	*v += 1;
	return *v;
}

static __always_inline struct event *ev_reserve(void)
{
	struct event *e = bpf_ringbuf_reserve(&events, sizeof(*e), 0);
	if (!e) {
		stat_inc(STAT_DROPPED);
		return NULL;
	}
	__builtin_memset(e, 0, sizeof(*e));
	return e;
}

// Batched wakeups: the reader polls every ~100 ms anyway, so wake it only
// every wakeup_events events per CPU. (Counting per CPU is much cheaper than
// bpf_ringbuf_query(BPF_RB_AVAIL_DATA), which reads the consumer position
// that the reader keeps writing from another CPU.)
static __always_inline void ev_submit(struct event *e)
{
	__u64 n = stat_inc(STAT_EVENTS);
	__u64 flags = BPF_RB_NO_WAKEUP;
	if (wakeup_events && n % wakeup_events == 0)
		flags = BPF_RB_FORCE_WAKEUP;
	bpf_ringbuf_submit(e, flags);
}

// ev_submit_urgent delivers at once an event that a fallback decision waits
// for (a failed connect, a SYN retransmit, a TLS alert): they are rare, so
// waking the reader for each costs nothing measurable.
static __always_inline void ev_submit_urgent(struct event *e)
{
	stat_inc(STAT_EVENTS);
	bpf_ringbuf_submit(e, BPF_RB_FORCE_WAKEUP);
}

static __always_inline void ev_fill(struct event *e, struct conn_state *st, __u64 cookie,
				    __u8 kind, __u64 now, __u64 start)
{
	e->ktime = now;
	e->cookie = cookie;
	e->dur_ns = start && now > start ? now - start : 0;
	e->upstream_id = st->upstream_id;
	e->purpose = st->purpose;
	e->kind = kind;
	e->retrans = st->retrans;
	e->tls_version = st->tls_version;
}

static __always_inline void emit(struct conn_state *st, __u64 cookie, __u8 kind, __u64 now,
				 __u64 start)
{
	struct event *e = ev_reserve();
	if (!e)
		return;
	ev_fill(e, st, cookie, kind, now, start);
	if (kind == EV_TTFB)
		e->req_seq = st->req_seq;
	ev_submit(e);
}

/* ---------------------------------------------------------------- sockops */

SEC("sockops")
int modproxy_sockops(struct bpf_sock_ops *skops)
{
	__u32 op = skops->op;
	struct bpf_sock *sk;
	struct conn_state *st;
	__u64 cookie, now;

	if (op != BPF_SOCK_OPS_TCP_CONNECT_CB && op != BPF_SOCK_OPS_ACTIVE_ESTABLISHED_CB &&
	    op != BPF_SOCK_OPS_RETRANS_CB && op != BPF_SOCK_OPS_STATE_CB)
		return 1;

	sk = skops->sk;
	if (!sk)
		return 1;

	cookie = bpf_get_socket_cookie(skops);

	if (op == BPF_SOCK_OPS_TCP_CONNECT_CB) {
		struct registration *reg = bpf_map_lookup_elem(&sockets, &cookie);
		if (!reg)
			return 1;
		st = bpf_sk_storage_get(&conns, sk, 0, BPF_SK_STORAGE_GET_F_CREATE);
		if (!st)
			return 1;
		st->cookie = cookie;
		st->upstream_id = reg->upstream_id;
		st->purpose = reg->purpose;
		st->connect_ts = bpf_ktime_get_ns();
		// The registration is only a hand-off; per-socket state lives in
		// socket storage, which the kernel frees with the socket.
		bpf_map_delete_elem(&sockets, &cookie);
		bpf_sock_ops_cb_flags_set(skops, BPF_SOCK_OPS_RETRANS_CB_FLAG |
							 BPF_SOCK_OPS_STATE_CB_FLAG);
		return 1;
	}

	st = bpf_sk_storage_get(&conns, sk, 0, 0);
	if (!st)
		return 1;
	now = bpf_ktime_get_ns();

	switch (op) {
	case BPF_SOCK_OPS_ACTIVE_ESTABLISHED_CB: {
		st->flags |= CF_ESTABLISHED;
		struct event *e = ev_reserve();
		if (!e)
			return 1;
		ev_fill(e, st, cookie, EV_CONNECT, now, st->connect_ts);
		e->srtt_us = skops->srtt_us >> 3;
		e->retrans = skops->total_retrans;
		ev_submit(e);
		break;
	}
	case BPF_SOCK_OPS_RETRANS_CB: {
		st->retrans++;
		struct event *e = ev_reserve();
		if (!e)
			return 1;
		ev_fill(e, st, cookie, EV_RETRANSMIT, now, 0);
		e->retrans = skops->total_retrans;
		e->tcp_state = skops->state;
		e->srtt_us = skops->srtt_us >> 3;
		if (skops->state == BPF_TCP_SYN_SENT)
			ev_submit_urgent(e);
		else
			ev_submit(e);
		break;
	}
	case BPF_SOCK_OPS_STATE_CB: {
		__u32 oldstate = skops->args[0];
		__u32 newstate = skops->args[1];
		if (!(st->flags & CF_ESTABLISHED)) {
			if (newstate != BPF_TCP_CLOSE || (st->flags & CF_FAILED_SENT))
				break;
			st->flags |= CF_FAILED_SENT;
			struct event *e = ev_reserve();
			if (!e)
				return 1;
			ev_fill(e, st, cookie, EV_CONNECT_FAILED, now, st->connect_ts);
			e->retrans = skops->total_retrans;
			e->tcp_state = oldstate;
			// The kernel gives up after the socket's TCP_SYNCNT (default:
			// the sysctl) SYN retransmissions; bpf_getsockopt(TCP_SYNCNT)
			// needs Linux 6.0.
			int syncnt = 0;
			if (bpf_getsockopt(skops, SOL_TCP_, TCP_SYNCNT_, &syncnt, sizeof(syncnt)) ||
			    syncnt <= 0)
				syncnt = syn_retries;
			if (st->flags & CF_RST_SEEN)
				e->reason = FAIL_REFUSED;
			else if (skops->total_retrans >= (__u32)syncnt)
				e->reason = FAIL_TIMEOUT;
			else
				e->reason = FAIL_CLOSED;
			ev_submit_urgent(e);
			break;
		}
		// Report the end of the connection once, when it leaves
		// ESTABLISHED (we close: FIN_WAIT1; peer closes: CLOSE_WAIT; reset:
		// CLOSE), with the final smoothed RTT.
		if (oldstate != BPF_TCP_ESTABLISHED || (st->flags & CF_CLOSE_SENT))
			break;
		st->flags |= CF_CLOSE_SENT;
		struct event *e = ev_reserve();
		if (!e)
			return 1;
		ev_fill(e, st, cookie, EV_CLOSE, now, st->connect_ts);
		e->srtt_us = skops->srtt_us >> 3;
		e->retrans = skops->total_retrans;
		e->bytes_acked = skops->bytes_acked;
		e->bytes_received = skops->bytes_received;
		e->req_seq = st->req_seq;
		e->tcp_state = newstate;
		ev_submit(e);
		break;
	}
	}
	return 1;
}

/* ------------------------------------------------------------- cgroup_skb */

struct l4 {
	__u32 payload_off; // offset of the L4 payload from the network header
	__u32 payload_len;
	__u8 proto;
	__u8 tcp_flags;
};

// parse_l4 finds the TCP/UDP payload of an IPv4 or IPv6 packet (no IPv6
// extension headers). Returns 0 on success.
static __always_inline int parse_l4(struct __sk_buff *skb, struct l4 *l)
{
	__u32 off;

	if (skb->protocol == bpf_htons(ETH_P_IP)) {
		__u8 iph[10]; // version/IHL … protocol
		if (bpf_skb_load_bytes(skb, 0, iph, sizeof(iph)))
			return -1;
		off = (iph[0] & 0x0f) * 4;
		l->proto = iph[9];
	} else if (skb->protocol == bpf_htons(ETH_P_IPV6)) {
		__u8 nexthdr;
		if (bpf_skb_load_bytes(skb, 6, &nexthdr, 1))
			return -1;
		off = 40;
		l->proto = nexthdr;
	} else {
		return -1;
	}

	if (l->proto == IPPROTO_TCP_) {
		__u8 b[2]; // data offset byte, flags byte
		if (bpf_skb_load_bytes(skb, off + 12, b, 2))
			return -1;
		l->tcp_flags = b[1];
		off += (b[0] >> 4) * 4;
	} else if (l->proto == IPPROTO_UDP_) {
		off += 8;
	} else {
		return -1;
	}
	if (off > skb->len)
		return -1;
	l->payload_off = off;
	l->payload_len = skb->len - off;
	return 0;
}

// lookup returns the connection state of a registered socket. TCP state is
// created by sockops at connect time (which consumes the registration), so an
// unregistered TCP socket costs one socket-storage lookup; UDP state is
// created here on the first packet of a registered socket.
static __always_inline struct conn_state *lookup(struct __sk_buff *skb)
{
	struct bpf_sock *sk = skb->sk;
	struct conn_state *st;
	struct registration *reg;
	__u64 cookie;

	if (!sk)
		return NULL;
	sk = bpf_sk_fullsock(sk);
	if (!sk)
		return NULL;
	st = bpf_sk_storage_get(&conns, sk, 0, 0);
	if (st || sk->protocol != IPPROTO_UDP_)
		return st;
	cookie = bpf_get_socket_cookie(skb);
	reg = bpf_map_lookup_elem(&sockets, &cookie);
	if (!reg)
		return NULL;
	st = bpf_sk_storage_get(&conns, sk, 0, BPF_SK_STORAGE_GET_F_CREATE);
	if (!st)
		return NULL;
	st->cookie = cookie;
	st->upstream_id = reg->upstream_id;
	st->purpose = reg->purpose;
	bpf_map_delete_elem(&sockets, &cookie);
	return st;
}

static __always_inline void dns_packet(struct __sk_buff *skb, struct conn_state *st, __u64 cookie,
				       struct l4 *l, int ingress)
{
	__u8 h[4]; // id (2), flags (2)
	struct dns_key k = {};
	__u64 now = bpf_ktime_get_ns();

	if (l->proto != IPPROTO_UDP_ || l->payload_len < 12)
		return;
	if (bpf_skb_load_bytes(skb, l->payload_off, h, 4))
		return;
	k.cookie = cookie;
	k.id = ((__u16)h[0] << 8) | h[1];
	int qr = h[2] >> 7;

	if (!ingress) {
		if (qr == 0)
			bpf_map_update_elem(&dns_queries, &k, &now, BPF_ANY);
		return;
	}
	if (qr == 0)
		return;
	__u64 *ts = bpf_map_lookup_elem(&dns_queries, &k);
	if (!ts) {
		stat_inc(STAT_DNS_UNMATCHED);
		return;
	}
	__u64 start = *ts;
	bpf_map_delete_elem(&dns_queries, &k);

	struct event *e = ev_reserve();
	if (!e)
		return;
	ev_fill(e, st, cookie, EV_DNS, now, start);
	e->rcode = h[3] & 0x0f;
	e->req_seq = k.id;
	ev_submit(e);
}

#define TLS_CCS 20
#define TLS_ALERT 21
#define TLS_HANDSHAKE 22
#define TLS_APPDATA 23

// server_hello_version returns the negotiated version from a ServerHello that
// starts at payload offset off: supported_versions if present, else
// legacy_version. Returns 0 for a HelloRetryRequest.
static __always_inline __u16 server_hello_version(struct __sk_buff *skb, __u32 off, __u32 end)
{
	__u8 b[8];
	__u16 legacy;

	// 5 record header, 4 handshake header, 2 legacy_version, 32 random.
	if (bpf_skb_load_bytes(skb, off + 9, b, 2))
		return 0;
	legacy = ((__u16)b[0] << 8) | b[1];
	if (bpf_skb_load_bytes(skb, off + 11, b, 8))
		return legacy;
	// HelloRetryRequest: random is SHA-256("HelloRetryRequest") = CF 21 AD 74 E5 9A 61 11 ...
	if (b[0] == 0xcf && b[1] == 0x21 && b[2] == 0xad && b[3] == 0x74 && b[4] == 0xe5 &&
	    b[5] == 0x9a && b[6] == 0x61 && b[7] == 0x11)
		return 0;
	if (bpf_skb_load_bytes(skb, off + 43, b, 1))
		return legacy;
	__u32 p = off + 44 + b[0] + 2 + 1; // session id, cipher suite, compression
	if (bpf_skb_load_bytes(skb, p, b, 2))
		return legacy;
	__u32 ext_end = p + 2 + (((__u32)b[0] << 8) | b[1]);
	if (ext_end > end)
		ext_end = end;
	p += 2;
#pragma unroll
	for (int i = 0; i < 8; i++) {
		if (p + 4 > ext_end)
			break;
		if (bpf_skb_load_bytes(skb, p, b, 4))
			break;
		__u16 type = ((__u16)b[0] << 8) | b[1];
		__u16 len = ((__u16)b[2] << 8) | b[3];
		if (type == 0x002b && len == 2) {
			if (bpf_skb_load_bytes(skb, p + 4, b, 2))
				break;
			return ((__u16)b[0] << 8) | b[1];
		}
		p += 4 + len;
	}
	return legacy;
}

static __always_inline void tcp_packet(struct __sk_buff *skb, struct conn_state *st, __u64 cookie,
				       struct l4 *l, int ingress)
{
	__u8 h[7] = {}; // record type, version (2), length (2), first body bytes (2)
	__u64 now;

	if (l->proto != IPPROTO_TCP_)
		return;
	if (ingress && (l->tcp_flags & TCPHDR_RST) && !(st->flags & CF_ESTABLISHED))
		st->flags |= CF_RST_SEEN;
	if (l->payload_len == 0)
		return;
	now = bpf_ktime_get_ns();
	if (ingress)
		st->last_in_ts = now;
	if (l->payload_len >= 7) {
		if (bpf_skb_load_bytes(skb, l->payload_off, h, 7))
			return;
	} else if (bpf_skb_load_bytes(skb, l->payload_off, h, 1)) {
		return;
	}
	__u16 rec_len = ((__u16)h[3] << 8) | h[4];
	int is_tls_hdr = l->payload_len >= 7 && h[1] == 3;

	// Plaintext alerts (before encryption): record length is exactly 2.
	if (is_tls_hdr && h[0] == TLS_ALERT && rec_len == 2 && st->tls_state != TLS_PLAIN) {
		struct event *e = ev_reserve();
		if (e) {
			ev_fill(e, st, cookie, EV_TLS_ALERT, now,
				st->tls_state < TLS_DONE ? st->ch_ts : 0);
			e->alert_level = h[5];
			e->alert_desc = h[6];
			e->ingress = ingress;
			ev_submit_urgent(e);
		}
		if (st->tls_state < TLS_DONE)
			st->tls_state = TLS_DONE;
		return;
	}

	switch (st->tls_state) {
	case TLS_UNKNOWN:
		if (ingress)
			return; // server speaks first: not TLS, not HTTP/1.1 request/response
		if (is_tls_hdr && h[0] == TLS_HANDSHAKE && h[5] == 1) {
			st->tls_state = TLS_CH_SENT;
			st->ch_ts = now;
			return;
		}
		st->tls_state = TLS_PLAIN;
		break; // this payload starts request 1
	case TLS_CH_SENT:
		if (!ingress)
			return; // e.g. a second ClientHello after HelloRetryRequest
		if (is_tls_hdr && h[0] == TLS_HANDSHAKE && h[5] == 2) {
			__u16 v = server_hello_version(skb, l->payload_off, skb->len);
			if (!v)
				return; // HelloRetryRequest: keep waiting for the real ServerHello
			st->tls_version = v;
			st->tls_state = TLS_SH_RCVD;
			emit(st, cookie, EV_TLS_SERVER_HELLO, now, st->ch_ts);
		}
		return;
	case TLS_SH_RCVD:
		if (ingress)
			return; // rest of the server flight
		if (st->tls_version >= 0x0304 || (is_tls_hdr && h[0] == TLS_CCS)) {
			// TLS 1.3: the client's Finished flight ends the handshake.
			// TLS 1.2 abbreviated: the server already sent CCS+Finished.
			st->tls_state = TLS_DONE;
			emit(st, cookie, EV_TLS_HANDSHAKE_DONE, now, st->ch_ts);
			return;
		}
		st->tls_state = TLS_WAIT_SERVER_FIN; // TLS 1.2 full: ClientKeyExchange...
		return;
	case TLS_WAIT_SERVER_FIN:
		if (!ingress)
			return;
		// The server's final flight ([NewSessionTicket,] ChangeCipherSpec,
		// Finished) is the first thing it sends after our flight.
		st->tls_state = TLS_DONE;
		emit(st, cookie, EV_TLS_HANDSHAKE_DONE, now, st->ch_ts);
		return;
	}

	// Application data (HTTP/1.1 assumed): the first egress payload on an
	// idle connection starts a request; the first ingress payload after it
	// is its first response byte.
	if (!ingress) {
		if (!(st->flags & CF_AWAITING)) {
			st->flags |= CF_AWAITING;
			st->req_seq++;
			st->req_ts = now;
		}
		return;
	}
	if (st->flags & CF_AWAITING) {
		st->flags &= ~CF_AWAITING;
		struct event *e = ev_reserve();
		if (!e)
			return;
		ev_fill(e, st, cookie, EV_TTFB, now, st->req_ts);
		e->req_seq = st->req_seq;
		// The connection's smoothed RTT now: one sample per request, so
		// that congestion shows while a keep-alive connection lives.
		struct bpf_sock *sk = skb->sk;
		if (sk)
			sk = bpf_sk_fullsock(sk);
		if (sk) {
			struct bpf_tcp_sock *tp = bpf_tcp_sock(sk);
			if (tp)
				e->srtt_us = tp->srtt_us >> 3;
		}
		ev_submit(e);
	}
}

static __always_inline int handle_skb(struct __sk_buff *skb, int ingress)
{
	struct conn_state *st;
	struct l4 l = {};

	st = lookup(skb);
	if (!st)
		return 1;
	if (parse_l4(skb, &l))
		return 1;
	if (st->purpose == PURPOSE_DNS)
		dns_packet(skb, st, st->cookie, &l, ingress);
	else
		tcp_packet(skb, st, st->cookie, &l, ingress);
	return 1;
}

SEC("cgroup_skb/egress")
int modproxy_egress(struct __sk_buff *skb)
{
	return handle_skb(skb, 0);
}

SEC("cgroup_skb/ingress")
int modproxy_ingress(struct __sk_buff *skb)
{
	return handle_skb(skb, 1);
}
