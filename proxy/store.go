package proxy

import (
	"context"

	"github.com/modproxy/modproxy/cache"
	"github.com/modproxy/modproxy/cache/gate"
)

// Store is the storage the proxy serves from: a bbolt file
// (*cache.Store), an S3-compatible bucket (cache/s3store) or both in tiers
// (cache/tiered). Errors for missing keys wrap cache.ErrNotFound.
//
// Artifacts enter only through the Fetcher's gate (gate.Store's Put takes
// a grant the proxy cannot name); the proxy itself reads them, and moves
// aside those that fail background verification.
type Store interface {
	gate.Store

	// Immutable artifacts and their verification state (cache.Meta).
	Stat(cache.Key) (cache.Meta, error)
	Get(cache.Key) ([]byte, cache.Meta, error) // small artifacts (.info, .mod)
	Open(cache.Key) (cache.ArtifactReader, error)
	Versions(path string) ([]string, error) // versions with a stored .info, semver order
	Walk(func(cache.Key, cache.Meta) error) error
	Quarantine(k cache.Key, reason string) error

	// Mutable entries with the time they were fetched (list, @latest,
	// checksum-database state; see sumdb.Store for the rest of it).
	GetEntry(key string) (cache.Entry, error)
	PutEntry(key string, value []byte) error
	SwapEntry(key string, old, new []byte) (bool, error)

	// Ping proves the store is reachable and writable, for /readyz.
	Ping() error
}

var _ Store = (*cache.Store)(nil)

// FetchLeaser is a Store shared by several replicas that deduplicates
// their upstream fetches (cache/s3store, cache/tiered). AcquireFetch
// returns once this replica may fetch k (release ends its claim), or with
// stored set when another replica has stored k meanwhile.
type FetchLeaser interface {
	AcquireFetch(ctx context.Context, k cache.Key) (release func(), stored bool, err error)
}
