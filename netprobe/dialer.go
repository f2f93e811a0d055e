package netprobe

import (
	"context"
	"crypto/tls"
	"errors"
	"net"
	"net/netip"
	"sync/atomic"
	"syscall"
	"time"
)

// dialer resolves through the Resolver, connects Happy-Eyeballs style and
// performs TLS itself, recording the duration of each step on the
// connection it returns (see probeConn).
type dialer struct {
	cfg    *Config
	res    *Resolver
	m      *metrics
	kernel *atomic.Pointer[Kernel]
}

// dialInfo is what a new connection cost; the transport attributes it to
// the request that ends up using the connection.
type dialInfo struct {
	dns, connect, tls time.Duration
	tlsVersion        uint16 // 0 without TLS
	upstream          string
	kc                *kernelConn // nil unless kernel telemetry registered the socket
}

// probeConn is a TCP connection carrying its dialInfo.
type probeConn struct {
	net.Conn
	info dialInfo
}

// NetConn returns the underlying connection.
func (c *probeConn) NetConn() net.Conn { return c.Conn }

func newDialer(cfg *Config, res *Resolver, m *metrics, kernel *atomic.Pointer[Kernel]) *dialer {
	return &dialer{cfg: cfg, res: res, m: m, kernel: kernel}
}

// dialInfoOf finds the dialInfo of a connection handed out by the
// transport (a *probeConn, possibly inside a *tls.Conn).
func dialInfoOf(c net.Conn) (dialInfo, bool) {
	if tc, ok := c.(*tls.Conn); ok {
		c = tc.NetConn()
	}
	pc, ok := c.(*probeConn)
	if !ok {
		return dialInfo{}, false
	}
	return pc.info, true
}

// upstreamOf names the upstream a dial is for: the label of the request
// whose context started it, or the address.
func upstreamOf(ctx context.Context, address string) string {
	if st, ok := ctx.Value(reqStateKey{}).(*reqState); ok {
		return st.upstream
	}
	return address
}

// DialContext resolves address's host and connects to one of its addresses.
// ConnectTimeout bounds resolving and connecting together.
func (d *dialer) DialContext(ctx context.Context, network, address string) (net.Conn, error) {
	return d.dial(ctx, network, address)
}

func (d *dialer) dial(ctx context.Context, network, address string) (*probeConn, error) {
	host, port, err := net.SplitHostPort(address)
	if err != nil {
		return nil, errorf("dial %s: %w", address, err)
	}
	upstream := upstreamOf(ctx, address)
	ctx, cancel := context.WithTimeout(ctx, d.cfg.ConnectTimeout)
	defer cancel()
	k := d.kernel.Load()
	if k != nil {
		k.noteHost(host, upstream)
	}

	t0 := time.Now()
	addrs, err := d.res.LookupNetIP(ctx, host)
	dnsDur := time.Since(t0)
	if err != nil {
		return nil, &net.OpError{Op: "dial", Net: network, Err: err}
	}
	addrs = orderAddrs(addrs, network)
	if len(addrs) == 0 {
		return nil, &net.OpError{Op: "dial", Net: network,
			Err: &net.AddrError{Err: "no suitable address for " + network, Addr: host}}
	}
	t1 := time.Now()
	c, cookie, err := d.race(ctx, network, addrs, port, upstream, k)
	if err != nil {
		return nil, err
	}
	pc := &probeConn{Conn: c, info: dialInfo{dns: dnsDur, connect: time.Since(t1), upstream: upstream}}
	if k != nil && cookie != 0 {
		pc.info.kc = k.connOf(cookie)
		if pc.info.kc != nil && pc.info.kc.raw == nil {
			pc.info.kc.raw = rawConnOf(c)
		}
	}
	return pc, nil
}

// DialTLSContext dials like DialContext and performs the TLS handshake,
// bounded by TLSTimeout, advertising h2 unless HTTP1Only.
func (d *dialer) DialTLSContext(ctx context.Context, network, address string) (net.Conn, error) {
	pc, err := d.dial(ctx, network, address)
	if err != nil {
		return nil, err
	}
	host, _, _ := net.SplitHostPort(address)
	var cfg *tls.Config
	if d.cfg.TLSConfig != nil {
		cfg = d.cfg.TLSConfig.Clone()
	} else {
		cfg = &tls.Config{}
	}
	if cfg.ServerName == "" {
		cfg.ServerName = host
	}
	if d.cfg.HTTP1Only {
		cfg.NextProtos = []string{"http/1.1"}
	} else {
		cfg.NextProtos = []string{"h2", "http/1.1"}
	}
	tc := tls.Client(pc, cfg)
	hctx, cancel := context.WithTimeout(ctx, d.cfg.TLSTimeout)
	defer cancel()
	start := time.Now()
	if err := tc.HandshakeContext(hctx); err != nil {
		pc.Close()
		if errors.Is(err, context.DeadlineExceeded) && ctx.Err() == nil {
			err = &tlsTimeoutError{d: d.cfg.TLSTimeout}
		}
		return nil, errorf("TLS handshake with %s (%s): %w", host, pc.RemoteAddr(), err)
	}
	pc.info.tls = time.Since(start)
	pc.info.tlsVersion = tc.ConnectionState().Version
	if pc.info.kc != nil && tc.ConnectionState().NegotiatedProtocol == "h2" {
		// Kernel TTFB is meaningless on HTTP/2 (see package bpf).
		pc.info.kc.h2.Store(true)
	}
	d.m.tls.WithLabelValues(pc.info.upstream, tls.VersionName(pc.info.tlsVersion)).Inc()
	return tc, nil
}

