package proxy

import (
	"math/rand/v2"
	"net/http"
	"sync"
	"time"
)

// Error backoff: an upstream error (5xx, timeout, checksum database
// unavailable, a mismatch) is remembered for errorBackoff plus up to
// errorBackoffJitter, so that a burst of identical misses against a failing
// upstream costs one round trip, while a recovered upstream is asked again
// within seconds. Only not-found answers are kept for the negative TTL.
const (
	errorBackoff       = 2 * time.Second
	errorBackoffJitter = 2 * time.Second
)

// negativeCache remembers upstream not-found answers for the negative TTL,
// so that the go command's probing of module path prefixes (it asks for
// a/b/c, a/b and a in turn) does not hit the upstreams on every build, and
// other upstream errors for a short jittered backoff only. The same rule
// holds for every request kind. It is in memory: after a restart the
// upstreams are asked again.
type negativeCache struct {
	ttl time.Duration
	max int
	now func() time.Time

	mu      sync.Mutex
	entries map[string]negEntry
}

type negEntry struct {
	err     *HTTPError
	expires time.Time
}

func newNegativeCache(ttl time.Duration, max int, now func() time.Time) *negativeCache {
	return &negativeCache{ttl: ttl, max: max, now: now, entries: make(map[string]negEntry)}
}

// isNotFound reports whether a client-facing error says "not found".
func (e *HTTPError) isNotFound() bool {
	return e.Status == http.StatusNotFound || e.Status == http.StatusGone
}

// negKey is the negative cache's key of the artifact req names, the same
// for a client's fetch and the prefetcher's check of it.
func (r Request) negKey() string { return r.String() + "." + string(r.Kind) }

// get returns the remembered error for key, or nil.
func (c *negativeCache) get(key string) *HTTPError {
	c.mu.Lock()
	defer c.mu.Unlock()
	e, ok := c.entries[key]
	if !ok {
		return nil
	}
	if !c.now().Before(e.expires) {
		delete(c.entries, key)
		return nil
	}
	return e.err
}

// lifetime is how long err is remembered: the negative TTL for not found,
// a short jittered backoff (never longer than the TTL) for anything else.
func (c *negativeCache) lifetime(err *HTTPError) time.Duration {
	if err.isNotFound() {
		return c.ttl
	}
	return min(c.ttl, errorBackoff+rand.N(errorBackoffJitter))
}

// put remembers err for key (see lifetime). When full, expired entries are
// dropped first, then arbitrary ones: the cache only saves upstream round
// trips.
func (c *negativeCache) put(key string, err *HTTPError) {
	c.mu.Lock()
	defer c.mu.Unlock()
	now := c.now()
	if len(c.entries) >= c.max {
		for k, e := range c.entries {
			if !now.Before(e.expires) {
				delete(c.entries, k)
			}
		}
		for k := range c.entries {
			if len(c.entries) < c.max {
				break
			}
			delete(c.entries, k)
		}
	}
	c.entries[key] = negEntry{err: err, expires: now.Add(c.lifetime(err))}
}
