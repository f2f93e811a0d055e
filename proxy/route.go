package proxy

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"time"

	"github.com/modproxy/modproxy/fallback"
	"github.com/modproxy/modproxy/sumdb"
)

// Decision headers tell a client which upstream answered and why.
const (
	headerUpstream = "X-Modproxy-Upstream"
	headerDecision = "X-Modproxy-Decision"
	headerCache    = "X-Modproxy-Cache"
)

// HeaderWantStored on a request asks for the answer only once the
// artifact is stored (Request.Stored): `modproxy prewarm --server` sends
// it, so that the store is full when it exits.
const HeaderWantStored = "X-Modproxy-Want-Stored"

// route is the outcome of trying upstreams for one request.
type route struct {
	upstream string // the upstream that answered
	reason   string // why it was chosen
}

// attemptFunc fetches from one upstream. A nil error means success.
type attemptFunc[T any] func(ctx context.Context, u Upstream) (T, error)

// entries maps an upstream list onto the fallback engine's entries.
func entries(ups []Upstream) []fallback.Entry {
	out := make([]fallback.Entry, len(ups))
	for i, u := range ups {
		out[i] = fallback.Entry{Name: u.Name(), Off: u.Off, Direct: u.Direct, AnyError: u.AnyError}
	}
	return out
}

// classify is the proxy's reading of an attempt error for the fallback
// engine: not found (404, 410, and 403 or a 400 for a path we validated)
// and a copy that failed verification go on to the next entry anywhere in
// the list; everything else only after '|'.
func classify(err error) fallback.Class {
	var se *StatusError
	switch {
	case errors.Is(err, errDirectDisabled):
		return fallback.Final // as the go command's list ends at a direct it cannot use
	case errors.As(err, &se) && se.notFound():
		return fallback.Absent
	case errors.Is(err, sumdb.ErrMismatch), errors.Is(err, errCondemned):
		return fallback.Absent
	}
	return fallback.Failed
}

// tryUpstreams runs fn for req against ups with the fallback engine
// (GOPROXY list semantics, health order, breaker, hedging within '|'
// groups; see package fallback). For an immutable artifact (.info, .mod,
// .zip of a canonical version), a copy that failed verification from one
// upstream is condemned and not fetched from that upstream again for a
// while; the mismatch is reported against that copy only, never opening the
// upstream's circuit. A due half-open trial is the module's list, fetched
// in the background.
func tryUpstreams[T any](ctx context.Context, f *Fetcher, ups []Upstream, hedge bool, req Request, fn attemptFunc[T]) (T, route, []error) {
	byName := make(map[string]Upstream, len(ups))
	for _, u := range ups {
		byName[u.Name()] = u
	}
	mv := ""
	if !req.Query && (req.Kind == KindInfo || req.Kind == KindMod || req.Kind == KindZip) {
		mv = req.Module + "@" + req.Version + "." + string(req.Kind)
	}
	trial := func(e fallback.Entry) { f.trial(byName[e.Name], req.Module) }
	cfg := fallback.Config{Hedge: hedge, Classify: classify, Reason: fallthroughReason, Trial: trial}
	if f.health != nil {
		cfg.Health = f.health
		// Kernel evidence (eBPF): alarms hedge or abandon an attempt whose
		// connect shows a SYN retransmit; demotions are named.
		if ke, ok := f.health.(KernelEvidence); ok {
			cfg.Alarm, cfg.DemotedBy = ke.WithKernelAlarm, ke.KernelReason
		}
	}
	v, res, errs := fallback.Run(ctx, cfg, entries(ups), func(ctx context.Context, e fallback.Entry) (T, error) {
		var zero T
		u := byName[e.Name]
		switch {
		case u.Off:
			return zero, &StatusError{Upstream: "off", Status: 404, Msg: "module lookup disabled by upstream list (off)"}
		case u.Direct && f.cfg.Direct == nil:
			return zero, errDirectDisabled
		}
		// A configured direct entry is attempted like an upstream: f.get
		// answers it from version control (proxy/direct.go).
		if mv != "" {
			if until, ok := f.condemned.get(u.Name(), mv); ok {
				return zero, &UpstreamError{Upstream: u.Name(), Err: fmt.Errorf("%s: %w (until %s)", mv, errCondemned, until.UTC().Format(time.RFC3339))}
			}
		}
		val, err := fn(ctx, u)
		if errors.Is(err, sumdb.ErrMismatch) && mv != "" {
			f.condemned.put(u.Name(), mv)
			if f.health != nil {
				f.health.ReportChecksumFailure(u.Name())
			}
		}
		return val, err
	})
	return v, route{upstream: res.Upstream, reason: res.Reason}, errs
}

// errCondemned is the error of an upstream whose copy of an artifact
// recently failed verification.
var errCondemned = errors.New("this upstream's copy failed checksum verification recently; not fetched from it again yet")

// condemnTTL is how long a copy that failed verification is remembered.
const condemnTTL = 10 * time.Minute

// condemnedCopies remembers (upstream, module@version) copies that failed
// verification. A tampered module then costs one download per upstream per
// condemnTTL, and condemns nothing else of that upstream.
type condemnedCopies struct {
	now func() time.Time
	mu  sync.Mutex
	m   map[[2]string]time.Time
}

const maxCondemned = 10_000

func (c *condemnedCopies) get(upstream, mv string) (time.Time, bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	until, ok := c.m[[2]string{upstream, mv}]
	if ok && !c.now().Before(until) {
		delete(c.m, [2]string{upstream, mv})
		return time.Time{}, false
	}
	return until, ok
}

func (c *condemnedCopies) put(upstream, mv string) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.m == nil {
		c.m = make(map[[2]string]time.Time)
	}
	now := c.now()
	if len(c.m) >= maxCondemned {
		for k, until := range c.m {
			if !now.Before(until) || len(c.m) >= maxCondemned {
				delete(c.m, k)
			}
		}
	}
	c.m[[2]string{upstream, mv}] = now.Add(condemnTTL)
}

// decisionReasoner is an error that names the decision it causes.
type decisionReasoner interface{ DecisionReason() string }

func fallthroughReason(err error) string {
	var se *StatusError
	var dr decisionReasoner
	switch {
	case errors.As(err, &se) && se.notFound():
		return "not_found"
	case errors.As(err, &se):
		return "status_" + statusClass(se.Status)
	case errors.Is(err, sumdb.ErrMismatch):
		return "checksum_mismatch"
	case errors.Is(err, errCondemned):
		return "condemned_copy"
	case errors.Is(err, errBadContent):
		return "bad_content"
	case errors.As(err, &dr):
		return dr.DecisionReason() // e.g. netprobe's kernel_stall
	case isTimeout(err):
		return "timeout"
	}
	return "error"
}

func statusClass(code int) string {
	switch {
	case code >= 500:
		return "5xx"
	case code >= 400:
		return "4xx"
	}
	return "other"
}
