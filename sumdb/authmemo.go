package sumdb

import (
	"crypto/sha256"
	"sync"
)

// maxAuthMemo bounds the tiles an authMemo remembers (about 100 bytes
// each); a full memo starts over, costing only re-authentication.
const maxAuthMemo = 1 << 16

// authMemo remembers the tiles authenticated in this process, by store
// file name and content digest. A tile's content is fixed by its path, so
// the same bytes need not be proven against a signed tree head again:
// that proof reads the tree heads and the proof tiles from the store and
// checks signatures on every request for the tile. Different bytes (a
// store damaged or poisoned since) miss the memo and are authenticated.
type authMemo struct {
	mu sync.Mutex
	m  map[string][sha256.Size]byte
}

// known reports whether data was authenticated as file.
func (a *authMemo) known(file string, data []byte) bool {
	sum := sha256.Sum256(data)
	a.mu.Lock()
	defer a.mu.Unlock()
	d, ok := a.m[file]
	return ok && d == sum
}

// add remembers data as authenticated for file.
func (a *authMemo) add(file string, data []byte) {
	sum := sha256.Sum256(data)
	a.mu.Lock()
	defer a.mu.Unlock()
	if a.m == nil || len(a.m) >= maxAuthMemo {
		a.m = make(map[string][sha256.Size]byte)
	}
	a.m[file] = sum
}
