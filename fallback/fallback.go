// Package fallback runs one request across an upstream list with the go
// command's GOPROXY semantics, for module artifacts (package proxy) and
// checksum-database reads (package sumdb) alike.
//
// The list is read by position. Entries joined by '|' form a group: any
// failure of one member lets the request go on to the next member. Between
// groups (a ','), only an answer classed Absent (not found) goes on; any
// other failure ends the request there. The outcome is the one a strictly
// sequential walk of the list would give, whichever attempt finished first:
// a hedge (the next member of the same '|' group, launched when the current
// one is slow) can win early, but a failure past a ',' is never hidden by a
// later answer, and a hedge never steps over a ',' or onto a keyword entry
// (off, direct).
//
// Health, when set, orders the members of each '|' group by score, skips an
// entry whose circuit is open (a predicted failure: it goes on after '|'
// only) and supplies hedge delays. When the walk would end only because
// entries were skipped (every entry tried went on), the healthiest skipped
// one is tried anyway (decision "last_resort"): the breaker predicts, it
// never strands a request. A
// half-open trial is run by the caller's Trial function, off the request's
// path, and the request treats the entry as still open.
package fallback

import (
	"context"
	"errors"
	"fmt"
	"sort"
	"time"
)

// Entry is one element of an upstream list.
type Entry struct {
	// Name is the upstream's name in health, metrics and logs.
	Name string
	// Off marks the "off" keyword: it ends the walk, answering the error
	// its attempt returns, and is never hedged onto or health-checked.
	Off bool
	// Direct marks a non-HTTP entry (the "direct" keyword: version
	// control). Run calls the attempt function for it and consults health
	// for it like for any entry, but never hedges onto or off it, and
	// health order never moves it.
	Direct bool
	// AnyError is true when the entry is followed by '|'.
	AnyError bool
}

func (e Entry) keyword() bool { return e.Off || e.Direct }

// Class says how an attempt's error lets the walk go on.
type Class int

const (
	// Failed goes on only after '|' (5xx, timeouts, transport errors).
	Failed Class = iota
	// Absent goes on after ',' and '|' (not found; a copy that failed
	// verification, where the next upstream's copy may be good).
	Absent
	// Final ends the walk wherever it is (an authoritative answer).
	Final
)

// Health is the upstream health tracking the engine consults;
// netprobe.Health implements it. Implementations must be safe for
// concurrent use.
type Health interface {
	// Allow reports whether a request may be sent to upstream now; reason
	// is "half_open_trial" when a trial of an open circuit is due.
	Allow(upstream string) (ok bool, reason string)
	Score(upstream string) float64
	HedgeAfter(upstream string) (d time.Duration, ok bool)
	RecordDecision(upstream, decision, reason string)
}

// Config parameterises one Run.
type Config struct {
	Health Health // nil: plain list order, no breaker, no hedging
	// Hedge enables hedging within '|' groups.
	Hedge bool
	// Classify maps an attempt error to its Class; nil treats every error
	// as Failed.
	Classify func(error) Class
	// Reason names an error for the "fallthrough" decision counter; nil
	// gives "error".
	Reason func(error) string
	// Trial, when set, runs the half-open trial of an entry in the
	// background (the caller owns and bounds that work). Without it the
	// request itself is the trial.
	Trial func(Entry)
	// Alarm, when set, gives each attempt's context a way to report that
	// its connection is in trouble before any timeout could say so (the
	// kernel saw a SYN retransmit: reason "kernel_syn_retrans"). The newest
	// attempt of a '|' group is then hedged at once (abandoned and gone on
	// from, when Hedge is off: a zip must not be downloaded twice); any
	// alarm names the attempt's fallthrough reason. Alarms after the
	// attempt finished are ignored.
	Alarm func(ctx context.Context, alarm func(reason string)) context.Context
	// DemotedBy, when set, names why health ordering put an entry behind
	// another of its '|' group ("kernel_loss", …; "" for no named reason):
	// the engine records a "demoted" decision for it, and that reason is
	// the answer's reason instead of "health_order".
	DemotedBy func(upstream string) string
}

