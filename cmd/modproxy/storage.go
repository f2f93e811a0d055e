package main

import (
	"context"
	"log/slog"
	"strings"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/spf13/pflag"

	"github.com/modproxy/modproxy/bundle"
	"github.com/modproxy/modproxy/cache"
	"github.com/modproxy/modproxy/cache/lru"
	"github.com/modproxy/modproxy/cache/s3store"
	"github.com/modproxy/modproxy/cache/tiered"
	"github.com/modproxy/modproxy/proxy"
	"github.com/modproxy/modproxy/sumdb"
)

// storageConfig is where "modproxy serve" keeps artifacts: the bbolt file
// alone, or an S3 bucket with the bbolt file as this replica's local tier.
type storageConfig struct {
	cacheSize   string
	s3Bucket    string
	s3Prefix    string
	s3Endpoint  string
	s3Region    string
	s3PathStyle bool
	s3LeaseTTL  time.Duration
}

func addStorageFlags(f *pflag.FlagSet, c *storageConfig) {
	f.StringVar(&c.cacheSize, "cache-size", "0", "bound on the content of the bbolt store (the local tier with S3), e.g. 20GiB; least recently used zips are evicted (0: unbounded)")
	f.StringVar(&c.s3Bucket, "s3-bucket", "", "S3 bucket shared by replicas; with it, --db is this replica's local tier (credentials: the standard AWS chain)")
	f.StringVar(&c.s3Prefix, "s3-prefix", "", "key prefix inside --s3-bucket, e.g. modproxy/")
	f.StringVar(&c.s3Endpoint, "s3-endpoint", "", "base URL of an S3-compatible service (MinIO, Ceph, R2, ...); default AWS")
	f.StringVar(&c.s3Region, "s3-region", "", "S3 region (default: AWS_REGION or the shared AWS config)")
	f.BoolVar(&c.s3PathStyle, "s3-path-style", false, "address the bucket in the URL path, not the host name (most S3-compatible services)")
	f.DurationVar(&c.s3LeaseTTL, "s3-lease-ttl", s3store.DefaultLeaseTTL, "how long a replica's claim to fetch an artifact lasts unrenewed: the longest a crashed replica delays the others")
}

func (c storageConfig) validate(changed func(string) bool) error {
	if _, err := parseSize(c.cacheSize); err != nil {
		return usagef("invalid --cache-size %q: %v", c.cacheSize, err)
	}
	for _, name := range []string{"s3-bucket", "s3-prefix", "s3-endpoint", "s3-region"} {
		if changed(name) && c.s3Bucket == "" {
			if name == "s3-bucket" {
				return usagef("--s3-bucket is empty: give a bucket name, or leave the flag (and MODPROXY_S3_BUCKET) unset for a single store")
			}
			return usagef("--%s needs --s3-bucket", name)
		}
	}
	if c.s3Bucket != "" && strings.TrimSpace(c.s3Bucket) != c.s3Bucket {
		return usagef("invalid --s3-bucket %q: surrounding spaces", c.s3Bucket)
	}
	if c.s3LeaseTTL <= 0 {
		return usagef("invalid --s3-lease-ttl %s: must be positive", c.s3LeaseTTL)
	}
	return nil
}

// parseSize parses a byte count as a byteSize flag does.
func parseSize(s string) (int64, error) {
	var b byteSize
	if err := b.Set(s); err != nil {
		return 0, err
	}
	return int64(b), nil
}

// servingStore is what a pipeline needs: the proxy's artifacts and
// entries, and the checksum database's state.
type servingStore interface {
	proxy.Store
	sumdb.Store
}

var (
	_ servingStore = (*lru.Store)(nil)
	_ servingStore = (*tiered.Store)(nil)
)

// storage is the opened store of a serve process.
type storage struct {
	bolt   *cache.Store
	local  *lru.Store
	remote *s3store.Store // nil without --s3-bucket
	tier   *tiered.Store  // nil without --s3-bucket
	serve  servingStore   // what the proxy serves from
}

func openStorage(ctx context.Context, db string, sc storageConfig, spoolDir string, logger *slog.Logger) (*storage, error) {
	limit, err := parseSize(sc.cacheSize)
	if err != nil {
		return nil, usagef("invalid --cache-size %q: %v", sc.cacheSize, err)
	}
	st := &storage{}
	if sc.s3Bucket != "" {
		// The bucket first: a replica that cannot reach it must not
		// start serving from its local tier alone.
		r, err := s3store.New(ctx, s3store.Config{
			Bucket: sc.s3Bucket, Prefix: sc.s3Prefix, Endpoint: sc.s3Endpoint, Region: sc.s3Region,
			PathStyle: sc.s3PathStyle, TempDir: spoolDir, LeaseTTL: sc.s3LeaseTTL,
		})
		if err != nil {
			return nil, err
		}
		st.remote = r
	}
	// A damaged artifact found while serving is quarantined, so that the
	// next request refetches it.
	st.bolt, err = cache.Open(db, cache.Options{QuarantineCorrupt: true})
	if err != nil {
		return nil, err
	}
	if err := bundle.CheckServable(st.bolt, db); err != nil {
		st.bolt.Close()
		return nil, err
	}
	st.local, err = lru.New(st.bolt, limit)
	if err != nil {
		st.bolt.Close()
		return nil, err
	}
	go func() {
		if err := st.local.Wait(); err != nil {
			logger.Error("store: cannot learn the stored artifacts; --cache-size is not enforced", "err", err)
		}
	}()
	st.serve = st.local
	if st.remote != nil {
		st.tier = tiered.New(st.local, st.remote)
		st.serve = st.tier
		logger.Info("store: shared S3 bucket with a local tier", "s3", st.remote.String(), "local", db, "cache_size", limit)
	}
	return st, nil
}

