package cache

import (
	"encoding/binary"
	"errors"
	"fmt"
	"strings"
	"time"
)

// Bucket names. See the package comment for their layout.
var (
	bucketArtifacts  = []byte("artifacts")
	bucketQuarantine = []byte("quarantine")
	bucketChunks     = []byte("chunks")
	bucketPending    = []byte("pending")
	bucketEntries    = []byte("meta") // mutable entries; the on-disk name predates the rename
	bucketKV         = []byte("kv")
	bucketSys        = []byte("sys")

	allBuckets = [][]byte{bucketArtifacts, bucketQuarantine, bucketChunks, bucketPending, bucketEntries, bucketKV, bucketSys}
)

// Keys in the sys bucket.
var (
	sysSchema    = []byte("schema")
	sysHeartbeat = []byte("heartbeat")
)

const (
	schemaVersion = 1
	formatV1      = 1 // leading byte of every record this package writes
)

var errCorrupt = errors.New("corrupt store record")

func validKind(k Kind) bool {
	return k == KindInfo || k == KindMod || k == KindZip
}

// kindOf converts key bytes to a Kind without allocating for the known kinds.
func kindOf(b []byte) (Kind, bool) {
	switch string(b) {
	case "info":
		return KindInfo, true
	case "mod":
		return KindMod, true
	case "zip":
		return KindZip, true
	}
	return "", false
}

// String formats k as path@version.kind, as in error messages.
func (k Key) String() string {
	return k.Path + "@" + k.Version + "." + string(k.Kind)
}

func (k Key) validate() error {
	switch {
	case k.Path == "" || k.Version == "":
		return fmt.Errorf("invalid key %q: empty path or version", k.String())
	case strings.IndexByte(k.Path, 0) >= 0 || strings.IndexByte(k.Version, 0) >= 0:
		return fmt.Errorf("invalid key %q: NUL byte", k.String())
	case !validKind(k.Kind):
		return fmt.Errorf("invalid key %q: unknown kind %q", k.String(), k.Kind)
	}
	return nil
}

// appendArtifactKey appends the artifacts-bucket key of k to dst.
func appendArtifactKey(dst []byte, k Key) []byte {
	dst = append(dst, k.Path...)
	dst = append(dst, 0)
	dst = append(dst, k.Version...)
	dst = append(dst, 0)
	return append(dst, k.Kind...)
}

// parseArtifactKey is the inverse of appendArtifactKey. It copies.
func parseArtifactKey(b []byte) (Key, error) {
	i := indexByte(b, 0)
	if i < 0 {
		return Key{}, fmt.Errorf("%w: artifact key %q", errCorrupt, b)
	}
	rest := b[i+1:]
	j := indexByte(rest, 0)
	if j < 0 {
		return Key{}, fmt.Errorf("%w: artifact key %q", errCorrupt, b)
	}
	kind, ok := kindOf(rest[j+1:])
	if !ok {
		return Key{}, fmt.Errorf("%w: artifact key %q", errCorrupt, b)
	}
	return Key{Path: string(b[:i]), Version: string(rest[:j]), Kind: kind}, nil
}

func indexByte(b []byte, c byte) int {
	for i, x := range b {
		if x == c {
			return i
		}
	}
	return -1
}

// quarantineKey is the artifact key, 0x00, and the blob ID, so that every
// quarantined copy of a key is kept.
func quarantineKey(artifactKey []byte, blob uint64) []byte {
	q := make([]byte, 0, len(artifactKey)+9)
	q = append(q, artifactKey...)
	q = append(q, 0)
	return binary.BigEndian.AppendUint64(q, blob)
}

func parseQuarantineKey(b []byte) (Key, error) {
	if len(b) < 10 || b[len(b)-9] != 0 {
		return Key{}, fmt.Errorf("%w: quarantine key %q", errCorrupt, b)
	}
	return parseArtifactKey(b[:len(b)-9])
}

func blobPrefix(blob uint64) [8]byte {
	var p [8]byte
	binary.BigEndian.PutUint64(p[:], blob)
	return p
}

func chunkKey(blob uint64, idx uint32) [12]byte {
	var k [12]byte
	binary.BigEndian.PutUint64(k[:8], blob)
	binary.BigEndian.PutUint32(k[8:], idx)
	return k
}

// record is a decoded artifact record.
type record struct {
	Meta
	blob      uint64
	chunkSize int
	chunks    uint32
}

// chunkLen is the length chunk i must have.
func (r *record) chunkLen(i uint32) int {
	if i+1 < r.chunks {
		return r.chunkSize
	}
	return int(r.Size - int64(r.chunkSize)*int64(r.chunks-1))
}

func chunkCount(size int64, chunkSize int) uint32 {
	return uint32((size + int64(chunkSize) - 1) / int64(chunkSize))
}

func appendRecord(dst []byte, r *record) []byte {
	dst = append(dst, formatV1)
	dst = binary.AppendUvarint(dst, uint64(r.Size))
	dst = binary.AppendVarint(dst, r.Created.UnixNano())
	dst = append(dst, r.SHA256[:]...)
	dst = binary.AppendUvarint(dst, r.blob)
	dst = binary.AppendUvarint(dst, uint64(r.chunkSize))
	dst = binary.AppendUvarint(dst, uint64(r.chunks))
	dst = appendString(dst, r.Hash)
	dst = appendString(dst, r.Upstream)
	dst = appendString(dst, string(r.State))
	return appendString(dst, r.Proof)
}

