package cache

import (
	"errors"
	"io"
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

// State says what vouches for a stored artifact's content.
type State string

// Artifact states. cache/gate sets one on every artifact it commits.
const (
	// StateVerified: the checksum database's record of the artifact agrees
	// with its content; Meta.Proof names the record.
	StateVerified State = "verified"
	// StateExempt: the module path is private or excluded from the
	// checksum database (GOPRIVATE, GONOSUMDB, or the database is off);
	// only the content checks vouch for it. .info files, which no
	// database records, are exempt too.
	StateExempt State = "exempt"
	// StateUnverified: stored while the checksum database could not be
	// reached (fail-open); it still needs verifying.
	StateUnverified State = "unverified"
)

// validState accepts the states and "" (no state: cache's own tests and
// tools; the gate always sets one).
func validState(s State) bool {
	return s == "" || s == StateVerified || s == StateExempt || s == StateUnverified
}

// Meta describes a stored artifact.
type Meta struct {
	Size     int64     // bytes of content
	Created  time.Time // when it was committed (serves Last-Modified)
	SHA256   [32]byte  // of the content (serves ETag)
	Hash     string    // "h1:" hash of the content (.mod and .zip), computed when it was committed
	Upstream string    // upstream it was fetched from
	State    State     // what vouches for the content
	Proof    string    // for StateVerified: the checksum-database record that proved it
}

// Entry is a mutable value with the time it was fetched, used for list,
// @latest and checksum-database latest records.
type Entry struct {
	Value   []byte
	Fetched time.Time
}

// ArtifactReader reads the content of one stored artifact, whichever
// backend holds it (*Reader for a bbolt store). ReadAt may be called
// concurrently; Read, Seek and WriteTo share an offset. A reader never
// returns another artifact's bytes: if its artifact is deleted while being
// read, reads fail with an error wrapping ErrNotFound.
type ArtifactReader interface {
	io.Reader
	io.Seeker
	io.ReaderAt
	io.WriterTo
	io.Closer
	Meta() Meta  // the artifact's Meta
	Size() int64 // content length
}
