package proxy

import (
	"sync"
	"time"
)

// negativeCache remembers upstream not-found answers for a short time, so
// that the go command's probing of module path prefixes (it asks for
// a/b/c, a/b and a in turn) does not hit the upstreams on every build.
// It is in memory: after a restart the upstreams are asked again.
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

// put remembers err for key. When full, expired entries are dropped first,
// then arbitrary ones: the cache only saves upstream round trips.
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
	c.entries[key] = negEntry{err: err, expires: now.Add(c.ttl)}
}