type tlsTimeoutError struct{ d time.Duration }

func (e *tlsTimeoutError) Error() string   { return "TLS handshake timeout after " + e.d.String() }
func (e *tlsTimeoutError) Timeout() bool   { return true }
func (e *tlsTimeoutError) Temporary() bool { return true }

// orderAddrs keeps the addresses usable on network and interleaves the
// families, starting with the family of the first address (RFC 8305 §4).
func orderAddrs(addrs []netip.Addr, network string) []netip.Addr {
	var v6, v4 []netip.Addr
	for _, a := range addrs {
		if a.Is4() {
			if network != "tcp6" {
				v4 = append(v4, a)
			}
		} else if network != "tcp4" {
			v6 = append(v6, a)
		}
	}
	first, second := v6, v4
	if len(addrs) > 0 && addrs[0].Is4() {
		first, second = v4, v6
	}
	out := make([]netip.Addr, 0, len(v4)+len(v6))
	for i := 0; i < len(first) || i < len(second); i++ {
		if i < len(first) {
			out = append(out, first[i])
		}
		if i < len(second) {
			out = append(out, second[i])
		}
	}
	return out
}

// race connects to addrs in order, starting the next attempt when the
// previous fails or FallbackDelay passes; the first success wins and the
// other attempts are cancelled and closed before race returns. cookie is
// the winning socket's cookie if kernel telemetry registered it, else 0.
func (d *dialer) race(ctx context.Context, network string, addrs []netip.Addr, port, upstream string, k *Kernel) (net.Conn, uint64, error) {
	// control returns the net.Dialer.Control of one attempt; it stores the
	// cookie of the registered socket in *cookie (one socket per attempt:
	// each dials a single address).
	var control func(cookie *uint64) func(string, string, syscall.RawConn) error
	if hook := d.cfg.SocketHook; hook != nil || k != nil {
		kind, rec, alarm := KindOther, (*recorder)(nil), (func(string))(nil)
		if st, ok := ctx.Value(reqStateKey{}).(*reqState); ok {
			kind, rec, alarm = st.kind, st.rec, st.alarm
		}
		control = func(cookie *uint64) func(string, string, syscall.RawConn) error {
			return func(_, _ string, c syscall.RawConn) error {
				return c.Control(func(fd uintptr) {
					if hook != nil {
						hook(fd, upstream, "upstream")
					}
					if k != nil {
						*cookie = k.registerTCP(fd, upstream, kind, rec, alarm)
					}
				})
			}
		}
	}
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	type result struct {
		c      net.Conn
		cookie uint64
		err    error
	}
	results := make(chan result, len(addrs))
	next, pending := 0, 0
	start := func() {
		a := net.JoinHostPort(addrs[next].String(), port)
		next++
		pending++
		go func() {
			var r result
			nd := &net.Dialer{}
			if control != nil {
				nd.Control = control(&r.cookie)
			}
			r.c, r.err = nd.DialContext(ctx, "tcp", a)
			results <- r
		}()
	}
	start()
	timer := time.NewTimer(d.cfg.FallbackDelay)
	defer timer.Stop()
	var errs []error
	for pending > 0 {
		select {
		case r := <-results:
			pending--
			if r.err == nil {
				cancel()
				for ; pending > 0; pending-- {
					if l := <-results; l.c != nil {
						l.c.Close()
					}
				}
				return r.c, r.cookie, nil
			}
			errs = append(errs, r.err)
			if next < len(addrs) {
				start()
				timer.Reset(d.cfg.FallbackDelay)
			}
		case <-timer.C:
			if next < len(addrs) {
				start()
				timer.Reset(d.cfg.FallbackDelay)
			}
		}
	}
	if len(errs) == 1 {
		return nil, 0, errs[0]
	}
	return nil, 0, &net.OpError{Op: "dial", Net: network, Err: errors.Join(errs...)}
}