// ReasonKernelSynRetrans is the alarm that hedges an attempt at once.
const ReasonKernelSynRetrans = "kernel_syn_retrans"

type alarm struct {
	i      int
	reason string
}

// Decision reasons reported in Result.Reason.
const (
	ReasonListOrder   = "list_order"
	ReasonHealthOrder = "health_order"
	ReasonFallback    = "fallback"
	ReasonHedgeWon    = "hedge_won"
	ReasonLastResort  = "last_resort"
)

// Result says which entry answered and why.
type Result struct {
	Upstream string // "" when no entry answered
	Reason   string
}

// ErrCircuitOpen is the error recorded for an entry skipped by its
// circuit breaker.
var ErrCircuitOpen = errors.New("circuit open after repeated failures")

// SkippedError is the error of an entry skipped by its circuit breaker.
type SkippedError struct{ Upstream string }

func (e *SkippedError) Error() string {
	return "upstream " + e.Upstream + ": " + ErrCircuitOpen.Error()
}
func (e *SkippedError) Unwrap() error { return ErrCircuitOpen }

type state int

const (
	pending state = iota
	inflight
	failed  // done with an error
	skipped // open circuit
)

type slot struct {
	st     state
	class  Class
	hedged bool
	last   bool // launched as the last resort
}

type result[T any] struct {
	i   int
	val T
	err error
}

// Order returns entries in the order to try them: each run of URL entries
// joined by '|' sorted by health score (stable), separators and keyword
// entries (off, direct) kept in place so that the list's rules are
// unchanged. reordered reports a change.
func Order(h Health, entries []Entry) (out []Entry, reordered bool) {
	out = append([]Entry(nil), entries...)
	if h == nil {
		return out, false
	}
	for start := 0; start < len(out); {
		if out[start].keyword() {
			start++
			continue
		}
		end := start
		for end < len(out)-1 && out[end].AnyError && !out[end+1].keyword() {
			end++
		}
		group := out[start : end+1]
		if len(group) > 1 {
			seps := make([]bool, len(group))
			for i, u := range group {
				seps[i] = u.AnyError
			}
			before := group[0].Name
			sort.SliceStable(group, func(i, j int) bool { return h.Score(group[i].Name) > h.Score(group[j].Name) })
			for i := range group {
				group[i].AnyError = seps[i]
			}
			reordered = reordered || group[0].Name != before
		}
		start = end + 1
	}
	return out, reordered
}

