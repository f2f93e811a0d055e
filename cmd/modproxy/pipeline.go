package main

import (
	"cmp"
	"context"
	"log/slog"
	"net/http"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/modproxy/modproxy/proxy"
	"github.com/modproxy/modproxy/sumdb"
)

// pipeline is the fetch–verify–store pipeline over a store: the network
// layer, the checksum-database verifier and the fetcher, wired the same way
// for "serve" and "prewarm --db".
type pipeline struct {
	network  *network
	verifier *sumdb.Verifier // nil when verification is off
	fetcher  *proxy.Fetcher
	direct   *observedDirect // nil without a direct upstream
}

func newPipeline(ctx context.Context, c serveConfig, set resolvedSettings, store servingStore, reg prometheus.Registerer, logger *slog.Logger) (*pipeline, error) {
	allURLs := append(proxy.URLs(set.upstreams), proxy.URLs(set.privateUpstreams)...)
	var named []string
	if !c.offline && usesDirect(set.upstreams, set.privateUpstreams) {
		named = append(named, "direct")
	}
	n, err := newNetwork(ctx, c.net, allURLs, reg, logger, named...)
	if err != nil {
		return nil, err
	}
	v, err := newVerifier(set, n, c.offline, store, reg, logger)
	if err != nil {
		n.Close()
		return nil, err
	}
	var verifier proxy.Verifier
	if v != nil {
		verifier = v
	} else {
		logger.Warn("checksum database verification is OFF (--sumdb off or GOSUMDB=off): modules are stored and served without being checked against any checksum database")
	}
	var dir proxy.Direct
	var od *observedDirect
	if !c.offline && usesDirect(set.upstreams, set.privateUpstreams) {
		if od, err = newDirect(ctx, c, set, n.probe, logger); err != nil {
			n.Close()
			return nil, err
		}
		if od != nil {
			dir = od
		}
	}
	f, err := proxy.NewFetcher(proxy.Config{
		Direct:           dir,
		Store:            store,
		Client:           n.Client(),
		Upstreams:        set.upstreams,
		PrivateUpstreams: set.privateUpstreams,
		Private:          set.private,
		Verifier:         verifier,
		VerifyFailOpen:   c.sumdbFailOpen,
		Health:           n.Health(),
		Offline:          c.offline,
		NoPrefetch:       !c.prefetch,
		PrefetchInfo:     c.prefetchInfo,
		// The flag's 0 is "always", the Config's "the default".
		PrefetchPrunedMinMiss: cmp.Or(c.prefetchPrunedMinMiss, -1),
		ListTTL:               c.listTTL,
		NegativeTTL:           c.negativeTTL,
		SpoolDir:              c.spoolDir,
		MaxZipDownloads:       c.maxZipDownloads,
		ZipQueue:              c.zipQueue,
		ZipQueueWait:          c.zipQueueWait,
		SpoolQuota:            int64(c.spoolQuota),
		MinFreeSpace:          int64(c.minFreeSpace),
		Logger:                logger,
		Metrics:               proxy.NewMetrics(reg),
	})
	if err != nil {
		if od != nil {
			od.Close()
		}
		n.Close()
		return nil, err
	}
	return &pipeline{network: n, verifier: v, fetcher: f, direct: od}, nil
}

// sumdbHandler serves /sumdb/… from the store, or is nil when verification
// is off.
func (p *pipeline) sumdbHandler() http.Handler {
	if p.verifier == nil {
		return nil
	}
	return p.verifier.Handler()
}

// Close stops the fetcher's downloads, then the network layer.
func (p *pipeline) Close() {
	p.fetcher.Close()
	if p.direct != nil {
		p.direct.Close()
	}
	p.network.Close()
}
