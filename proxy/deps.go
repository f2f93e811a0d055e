package proxy

import (
	"time"

	"github.com/modproxy/modproxy/cache/gate"
)

// Health is consulted by the fetcher to order upstreams, trip circuit
// breakers and hedge slow metadata requests. netprobe.Health implements it;
// a nil Health means every upstream is always allowed and never hedged.
type Health interface {
	// Allow reports whether a request may be sent to upstream now. It is
	// false while the upstream's circuit is open; after the cool-down it
	// grants a single half-open trial. reason says why ("circuit_open",
	// "half_open_trial", "healthy", …).
	Allow(upstream string) (ok bool, reason string)
	// Score is the upstream's health score in [0, 1].
	Score(upstream string) float64
	// HedgeAfter is how long to wait for a first byte from upstream before
	// sending the same metadata request to the next upstream; ok is false
	// when there is not yet enough data to decide.
	HedgeAfter(upstream string) (d time.Duration, ok bool)
	// ReportChecksumFailure counts an artifact from upstream that disagreed
	// with the checksum database.
	ReportChecksumFailure(upstream string)
	// RecordDecision counts one fallback decision
	// (modproxy_upstream_decisions_total{upstream,decision,reason}).
	RecordDecision(upstream, decision, reason string)
}

// Verifier checks artifacts against the checksum database before they are
// committed (sumdb.Verifier implements it); a nil Verifier stores
// everything as exempt (GOSUMDB=off). It is the gate's Verifier: the
// Fetcher commits through a gate.Gate.
type Verifier = gate.Verifier