func (st *storage) Close() error {
	st.local.Close()
	return st.bolt.Close()
}

// storeCollector exports the store's size and tier counters at scrape
// time.
type storeCollector struct {
	st                         *storage
	bytes, artifacts, diskFree *prometheus.Desc
	limit, used                *prometheus.Desc
	evictions, evictedBytes    *prometheus.Desc
	tierReads                  *prometheus.Desc
	leaseWaits, takeovers      *prometheus.Desc
	corruptions                *prometheus.Desc
}

func newStoreCollector(st *storage) *storeCollector {
	return &storeCollector{
		st:           st,
		bytes:        prometheus.NewDesc("modproxy_store_bytes", "Size of the store file in bytes.", nil, nil),
		artifacts:    prometheus.NewDesc("modproxy_store_artifacts", "Stored artifacts by kind.", []string{"kind"}, nil),
		diskFree:     prometheus.NewDesc("modproxy_store_disk_free_bytes", "Free bytes on the file system that holds the store.", nil, nil),
		limit:        prometheus.NewDesc("modproxy_store_limit_bytes", "Configured store size limit in bytes (--cache-size; 0: unlimited).", nil, nil),
		used:         prometheus.NewDesc("modproxy_store_content_bytes", "Content bytes of the artifacts in the bbolt store (what --cache-size bounds).", nil, nil),
		evictions:    prometheus.NewDesc("modproxy_store_evictions_total", "Zips evicted from the bbolt store to stay within --cache-size.", nil, nil),
		evictedBytes: prometheus.NewDesc("modproxy_store_evicted_bytes_total", "Content bytes of the evicted zips.", nil, nil),
		tierReads:    prometheus.NewDesc("modproxy_store_tier_reads_total", "Artifact reads in tiered mode by where they were answered: local, s3, miss.", []string{"tier"}, nil),
		leaseWaits:   prometheus.NewDesc("modproxy_fetch_lease_waits_total", "Polls while another replica held the fetch lease of an artifact.", nil, nil),
		takeovers:    prometheus.NewDesc("modproxy_fetch_lease_takeovers_total", "Expired fetch leases of other replicas taken over.", nil, nil),
		corruptions: prometheus.NewDesc("modproxy_store_corruptions_total",
			"Damage found in the store while serving: chunks failing their checksum, undecodable records, damaged pages.", nil, nil),
	}
}

func (c *storeCollector) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range []*prometheus.Desc{c.bytes, c.artifacts, c.diskFree, c.limit, c.used, c.evictions, c.evictedBytes, c.tierReads, c.leaseWaits, c.takeovers, c.corruptions} {
		ch <- d
	}
}

func (c *storeCollector) Collect(ch chan<- prometheus.Metric) {
	gauge := func(d *prometheus.Desc, v float64, labels ...string) {
		ch <- prometheus.MustNewConstMetric(d, prometheus.GaugeValue, v, labels...)
	}
	counter := func(d *prometheus.Desc, v float64, labels ...string) {
		ch <- prometheus.MustNewConstMetric(d, prometheus.CounterValue, v, labels...)
	}
	counter(c.corruptions, float64(c.st.bolt.Corruptions()))
	st, err := c.st.bolt.Stats()
	if err != nil {
		ch <- prometheus.NewInvalidMetric(c.bytes, err)
		return
	}
	gauge(c.bytes, float64(st.FileSize))
	for kind, n := range st.Artifacts {
		gauge(c.artifacts, float64(n), string(kind))
	}
	gauge(c.limit, float64(c.st.local.Limit()))
	gauge(c.used, float64(c.st.local.Used()))
	n, b, _ := c.st.local.Evictions()
	counter(c.evictions, float64(n))
	counter(c.evictedBytes, float64(b))
	if c.st.tier != nil {
		ts := c.st.tier.Stats()
		counter(c.tierReads, float64(ts.LocalHits), "local")
		counter(c.tierReads, float64(ts.RemoteHits), "s3")
		counter(c.tierReads, float64(ts.Misses), "miss")
		w, t := c.st.remote.LeaseStats()
		counter(c.leaseWaits, float64(w))
		counter(c.takeovers, float64(t))
	}
	if free, err := diskFree(c.st.bolt.Path()); err == nil {
		gauge(c.diskFree, float64(free))
	}
}
