package sumdb

import (
	"errors"

	"github.com/prometheus/client_golang/prometheus"
)

// metrics are the package's collectors (names in docs/ARCHITECTURE.md).
type metrics struct {
	security      *prometheus.CounterVec // {db}
	verifications *prometheus.CounterVec // {kind,result}
	requests      *prometheus.CounterVec // {endpoint,cache}
}

func newMetrics(reg prometheus.Registerer) (*metrics, error) {
	m := &metrics{
		security: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "modproxy_sumdb_security_errors_total",
			Help: "Checksum database misbehavior detected (inconsistent signed tree heads).",
		}, []string{"db"}),
		verifications: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "modproxy_sumdb_verifications_total",
			Help: "Verifications of go.mod and zip content against the checksum database, by result (ok, mismatch, unavailable, exempt, not_found, security, error).",
		}, []string{"kind", "result"}),
		requests: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "modproxy_sumdb_requests_total",
			Help: "Requests to the /sumdb/ endpoints, by endpoint and how they were answered (hit, miss, stale, private, not_found, error).",
		}, []string{"endpoint", "cache"}),
	}
	if reg == nil {
		return m, nil
	}
	var err error
	if m.security, err = register(reg, m.security); err != nil {
		return nil, err
	}
	if m.verifications, err = register(reg, m.verifications); err != nil {
		return nil, err
	}
	if m.requests, err = register(reg, m.requests); err != nil {
		return nil, err
	}
	return m, nil
}

// register registers c, or returns the identical collector registered
// earlier (a second Verifier in the same process shares the series).
func register(reg prometheus.Registerer, c *prometheus.CounterVec) (*prometheus.CounterVec, error) {
	if err := reg.Register(c); err != nil {
		var are prometheus.AlreadyRegisteredError
		if errors.As(err, &are) {
			if existing, ok := are.ExistingCollector.(*prometheus.CounterVec); ok {
				return existing, nil
			}
		}
		return nil, err
	}
	return c, nil
}
