package proxy

import (
	"context"
	"errors"
	"sort"
	"time"

	"github.com/modproxy/modproxy/sumdb"
)

// Decision headers tell a client which upstream answered and why.
const (
	headerUpstream = "X-Modproxy-Upstream"
	headerDecision = "X-Modproxy-Decision"
	headerCache    = "X-Modproxy-Cache"
)

// reasonCircuitOpenChecksum is the Health.Allow reason for a circuit opened
// by checksum mismatches rather than by transport failures.
const reasonCircuitOpenChecksum = "circuit_open_checksum"

// route is the outcome of trying upstreams for one request.
type route struct {
	upstream string // the upstream that answered
	reason   string // why it was chosen
}

// attemptFunc fetches from one upstream. A nil error means success.
type attemptFunc[T any] func(ctx context.Context, u Upstream) (T, error)

// candidates returns ups in the order to try them. Within a run of entries
// joined by '|' (where the go command's syntax already allows any of them
// to be tried after any failure) upstreams are ordered by health score; the
// separators stay in place, so the list's fall-through rules are kept.
func (f *Fetcher) candidates(ups []Upstream) (out []Upstream, reordered bool) {
	out = append([]Upstream(nil), ups...)
	if f.health == nil {
		return out, false
	}
	for start := 0; start < len(out); {
		end := start
		for end < len(out)-1 && out[end].AnyError {
			end++
		}
		group := out[start : end+1]
		if len(group) > 1 {
			seps := make([]bool, len(group))
			for i, u := range group {
				seps[i] = u.AnyError
			}
			before := group[0].URL
			sort.SliceStable(group, func(i, j int) bool {
				return f.health.Score(group[i].Name()) > f.health.Score(group[j].Name())
			})
			for i := range group {
				group[i].AnyError = seps[i]
			}
			reordered = reordered || group[0].URL != before
		}
		start = end + 1
	}
	return out, reordered
}

type attemptResult[T any] struct {
	idx int
	val T
	err error
}

// tryUpstreams runs fn against the upstreams in ups following GOPROXY list
// semantics: a not-found answer falls through to the next entry; any other
// error falls through only after a '|'; a checksum mismatch always falls
// through (the next copy may be good). When hedge is set, a request that
// has not answered within the upstream's hedge delay is raced against the
// next upstream of a '|' group; the first good answer wins and the other is
// cancelled.
func tryUpstreams[T any](ctx context.Context, f *Fetcher, ups []Upstream, hedge bool, fn attemptFunc[T]) (T, route, []error) {
	var zero T
	cands, reordered := f.candidates(ups)
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()

	results := make(chan attemptResult[T], len(cands))
	next, inflight := 0, 0
	var errs []error
	var hedgeTimer *time.Timer
	var hedgeC <-chan time.Time
	defer func() {
		if hedgeTimer != nil {
			hedgeTimer.Stop()
		}
	}()
	hedged := map[int]bool{}

	// launch starts the next allowed candidate. It reports false when the
	// list is exhausted or stops at an entry whose circuit is open.
	launch := func() bool {
		for next < len(cands) {
			i := next
			u := cands[i]
			next++
			if u.Off {
				errs = append(errs, &StatusError{Upstream: "off", Status: 404, Msg: "module lookup disabled by upstream list (off)"})
				return false
			}
			if u.Direct && f.cfg.Direct == nil {
				errs = append(errs, errDirectDisabled)
				return false
			}
			if f.health != nil {
				ok, why := f.health.Allow(u.Name())
				if !ok {
					f.health.RecordDecision(u.Name(), "skipped", why)
					errs = append(errs, &UpstreamError{Upstream: u.Name(), Err: errCircuitOpen})
					// An open circuit predicts the upstream's failure. That
					// falls through after '|'; after ',' only when the
					// failures were checksum mismatches, which always fall
					// through (the next copy may be good).
					if u.AnyError || why == reasonCircuitOpenChecksum {
						continue
					}
					return false
				}
				if why == "half_open_trial" {
					f.health.RecordDecision(u.Name(), "half_open_trial", why)
				}
			}
			inflight++
			go func() {
				v, err := fn(ctx, u)
				results <- attemptResult[T]{idx: i, val: v, err: err}
			}()
			if hedge && f.health != nil && u.AnyError && next < len(cands) {
				if d, ok := f.health.HedgeAfter(u.Name()); ok {
					if hedgeTimer != nil {
						hedgeTimer.Stop()
					}
					hedgeTimer = time.NewTimer(d)
					hedgeC = hedgeTimer.C
				}
			}
			return true
		}
		return false
	}

	if !launch() {
		return zero, route{}, errs
	}
	for inflight > 0 {
		select {
		case <-hedgeC:
			hedgeC = nil
			prev := cands[next-1]
			if launch() {
				hedged[next-1] = true
				f.health.RecordDecision(prev.Name(), "hedged", "no_first_byte_by_p95")
			}
		case r := <-results:
			inflight--
			u := cands[r.idx]
			if r.err == nil {
				reason := "list_order"
				switch {
				case hedged[r.idx]:
					reason = "hedge_won"
					f.health.RecordDecision(u.Name(), "hedge_won", reason)
				case r.idx > 0:
					reason = "fallback"
				case reordered:
					reason = "health_order"
				}
				if f.health != nil && reason != "hedge_won" {
					f.health.RecordDecision(u.Name(), "chosen", reason)
				}
				return r.val, route{upstream: u.Name(), reason: reason}, nil
			}
			if ctx.Err() != nil && errors.Is(r.err, context.Canceled) {
				continue // a cancelled hedge loser
			}
			errs = append(errs, r.err)
			fallThrough := u.AnyError
			var se *StatusError
			var mm *sumdb.MismatchError
			switch {
			case errors.As(r.err, &se) && se.notFound():
				fallThrough = true
			case errors.As(r.err, &mm):
				fallThrough = true
				if f.health != nil {
					f.health.ReportChecksumFailure(u.Name())
				}
			}
			if f.health != nil && fallThrough && r.idx == next-1 && next < len(cands) {
				f.health.RecordDecision(u.Name(), "fallthrough", fallthroughReason(r.err))
			}
			if inflight == 0 && fallThrough {
				if !launch() {
					return zero, route{}, errs
				}
			}
			if !fallThrough && inflight == 0 {
				return zero, route{}, errs
			}
		}
	}
	return zero, route{}, errs
}

func fallthroughReason(err error) string {
	var se *StatusError
	var mm *sumdb.MismatchError
	switch {
	case errors.As(err, &se) && se.notFound():
		return "not_found"
	case errors.As(err, &se):
		return "status_" + statusClass(se.Status)
	case errors.As(err, &mm):
		return "checksum_mismatch"
	case errors.Is(err, errBadContent):
		return "bad_content"
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
