package cache

import (
	"encoding/binary"
	"errors"
	"fmt"
	"hash/crc32"
	"strings"
	"time"
)

// Bucket names. See the package comment for their layout.
var (
	bucketArtifacts  = []byte("artifacts")
	bucketQuarantine = []byte("quarantine")
	bucketChunks     = []byte("chunks")
	bucketBlobs      = []byte("blobs") // schema 3; a store of an older schema may lack it
	bucketPending    = []byte("pending")
	bucketEntries    = []byte("meta") // mutable entries; the on-disk name predates the rename
	bucketKV         = []byte("kv")
	bucketSys        = []byte("sys")

	// requiredBuckets are the buckets of every schema: a read-only Open
	// needs them. A writable Open creates allBuckets.
	requiredBuckets = [][]byte{bucketArtifacts, bucketQuarantine, bucketChunks, bucketPending, bucketEntries, bucketKV, bucketSys}
	allBuckets      = append(requiredBuckets[:len(requiredBuckets):len(requiredBuckets)], bucketBlobs)
)

// Keys in the sys bucket.
var (
	sysSchema    = []byte("schema")
	sysHeartbeat = []byte("heartbeat")
)

const (
	// schemaVersion 2 added chunk checksums (artifact records of format
	// 2), schema 3 the blobs bucket (format 3). A store of an older schema
	// is upgraded in place when opened for writing: its artifacts keep
	// their records and chunks, which stay readable (see the package
	// comment). A build that reads only older schemas refuses the store
	// instead of missing the content of format-3 records.
	schemaVersion    = 3
	minSchemaVersion = 1

	formatV1 = 1 // leading byte of quarantine and entry records, and of artifact records without chunk checksums
	// formatV2 is the leading byte of artifact records whose chunks carry
	// a CRC-32C of their content (chunkCRCLen bytes after it).
	formatV2 = 2
	// formatV3 is formatV2 with the chunks in a bucket of their own, in
	// blobs.
	formatV3 = 3
)

// chunkCRCLen is the length of the big-endian CRC-32C (Castagnoli) that
// ends every chunk of a format-2 artifact.
const chunkCRCLen = 4

var castagnoli = crc32.MakeTable(crc32.Castagnoli)

// ErrCorrupt is returned (wrapped) when stored data fails a check on read:
// a chunk whose checksum or length is wrong, an undecodable record, or a
// damaged page of the store file. The error names what was damaged.
var ErrCorrupt = errors.New("store data is damaged")

// errCorrupt is the package's short name for ErrCorrupt.
var errCorrupt = ErrCorrupt

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

// chunkKey is the key of chunk idx of blob in the chunks bucket. It is
// also what a chunk's checksum covers, whichever bucket holds the chunk.
func chunkKey(blob uint64, idx uint32) [12]byte {
	var k [12]byte
	binary.BigEndian.PutUint64(k[:8], blob)
	binary.BigEndian.PutUint32(k[8:], idx)
	return k
}

// storedKey sets *buf to chunk idx's chunkKey and returns its key in the
// bucket chunkBucket returns: all of it in the chunks bucket, the index
// alone in a blob's own bucket.
func (r *record) storedKey(buf *[12]byte, idx uint32) []byte {
	*buf = chunkKey(r.blob, idx)
	if r.ownBucket {
		return buf[8:]
	}
	return buf[:]
}

// record is a decoded artifact record.
type record struct {
	Meta
	blob      uint64
	chunkSize int
	chunks    uint32
	// checksummed records (formats 2 and 3) have a CRC-32C after every
	// chunk.
	checksummed bool
	// ownBucket records (format 3) keep their chunks in a bucket of their
	// own in blobs, keyed by chunk index, instead of in chunks.
	ownBucket bool
}

// storedLen is the length chunk i has in its bucket: content, and the
// checksum trailer of a checksummed record.
func (r *record) storedLen(i uint32) int {
	if r.checksummed {
		return r.chunkLen(i) + chunkCRCLen
	}
	return r.chunkLen(i)
}

// chunkCRC is the checksum of chunk idx of blob with content c. It covers
// the chunk's key too, so that a chunk that turns up under another key (a
// damaged key or page) fails its check.
func chunkCRC(blob uint64, idx uint32, c []byte) uint32 {
	key := chunkKey(blob, idx)
	return crc32.Update(crc32.Checksum(key[:], castagnoli), castagnoli, c)
}

// checkChunk returns the content of stored chunk v of r, checking its
// length and (format 2) its checksum.
func (r *record) checkChunk(v []byte, i uint32) ([]byte, error) {
	if len(v) != r.storedLen(i) {
		return nil, fmt.Errorf("%w: chunk %d of blob %d has %d bytes, want %d", errCorrupt, i, r.blob, len(v), r.storedLen(i))
	}
	if !r.checksummed {
		return v, nil
	}
	n := len(v) - chunkCRCLen
	if got, want := chunkCRC(r.blob, i, v[:n]), binary.BigEndian.Uint32(v[n:]); got != want {
		return nil, fmt.Errorf("%w: chunk %d of blob %d fails its checksum (crc32c %08x, stored %08x)", errCorrupt, i, r.blob, got, want)
	}
	return v[:n], nil
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

// appendRecord appends the record of the artifact with artifacts-bucket
// key key. A format-2 record ends with a CRC-32C of key and record, so that
// a damaged record, or a record under a damaged key, fails to decode.
func appendRecord(dst, key []byte, r *record) []byte {
	start := len(dst)
	format := byte(formatV1)
	switch {
	case r.ownBucket:
		format = formatV3
	case r.checksummed:
		format = formatV2
	}
	dst = append(dst, format)
	dst = binary.AppendUvarint(dst, uint64(r.Size))
	dst = binary.AppendVarint(dst, r.Created.UnixNano())
	dst = append(dst, r.SHA256[:]...)
	dst = binary.AppendUvarint(dst, r.blob)
	dst = binary.AppendUvarint(dst, uint64(r.chunkSize))
	dst = binary.AppendUvarint(dst, uint64(r.chunks))
	dst = appendString(dst, r.Hash)
	dst = appendString(dst, r.Upstream)
	dst = appendString(dst, string(r.State))
	dst = appendString(dst, r.Proof)
	if r.checksummed {
		dst = binary.BigEndian.AppendUint32(dst, recordCRC(key, dst[start:]))
	}
	return dst
}

func recordCRC(key, rec []byte) uint32 {
	return crc32.Update(crc32.Checksum(key, castagnoli), castagnoli, rec)
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

// decodeRecord decodes the record b of the artifact with artifacts-bucket
// key key.
func decodeRecord(key, b []byte) (record, error) {
	var r record
	d, err := artifactDecoder(b)
	if err != nil {
		return r, err
	}
	if b[0] != formatV1 {
		n := len(b) - chunkCRCLen
		if n < 1 || recordCRC(key, b[:n]) != binary.BigEndian.Uint32(b[n:]) {
			return r, fmt.Errorf("%w: artifact record fails its checksum", errCorrupt)
		}
		d.b = b[1:n]
		r.checksummed = true
		r.ownBucket = b[0] == formatV3
	}
	err = d.record(&r)
	return r, err
}

// artifactDecoder is recordDecoder for artifact records, which have three
// formats.
func artifactDecoder(b []byte) (decoder, error) {
	if len(b) == 0 || b[0] < formatV1 || b[0] > formatV3 {
		return decoder{}, fmt.Errorf("%w: unknown artifact record format", errCorrupt)
	}
	return decoder{b: b[1:]}, nil
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
	d, err := artifactDecoder(b)
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