func appendString(dst []byte, s string) []byte {
	dst = binary.AppendUvarint(dst, uint64(len(s)))
	return append(dst, s...)
}

// decoder reads a record; the first error sticks.
type decoder struct {
	b   []byte
	err bool
}

func (d *decoder) uvarint() uint64 {
	v, n := binary.Uvarint(d.b)
	if n <= 0 {
		d.err = true
		return 0
	}
	d.b = d.b[n:]
	return v
}

func (d *decoder) varint() int64 {
	v, n := binary.Varint(d.b)
	if n <= 0 {
		d.err = true
		return 0
	}
	d.b = d.b[n:]
	return v
}

func (d *decoder) bytes(n uint64) []byte {
	if uint64(len(d.b)) < n {
		d.err = true
		return nil
	}
	v := d.b[:n:n]
	d.b = d.b[n:]
	return v
}

// string copies out of d (which usually points into bbolt's mmap).
func (d *decoder) string() string {
	n := d.uvarint()
	if n == 0 {
		return ""
	}
	return string(d.bytes(n))
}

func decodeRecord(b []byte) (record, error) {
	var r record
	d, err := recordDecoder(b)
	if err != nil {
		return r, err
	}
	err = d.record(&r)
	return r, err
}

func recordDecoder(b []byte) (decoder, error) {
	if len(b) == 0 || b[0] != formatV1 {
		return decoder{}, fmt.Errorf("%w: unknown record format", errCorrupt)
	}
	return decoder{b: b[1:]}, nil
}

func (d *decoder) record(r *record) error {
	size := d.uvarint()
	created := d.varint()
	copy(r.SHA256[:], d.bytes(32))
	r.blob = d.uvarint()
	chunkSize := d.uvarint()
	chunks := d.uvarint()
	r.Hash = d.string()
	r.Upstream = d.string()
	if len(d.b) > 0 {
		r.State = State(d.string())
		r.Proof = d.string()
	} else if r.Hash != "" {
		// Records written before states existed: a hash was only ever
		// recorded after the checksum database agreed.
		r.State = StateVerified
	} else {
		r.State = StateUnverified
	}
	if d.err || !validState(r.State) || len(d.b) != 0 || size > 1<<62 || chunkSize == 0 || chunkSize > maxChunkSize ||
		chunks != uint64(chunkCount(int64(size), int(chunkSize))) {
		return fmt.Errorf("%w: artifact record", errCorrupt)
	}
	r.Size = int64(size)
	r.Created = time.Unix(0, created).UTC()
	r.chunkSize = int(chunkSize)
	r.chunks = uint32(chunks)
	return nil
}

// recordBlob decodes only the blob ID of an artifact record.
func recordBlob(b []byte) (uint64, error) {
	d, err := recordDecoder(b)
	if err != nil {
		return 0, err
	}
	d.uvarint()
	d.varint()
	d.bytes(32)
	blob := d.uvarint()
	if d.err {
		return 0, fmt.Errorf("%w: artifact record", errCorrupt)
	}
	return blob, nil
}

func appendQuarantine(dst []byte, at time.Time, reason string, rec []byte) []byte {
	dst = append(dst, formatV1)
	dst = binary.AppendVarint(dst, at.UnixNano())
	dst = appendString(dst, reason)
	return append(dst, rec...)
}

// splitQuarantine returns the reason, the time and the artifact record
// embedded in a quarantine record (which still points into b).
func splitQuarantine(b []byte) (reason string, at time.Time, rec []byte, err error) {
	d, err := recordDecoder(b)
	if err != nil {
		return "", time.Time{}, nil, err
	}
	nanos := d.varint()
	reason = d.string()
	if d.err {
		return "", time.Time{}, nil, fmt.Errorf("%w: quarantine record", errCorrupt)
	}
	return reason, time.Unix(0, nanos).UTC(), d.b, nil
}

func appendEntry(dst []byte, fetched time.Time, value []byte) []byte {
	dst = append(dst, formatV1)
	dst = binary.AppendVarint(dst, fetched.UnixNano())
	return append(dst, value...)
}

func decodeEntry(b []byte) (Entry, error) {
	d, err := recordDecoder(b)
	if err != nil {
		return Entry{}, err
	}
	nanos := d.varint()
	if d.err {
		return Entry{}, fmt.Errorf("%w: entry record", errCorrupt)
	}
	return Entry{Value: append([]byte{}, d.b...), Fetched: time.Unix(0, nanos).UTC()}, nil
}

func appendTime(dst []byte, t time.Time) []byte {
	return binary.AppendVarint(dst, t.UnixNano())
}

// Counters in the sys bucket.
func counterKeys(k Kind) (n, b []byte) {
	switch k {
	case KindInfo:
		return []byte("n:info"), []byte("b:info")
	case KindMod:
		return []byte("n:mod"), []byte("b:mod")
	case KindZip:
		return []byte("n:zip"), []byte("b:zip")
	}
	panic("cache: unknown kind " + string(k))
}

var (
	counterQuarantineN = []byte("n:q")
	counterQuarantineB = []byte("b:q")
)

func readCounter(v []byte) int64 {
	if len(v) != 8 {
		return 0
	}
	return int64(binary.BigEndian.Uint64(v))
}