// Run calls fn for the entries in list order until one answers (nil error)
// or the list's rules end the walk; see the package comment. It returns the
// answer, which entry gave it, and the errors of the entries tried (in the
// order they finished), for the caller's error message.
func Run[T any](ctx context.Context, cfg Config, entries []Entry, fn func(context.Context, Entry) (T, error)) (T, Result, []error) {
	var zero T
	classify := cfg.Classify
	if classify == nil {
		classify = func(error) Class { return Failed }
	}
	h := cfg.Health
	cands, reordered := Order(h, entries)
	n := len(cands)
	// orderReason names a reordering by the demoted entries' reason.
	orderReason := ReasonHealthOrder
	if reordered && cfg.DemotedBy != nil && h != nil {
		moved := map[string]bool{}
		for i, e := range entries {
			if i < n && cands[i].Name != e.Name && !e.keyword() {
				moved[e.Name] = true
			}
		}
		for i, e := range entries {
			if !moved[e.Name] {
				continue
			}
			if r := cfg.DemotedBy(e.Name); r != "" {
				h.RecordDecision(e.Name, "demoted", r)
				if i == 0 || orderReason == ReasonHealthOrder {
					orderReason = r
				}
			}
		}
	}
	slots := make([]slot, n)
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	results := make(chan result[T], n)
	alarms := make(chan alarm, n)
	alarmed := make([]string, n) // the alarm reason of each attempt
	cancels := make([]context.CancelFunc, n)
	var errs []error
	running := 0
	usedLastResort := false
	var hedgeTimer *time.Timer
	var hedgeC <-chan time.Time
	defer func() {
		if hedgeTimer != nil {
			hedgeTimer.Stop()
		}
	}()

	goesOn := func(i int) bool {
		s := slots[i]
		switch {
		case s.st == skipped:
			return cands[i].AnyError
		case s.st != failed:
			return false
		case s.class == Absent:
			return true
		case s.class == Final:
			return false
		}
		return cands[i].AnyError
	}
	start := func(i int) {
		slots[i].st = inflight
		running++
		e := cands[i]
		actx := ctx
		if cfg.Alarm != nil && !e.keyword() {
			actx = cfg.Alarm(ctx, func(reason string) {
				select {
				case alarms <- alarm{i, reason}:
				default: // the first alarms are enough
				}
			})
		}
		actx, cancels[i] = context.WithCancel(actx)
		go func() {
			v, err := fn(actx, e)
			results <- result[T]{i: i, val: v, err: err}
		}()
	}
	armHedge := func(i int) {
		hedgeC = nil
		if !cfg.Hedge || h == nil || !cands[i].AnyError || i+1 >= n || cands[i].keyword() || cands[i+1].keyword() {
			return
		}
		if d, ok := h.HedgeAfter(cands[i].Name); ok {
			if hedgeTimer != nil {
				hedgeTimer.Stop()
			}
			hedgeTimer = time.NewTimer(d)
			hedgeC = hedgeTimer.C
		}
	}
	// admit asks the breaker about entry i: true to send, false when it
	// is skipped (its slot then says so).
	admit := func(i int) bool {
		e := cands[i]
		if h == nil || e.Off {
			return true
		}
		ok, why := h.Allow(e.Name)
		if ok && why == "half_open_trial" && cfg.Trial != nil {
			h.RecordDecision(e.Name, "half_open_trial", "background")
			cfg.Trial(e)
			ok, why = false, "circuit_open"
		} else if ok && why == "half_open_trial" {
			h.RecordDecision(e.Name, "half_open_trial", why)
		}
		if !ok {
			h.RecordDecision(e.Name, "skipped", why)
			slots[i].st = skipped
			errs = append(errs, &SkippedError{Upstream: e.Name})
			return false
		}
		return true
	}
	// lastResort tries the healthiest skipped entry among 0..upto when the
	// walk ended there only because of skips: nothing is running, and every
	// entry actually tried went on. A real failure that ends the walk
	// stands; a prediction alone never ends a request.
	lastResort := func(upto int) bool {
		if usedLastResort || h == nil {
			return false
		}
		best := -1
		for j := 0; j <= upto && j < n; j++ {
			switch {
			case slots[j].st == skipped:
				if best < 0 || h.Score(cands[j].Name) > h.Score(cands[best].Name) {
					best = j
				}
			case slots[j].st == inflight, slots[j].st == failed && !goesOn(j):
				return false // something was tried: its answer stands
			}
		}
		if best < 0 {
			return false
		}
		usedLastResort = true
		// The skip is replaced by a real attempt.
		for k, err := range errs {
			var se *SkippedError
			if errors.As(err, &se) && se.Upstream == cands[best].Name {
				errs = append(errs[:k:k], errs[k+1:]...)
				break
			}
		}
		h.RecordDecision(cands[best].Name, "last_resort", "all_circuits_open")
		slots[best].last = true
		start(best)
		return true
	}
	// advance walks the list from the front as a sequential client would,
	// launching the first entry not yet tried. It reports false when the
	// walk has ended without an answer.
	advance := func() bool {
		for i := 0; i < n; i++ {
			switch slots[i].st {
			case inflight:
				return true
			case pending:
				if cands[i].Off {
					// "off" answers without a network request.
					start(i)
					return true
				}
				if !admit(i) {
					i-- // look at the skipped slot again
					continue
				}
				start(i)
				armHedge(i)
				return true
			}
			if !goesOn(i) {
				return lastResort(i)
			}
		}
		return lastResort(n - 1)
	}
	if !advance() {
		return zero, Result{}, errs
	}
	for running > 0 {
		select {
		case a := <-alarms:
			if slots[a.i].st != inflight || alarmed[a.i] != "" {
				continue
			}
			alarmed[a.i] = a.reason
			last := -1
			for j := n - 1; j >= 0; j-- {
				if slots[j].st != pending {
					last = j
					break
				}
			}
			if a.reason != ReasonKernelSynRetrans || a.i != last || !cands[a.i].AnyError || a.i+1 >= n || cands[a.i+1].keyword() || h == nil {
				continue
			}
			if !cfg.Hedge {
				// Not hedgeable: give up the stuck connect; its error
				// (cancelled, reason a.reason) goes on to the next entry.
				h.RecordDecision(cands[a.i].Name, "abandoned", a.reason)
				cancels[a.i]()
				continue
			}
			if admit(a.i + 1) {
				slots[a.i+1].hedged = true
				h.RecordDecision(cands[a.i].Name, "hedged", a.reason)
				start(a.i + 1)
				armHedge(a.i + 1)
			}
		case <-hedgeC:
			hedgeC = nil
			// Hedge onto the next member of the same '|' group, never
			// past a ',' nor onto a keyword.
			last := -1
			for j := n - 1; j >= 0; j-- {
				if slots[j].st != pending {
					last = j
					break
				}
			}
			if last < 0 || slots[last].st != inflight || !cands[last].AnyError || last+1 >= n || cands[last+1].keyword() {
				continue
			}
			if admit(last + 1) {
				slots[last+1].hedged = true
				h.RecordDecision(cands[last].Name, "hedged", "no_first_byte_by_p95")
				start(last + 1)
				armHedge(last + 1)
			}
		case r := <-results:
			running--
			e := cands[r.i]
			if r.err == nil {
				// Every launch keeps each earlier entry either gone on or
				// running with a '|' after it (advance launches only past
				// entries that went on, a hedge only next to a running '|'
				// entry, the last resort only among skipped entries that go
				// on): a success is the answer a sequential walk would give.
				reason := ReasonListOrder
				switch {
				case slots[r.i].last:
					reason = ReasonLastResort
				case slots[r.i].hedged:
					reason = ReasonHedgeWon
					if r.i > 0 && alarmed[r.i-1] != "" {
						reason = alarmed[r.i-1] // the alarm that started the hedge
					}
				case r.i > 0:
					reason = ReasonFallback
					if alarmed[r.i-1] != "" {
						reason = alarmed[r.i-1]
					}
				case reordered:
					reason = orderReason
				}
				if h != nil && !e.Off {
					decision := "chosen"
					if slots[r.i].hedged {
						decision = "hedge_won"
					}
					h.RecordDecision(e.Name, decision, reason)
				}
				return r.val, Result{Upstream: e.Name, Reason: reason}, nil
			}
			if ctx.Err() != nil && errors.Is(r.err, context.Canceled) {
				continue
			}
			if alarmed[r.i] != "" && errors.Is(r.err, context.Canceled) {
				// Abandoned on an alarm: say why, not "context canceled".
				r.err = fmt.Errorf("%s: abandoned (%s): %w", cands[r.i].Name, alarmed[r.i], r.err)
			}
			errs = append(errs, r.err)
			slots[r.i].st = failed
			slots[r.i].class = classify(r.err)
			if e.Off {
				slots[r.i].class = Final
			}
			if h != nil && !e.Off && goesOn(r.i) && r.i+1 < n {
				reason := "error"
				if cfg.Reason != nil {
					reason = cfg.Reason(r.err)
				}
				if alarmed[r.i] != "" {
					reason = alarmed[r.i]
				}
				h.RecordDecision(e.Name, "fallthrough", reason)
			}
			if !advance() && running == 0 {
				return zero, Result{}, errs
			}
		}
	}
	if err := ctx.Err(); err != nil {
		errs = append(errs, err) // the caller gave up: say so
	}
	return zero, Result{}, errs
}
