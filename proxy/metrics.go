package proxy

import (
	"github.com/prometheus/client_golang/prometheus"
)

// Metrics are the proxy's own Prometheus collectors.
type Metrics struct {
	requests    *prometheus.CounterVec
	duration    *prometheus.HistogramVec
	staleServed *prometheus.CounterVec
	fetches     *prometheus.CounterVec
	fetchShared *prometheus.CounterVec
	// storedUnverified counts artifacts stored without checksum-database
	// verification because the database was unreachable (fail-open).
	storedUnverified *prometheus.CounterVec
	// reverified counts background verifications of unverified artifacts.
	reverified *prometheus.CounterVec
	// prefetch counts prefetched .mod files by kind and result.
	prefetch *prometheus.CounterVec

	// The zip download budget (zipbudget.go).
	zipInFlight prometheus.Gauge
	zipQueued   prometheus.Gauge
	spoolBytes  prometheus.Gauge
	zipRejected *prometheus.CounterVec
	zipCanceled prometheus.Counter
	// servedUnstored counts misses passed through to the client because
	// the store had no room for them.
	servedUnstored *prometheus.CounterVec
	// commitsPending counts verified artifacts answered and not yet
	// committed to the store.
	commitsPending prometheus.Gauge
}

// NewMetrics creates the proxy's collectors and registers them with reg
// (nil: unregistered, for tests).
func NewMetrics(reg prometheus.Registerer) *Metrics {
	m := &Metrics{
		requests: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "modproxy_requests_total",
			Help: "Client requests by kind, status code and cache result (hit, miss, stale, negative, bypass).",
		}, []string{"kind", "code", "cache"}),
		duration: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name:                            "modproxy_request_duration_seconds",
			Help:                            "Time to answer client requests, by kind and cache result.",
			Buckets:                         prometheus.ExponentialBucketsRange(0.0001, 60, 16),
			NativeHistogramBucketFactor:     1.1,
			NativeHistogramMaxBucketNumber:  160,
			NativeHistogramMinResetDuration: 0,
		}, []string{"kind", "cache"}),
		staleServed: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "modproxy_stale_served_total",
			Help: "list and @latest answers served stale because every upstream failed (or offline mode).",
		}, []string{"kind"}),
		fetches: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "modproxy_fetches_total",
			Help: "Upstream fetches of artifacts by kind and result (ok, error).",
		}, []string{"kind", "result"}),
		storedUnverified: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "modproxy_stored_unverified_total",
			Help: "Artifacts stored unverified because the checksum database was unreachable (--sumdb-fail-open).",
		}, []string{"kind"}),
		reverified: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "modproxy_reverified_total",
			Help: "Background verifications of artifacts stored unverified (fail-open), by kind and result (ok, mismatch: quarantined, not_found, unavailable: retried later, error).",
		}, []string{"kind", "result"}),
		prefetch: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "modproxy_prefetch_total",
			Help: "Prefetched files by kind (mod: the .mod after an .info miss; require: .mod files required by a go.mod served; info: the .info after its .mod, with --prefetch-info) and result (used: a client asked for it, wasted: nobody did within the window, error, dropped: over budget, pruned: a requirement of a go 1.17+ go.mod, not prefetched while .mod misses are cheap).",
		}, []string{"kind", "result"}),
		fetchShared: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "modproxy_fetch_shared_total",
			Help: "Client requests that joined a fetch already in flight instead of starting one.",
		}, []string{"kind"}),
		zipInFlight: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "modproxy_zip_downloads_in_flight",
			Help: "Upstream zip downloads holding a download slot (--max-zip-downloads).",
		}),
		commitsPending: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "modproxy_store_commits_pending",
			Help: "Verified artifacts already answered whose store commit has not ended (a replica killed now would not have stored them; a graceful stop waits for them).",
		}),
		zipQueued: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "modproxy_zip_downloads_queued",
			Help: "Zip downloads waiting for a download slot.",
		}),
		spoolBytes: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "modproxy_spool_bytes",
			Help: "Bytes of the spool quota held by zip spool files: the whole size of a download of known size, else what arrived (--spool-quota bounds them).",
		}),
		zipRejected: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "modproxy_zip_downloads_rejected_total",
			Help: "Zip downloads refused with 503 by reason (queue_full, queue_timeout, spool_quota).",
		}, []string{"reason"}),
		zipCanceled: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "modproxy_zip_downloads_canceled_total",
			Help: "Zip downloads cancelled because every client waiting for them left.",
		}),
		servedUnstored: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "modproxy_served_unstored_total",
			Help: "Misses passed through to the client without being stored, because the store's disk had no room.",
		}, []string{"kind"}),
	}
	for _, r := range []string{"queue_full", "queue_timeout", "spool_quota"} {
		m.zipRejected.WithLabelValues(r)
	}
	// Export zeros for the known label values, so that rate() and
	// increase() in rules and dashboards see the series from the start.
	for _, k := range []Kind{KindList, KindLatest} {
		m.staleServed.WithLabelValues(string(k))
	}
	for _, k := range []Kind{KindMod, KindZip} {
		m.storedUnverified.WithLabelValues(string(k))
		m.reverified.WithLabelValues(string(k), "mismatch")
	}
	for _, k := range []Kind{KindInfo, KindMod, KindZip, KindList, KindLatest} {
		m.servedUnstored.WithLabelValues(string(k))
		m.fetchShared.WithLabelValues(string(k))
		for _, r := range []string{"ok", "error"} {
			m.fetches.WithLabelValues(string(k), r)
		}
	}
	for _, k := range []string{prefetchMod, prefetchRequire, prefetchInfo} {
		for _, r := range []string{prefetchUsed, prefetchWasted, prefetchError, prefetchDropped, prefetchPruned} {
			m.prefetch.WithLabelValues(k, r)
		}
	}
	if reg != nil {
		reg.MustRegister(m.requests, m.duration, m.staleServed, m.fetches, m.fetchShared, m.storedUnverified, m.reverified, m.prefetch,
			m.zipInFlight, m.zipQueued, m.spoolBytes, m.zipRejected, m.zipCanceled, m.servedUnstored, m.commitsPending)
	}
	return m
}
