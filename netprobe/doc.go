// Package netprobe is modproxy's upstream network layer: a caching DNS
// resolver, a Happy-Eyeballs dialer, one shared HTTP transport for every
// upstream, per-phase timing of every request, Prometheus collectors and
// per-upstream health scores with a circuit breaker.
//
// # Overview
//
// [New] builds a [Probe] from a [Config]. Everything the proxy sends upstream
// goes through [Probe.Client]; the client's transport classifies each request
// by its URL ([Classify]: which configured upstream, which kind of GOPROXY or
// checksum-database request), so callers need no context plumbing to get
// labelled metrics.
//
// The [Resolver] speaks DNS itself (github.com/miekg/dns) so that lookups are
// timed and cached in one place shared by all upstreams: TTLs clamped to a
// configured range, negative answers cached from the SOA minimum (RFC 2308),
// failures (SERVFAIL, timeouts) remembered for a few seconds, stale answers
// served when every server fails (RFC 8767), only the records on the CNAME
// chain from the queried name taken, A and AAAA asked in parallel with a
// lookup returning a short resolution delay after the first family answered
// (RFC 8305), names in use
// refreshed shortly before they expire, one query in flight per name and
// type, UDP with TCP fallback on truncation. /etc/hosts, "localhost" and IP
// literals never touch DNS.
//
// The dialer resolves through the [Resolver] and races addresses
// Happy-Eyeballs style (IPv6 and IPv4 interleaved, the next attempt started
// after a short delay, first success wins). It performs the TLS handshake
// itself, so the dns, connect and tls phases are carried by the connection
// and attributed to the request that actually uses it, even when the
// transport hands a connection dialed for one request to another.
//
// # Phases
//
// Every request is timed with net/http/httptrace and the dialer:
//
//	dns       resolver lookup inside the dialer (new connections only)
//	connect   TCP connect, including failed attempts on other addresses
//	tls       TLS handshake
//	ttfb      request written → first response byte
//	transfer  first response byte → body EOF or Close
//	total     RoundTrip start → body EOF or Close
//
// Phases are exported in modproxy_upstream_phase_seconds with
// source="userspace"; the eBPF integration feeds the same histogram with
// source="kernel" through [Probe.ObservePhase]. [Probe.AddPhaseObserver]
// subscribes other consumers (the heatmap page).
//
// # Timeouts
//
// The client has no whole-request deadline: large zips may flow for as long
// as they make progress. Instead there are per-stage limits: connect
// (Config.ConnectTimeout), TLS handshake (Config.TLSTimeout), first byte
// (Config.FirstByteTimeout) and an idle-body timeout (Config.IdleBodyTimeout)
// that aborts a response whose body read makes no progress for that long
// (the error wraps [ErrBodyIdle]).
//
// # Health
//
// [Health] turns the outcomes observed by the transport, plus checksum
// failures reported by the proxy, into a score in [0, 1], a state (healthy,
// degraded, unhealthy) and a circuit breaker with half-open trials; see
// health.go for the formula. It implements the proxy package's Health
// interface. [Probe.DebugHandler] renders all of it at /debug/upstreams.
//
// [RunProbe] is the library behind "modproxy probe": it times a few GOPROXY
// requests through each upstream and renders a waterfall and a terminal
// heatmap.
package netprobe
