package cache

import (
	"errors"
	"time"
)

// ErrNotFound is returned (wrapped) when a key is not in the store.
var ErrNotFound = errors.New("not found in store")

// ErrLocked is returned by Open when another process holds the store file.
var ErrLocked = errors.New("store is in use by another process")

// Kind is the kind of an immutable module artifact.
type Kind string

// Artifact kinds, named after the file extensions of the GOPROXY protocol.
const (
	KindInfo Kind = "info"
	KindMod  Kind = "mod"
	KindZip  Kind = "zip"
)

// Key names one immutable artifact. Path and Version are in their decoded,
// canonical form (for example "github.com/BurntSushi/toml", "v1.2.3"), never
// case-encoded.
type Key struct {
	Path    string
	Version string
	Kind    Kind
}

// Meta describes a stored artifact.
type Meta struct {
	Size     int64     // bytes of content
	Created  time.Time // when it was committed (serves Last-Modified)
	SHA256   [32]byte  // of the content (serves ETag)
	Hash     string    // checksum-database hash ("h1:…") it was verified against; "" if unverified (private, or sumdb off)
	Upstream string    // upstream it was fetched from
}

// Entry is a mutable value with the time it was fetched, used for list,
// @latest and checksum-database latest records.
type Entry struct {
	Value   []byte
	Fetched time.Time
}
