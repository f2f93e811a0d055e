package cache

import (
	"bytes"
	"crypto/sha256"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"slices"
	"strings"
	"sync/atomic"
	"unsafe"

	"go.etcd.io/bbolt"
	"golang.org/x/mod/semver"

	"github.com/modproxy/modproxy/cache/internal/grant"
)

// keyBufLen sizes stack buffers for artifact keys; longer keys still work
// (append reallocates).
const keyBufLen = 192

// readChunksPerTxn bounds the chunks copied by one read transaction.
const readChunksPerTxn = 4

func recOrNil(r *record) *record {
	if r.blob == 0 {
		return nil
	}
	return r
}

// lookup returns the decoded record of k, wrapping ErrNotFound.
func lookup(tx *bbolt.Tx, key []byte) (record, error) {
	v := tx.Bucket(bucketArtifacts).Get(key)
	if v == nil {
		return record{}, ErrNotFound
	}
	return decodeRecord(key, v)
}

// Stat returns the Meta of a published artifact.
func (s *Store) Stat(k Key) (Meta, error) {
	rec, err := s.stat(k)
	if err != nil {
		return Meta{}, fmt.Errorf("stat %s: %w", k, s.readFailed(k, nil, err))
	}
	return rec.Meta, nil
}

func (s *Store) stat(k Key) (record, error) {
	if err := k.validate(); err != nil {
		return record{}, err
	}
	var buf [keyBufLen]byte
	key := appendArtifactKey(buf[:0], k)
	var rec record
	err := s.view(func(tx *bbolt.Tx) (err error) {
		rec, err = lookup(tx, key)
		return err
	})
	return rec, err
}

// Get returns the whole content of a published artifact. It is meant for
// small artifacts (.info, .mod): it reads the record and the first chunks in
// one read transaction; larger content continues in further short ones, as
// a Reader would, never holding a transaction for long. Use Open to stream
// zips.
func (s *Store) Get(k Key) ([]byte, Meta, error) {
	if err := k.validate(); err != nil {
		return nil, Meta{}, fmt.Errorf("get %s: %w", k, err)
	}
	var buf [keyBufLen]byte
	key := appendArtifactKey(buf[:0], k)
	var (
		rec  record
		data []byte
	)
	err := s.view(func(tx *bbolt.Tx) (err error) {
		if rec, err = lookup(tx, key); err != nil {
			return err
		}
		data = make([]byte, rec.Size)
		_, err = s.readChunks(tx, &rec, data, 0, nil)
		return err
	})
	if err == nil && rec.chunks > readChunksPerTxn {
		r := &Reader{s: s, key: k, rec: rec}
		start := int64(readChunksPerTxn) * int64(rec.chunkSize)
		_, err = r.ReadAt(data[start:], start)
	}
	if err != nil {
		return nil, Meta{}, fmt.Errorf("get %s: %w", k, s.readFailed(k, recOrNil(&rec), err))
	}
	return data, rec.Meta, nil
}

// chunkBucket returns the bucket that holds r's chunks, nil if the blob's
// own bucket is gone (deleted while being read) or, in a store opened
// read-only at an older schema, was never there.
func (r *record) chunkBucket(tx *bbolt.Tx) *bbolt.Bucket {
	if !r.ownBucket {
		return tx.Bucket(bucketChunks)
	}
	blobs := tx.Bucket(bucketBlobs)
	if blobs == nil {
		return nil
	}
	p := blobPrefix(r.blob)
	return blobs.Bucket(p[:])
}

// readChunks copies content starting at off into p from at most
// readChunksPerTxn chunks and returns the bytes copied. It must be called
// inside a transaction; nothing it returns points into bbolt's memory.
//
// Every chunk's length, and for format-2 records its checksum, is checked
// before a byte of it is returned. checked, when non-nil, remembers the last
// chunk checked (index+1) so that small sequential reads check a chunk once,
// not once per read.
//
// Chunks of artifacts of dropMappedSize and more, read whole, are read with
// pread from the file instead of copied out of bbolt's mapping: one copy
// straight from the page cache into p, and no growth of the process's
// resident set. Copying them out of the mapping would leave every page of a
// large zip resident (165 MB peak RSS with 8 clients on a 100 MB zip),
// and dropping the pages after each read made the next reader fault them
// all in again. Smaller artifacts are copied from the mapping, which is
// cheaper than a system call while their pages stay resident.
func (s *Store) readChunks(tx *bbolt.Tx, rec *record, p []byte, off int64, checked *atomic.Uint32) (int, error) {
	if off >= rec.Size || len(p) == 0 {
		return 0, nil
	}
	chunks := rec.chunkBucket(tx)
	if chunks == nil {
		return 0, fmt.Errorf("blob %d missing (deleted while reading?): %w", rec.blob, ErrNotFound)
	}
	idx := uint32(off / int64(rec.chunkSize))
	skip := int(off % int64(rec.chunkSize))
	n := 0
	var kb [12]byte
	for i := 0; i < readChunksPerTxn && n < len(p) && idx < rec.chunks; i++ {
		v := chunks.Get(rec.storedKey(&kb, idx))
		if v == nil {
			return n, fmt.Errorf("chunk %d of blob %d missing (deleted while reading?): %w", idx, rec.blob, ErrNotFound)
		}
		if len(v) != rec.storedLen(idx) {
			return n, fmt.Errorf("%w: chunk %d of blob %d has %d bytes, want %d", errCorrupt, idx, rec.blob, len(v), rec.storedLen(idx))
		}
		clen := rec.chunkLen(idx)
		if rec.Size >= s.largeSize && skip == 0 && len(p)-n >= clen && clen >= preadMinChunk {
			if ok, err := s.preadChunk(tx, rec, v, idx, p[n:n+clen]); ok || err != nil {
				if err != nil {
					return n, err
				}
				// Reading the element and the trailer mapped a few pages
				// (and the kernel's fault-around more).
				dropMapped(v)
				n += clen
				idx++
				continue
			}
		}
		var c []byte
		if checked != nil && checked.Load() == idx+1 {
			c = v[:clen]
		} else {
			var err error
			if c, err = rec.checkChunk(v, idx); err != nil {
				return n, err
			}
			if checked != nil {
				checked.Store(idx + 1)
			}
		}
		m := copy(p[n:], c[skip:])
		n += m
		if rec.Size >= s.largeSize && skip+m == len(c) {
			// The chunk's last byte is out: drop its pages once, not on
			// every partial read (that refaulted the whole chunk per read).
			dropMapped(v)
		}
		skip = 0
		idx++
	}
	return n, nil
}

// preadMinChunk is the chunk length from which whole chunks of large
// artifacts are read with pread: below it the system call costs more than
// the copy it saves.
const preadMinChunk = 64 << 10

// preadChunk reads the content of chunk idx, whose value v lies in bbolt's
// mapping, into dst with pread at the same file offset, and checks it. The
// offset is v's place in the mapping; inside the read transaction the pages
// cannot be freed or reused, so the file holds exactly v there. ok is false
// (and nothing read) when v is not in the mapping or pread fails: the caller
// copies from v instead.
func (s *Store) preadChunk(tx *bbolt.Tx, rec *record, v []byte, idx uint32, dst []byte) (ok bool, err error) {
	if s.file == nil {
		return false, nil
	}
	base := tx.DB().Info().Data
	addr := uintptr(unsafe.Pointer(unsafe.SliceData(v)))
	if addr < base || int64(addr-base)+int64(len(v)) > tx.Size() {
		return false, nil
	}
	if m, rerr := s.file.ReadAt(dst, int64(addr-base)); rerr != nil || m != len(dst) {
		return false, nil
	}
	if rec.checksummed {
		trailer := v[len(dst):]
		if got, want := chunkCRC(rec.blob, idx, dst), binary.BigEndian.Uint32(trailer); got != want {
			return true, fmt.Errorf("%w: chunk %d of blob %d fails its checksum (crc32c %08x, stored %08x)", errCorrupt, idx, rec.blob, got, want)
		}
	}
	return true, nil
}

// dropMappedSize is the artifact size from which chunks are read with pread
// and dropped from the process's mapping after they are read: large zips
// would otherwise inflate RSS by their size; for small ones the extra page
// faults and system calls would cost more than they save.
const dropMappedSize = 32 << 20

// Open returns a *Reader for a published artifact of any kind.
func (s *Store) Open(k Key) (ArtifactReader, error) {
	rec, err := s.stat(k)
	if err != nil {
		return nil, fmt.Errorf("open %s: %w", k, s.readFailed(k, nil, err))
	}
	return &Reader{s: s, key: k, rec: rec}, nil
}

// Put stores the content read from r under k, unless k is already
// published: then it reads nothing from r and returns the stored Meta (the
// first Put to commit wins; concurrent Puts of one key are safe).
//
// m supplies Hash and Upstream, and optionally Created (default: now),
// Size and SHA256: when non-zero, they must match the content or Put fails.
// The returned Meta has the computed Size and SHA256.
//
// Content is staged in transactions of a few MB, so memory does not grow
// with the artifact, and no transaction is open while r is read. One final
// transaction publishes the record. If r fails, or the content does not
// match m, the staged content is deleted and nothing becomes visible; a
// crash leaves staged content that the next Open deletes. Content that fits
// one staging transaction (every .info and .mod) is written and published in
// a single transaction.
//
// Put is for cache/gate, which checks and verifies content before it
// enters the store; grant.Write keeps every other package out.
func (s *Store) Put(k Key, r io.Reader, m Meta, _ grant.Write) (Meta, error) {
	return s.put(k, r, m)
}

func (s *Store) put(k Key, r io.Reader, m Meta) (Meta, error) {
	meta, err := s.putArtifact(k, r, m)
	if err != nil {
		return Meta{}, fmt.Errorf("put %s@%s.%s: %w", k.Path, k.Version, k.Kind, err)
	}
	return meta, nil
}

func (s *Store) putArtifact(k Key, r io.Reader, m Meta) (Meta, error) {
	if err := k.validate(); err != nil {
		return Meta{}, err
	}
	if m.Size < 0 {
		return Meta{}, fmt.Errorf("negative size %d", m.Size)
	}
	if s.readOnly {
		return Meta{}, errReadOnly
	}
	key := appendArtifactKey(nil, k)

	// Immutability: if already published, read nothing.
	var stored Meta
	err := s.view(func(tx *bbolt.Tx) error {
		rec, err := lookup(tx, key)
		stored = rec.Meta
		return err
	})
	if err == nil {
		return stored, nil
	} else if !errors.Is(err, ErrNotFound) {
		return Meta{}, err
	}

	p := putter{s: s, key: key, kind: k.Kind, want: m}
	if !validState(m.State) {
		return Meta{}, fmt.Errorf("invalid state %q", m.State)
	}
	p.rec.Meta = Meta{Hash: m.Hash, Upstream: m.Upstream, Created: m.Created, State: m.State, Proof: m.Proof}
	p.rec.chunkSize = s.chunkSize
	p.rec.checksummed = true
	var buf []byte
	if n := fitBuffer(m.Size, s.chunkSize, s.stageLen); n > 0 {
		// An artifact of known size smaller than a staging buffer (every
		// .info and .mod, most zips) gets a buffer of its size. Taking a
		// staging buffer instead cost a 4 MiB allocation and clearing
		// whenever the garbage collector had emptied the pool, which in a
		// cold download it mostly had.
		buf = make([]byte, n)
	} else {
		bufp := s.stagePool.Get().(*[]byte)
		defer s.stagePool.Put(bufp)
		buf = *bufp
	}
	stored, err = p.run(r, buf)
	if err != nil && p.rec.blob != 0 && p.staged {
		if derr := s.discard(p.rec.blob); derr != nil {
			err = errors.Join(err, fmt.Errorf("discard staged content: %w", derr))
		}
	}
	return stored, err
}

// fitBuffer is the length of a Put buffer that holds content of size
// bytes and one byte more (to see a longer content) in chunks of
// chunkSize, each with its checksum trailer: 0 for an unknown size, or
// one that needs limit bytes or more.
func fitBuffer(size int64, chunkSize, limit int) int {
	if size <= 0 || size >= int64(limit) {
		return 0
	}
	n := int(size) + 1
	if n += (n + chunkSize - 1) / chunkSize * chunkCRCLen; n >= limit {
		return 0
	}
	return n
}

var errReadOnly = errors.New("store is read-only")

// errLost reports that another Put published the key first.
var errLost = errors.New("lost publish race")

// putter is the state of one Put.
type putter struct {
	s      *Store
	key    []byte
	kind   Kind
	want   Meta   // caller's expectations
	rec    record // being built
	staged bool   // rec.blob is in pending and has committed chunks
}

// run reads r batch by batch and returns the published Meta. On error the
// caller discards p's staged blob.
func (p *putter) run(r io.Reader, buf []byte) (Meta, error) {
	h := sha256.New()
	cs := p.s.chunkSize
	// buf holds whole stored chunks: content and its checksum trailer.
	stride := cs + chunkCRCLen
	for {
		// Fill buf with whole chunks; only the last chunk may be short.
		var chunks [][]byte
		eof := false
		// A buffer shorter than a chunk holds one short chunk.
		for off := 0; off+chunkCRCLen < len(buf) && !eof; off += stride {
			n, err := io.ReadFull(r, buf[off:min(off+cs, len(buf)-chunkCRCLen)])
			switch {
			case err == io.EOF || err == io.ErrUnexpectedEOF:
				eof = true
			case err != nil:
				return Meta{}, err
			}
			if n == 0 {
				break
			}
			content := buf[off : off+n]
			h.Write(content)
			chunks = append(chunks, buf[off:off+n+chunkCRCLen])
			p.rec.Size += int64(n)
			if p.want.Size > 0 && p.rec.Size > p.want.Size {
				return Meta{}, fmt.Errorf("content longer than expected %d bytes", p.want.Size)
			}
		}
		if eof {
			if p.want.Size > 0 && p.rec.Size != p.want.Size {
				return Meta{}, fmt.Errorf("content is %d bytes, expected %d", p.rec.Size, p.want.Size)
			}
			h.Sum(p.rec.SHA256[:0])
			if p.want.SHA256 != ([32]byte{}) && p.want.SHA256 != p.rec.SHA256 {
				return Meta{}, fmt.Errorf("content SHA-256 %x, expected %x", p.rec.SHA256, p.want.SHA256)
			}
			return p.publish(chunks)
		}
		if err := p.stage(chunks); err != nil {
			return Meta{}, err
		}
	}
}

// ownBucketSize is the content size from which an artifact's chunks go in
// a bucket of their own (blobs) instead of the shared chunks bucket.
//
// A bbolt leaf holds up to four values whatever their size, and a commit
// rewrites every leaf it changed whole. In the shared chunks bucket each new
// blob lands in the last leaf, next to the up to three last chunks of the
// blobs before it, so storing a zip rewrote as much as 1.5 MiB of other
// zips: 2.1 to 3.2 times the content was written to the file
// (TestPutWriteAmplification, BenchmarkPutZipMix). In a bucket of its own
// a blob shares leaves only with its own chunks: 1.3 to 1.4 times, from
// the chunks a staging transaction rewrites. Below this size a page of its
// own and the parent's entry cost more than the neighbours rewritten.
const ownBucketSize = 16 << 10

// chunkDst returns the bucket the next chunks of p go in, allocating the
// blob ID (and its own bucket, for content of s.ownBucketSize and more or
// content that is staged) if needed.
func (p *putter) chunkDst(tx *bbolt.Tx, staging bool) (*bbolt.Bucket, error) {
	chunks := tx.Bucket(bucketChunks)
	if p.rec.blob == 0 {
		// Blob IDs of both layouts come from one sequence.
		blob, err := chunks.NextSequence()
		if err != nil {
			return nil, err
		}
		p.rec.blob = blob
		// Staged content is larger than a staging buffer (4 MiB).
		p.rec.ownBucket = p.s.ownBucketSize >= 0 && (staging || p.rec.Size >= p.s.ownBucketSize)
		if p.rec.ownBucket {
			prefix := blobPrefix(blob)
			return tx.Bucket(bucketBlobs).CreateBucket(prefix[:])
		}
	}
	if b := p.rec.chunkBucket(tx); b != nil {
		return b, nil
	}
	return nil, fmt.Errorf("%w: bucket of staged blob %d missing", errCorrupt, p.rec.blob)
}

// writeChunks allocates the blob ID if needed and writes chunks after those
// already written. bbolt keeps the chunk slices until commit, so buf must not
// be reused before the transaction ends.
func (p *putter) writeChunks(tx *bbolt.Tx, chunks [][]byte, staging bool) error {
	b, err := p.chunkDst(tx, staging)
	if err != nil {
		return err
	}
	var kb [12]byte
	for _, c := range chunks {
		// The checksum covers the chunk's key, known only now.
		n := len(c) - chunkCRCLen
		binary.BigEndian.PutUint32(c[n:], chunkCRC(p.rec.blob, p.rec.chunks, c[:n]))
		if err := b.Put(p.rec.storedKey(&kb, p.rec.chunks), c); err != nil {
			return err
		}
		p.rec.chunks++
	}
	return nil
}

// stage commits chunks of an unpublished blob, registering it in pending
// in the same transaction as its first chunks.
func (p *putter) stage(chunks [][]byte) error {
	blob, n := p.rec.blob, p.rec.chunks
	err := p.s.update(func(tx *bbolt.Tx) error {
		if err := p.writeChunks(tx, chunks, true); err != nil {
			return err
		}
		if !p.staged {
			prefix := blobPrefix(p.rec.blob)
			return tx.Bucket(bucketPending).Put(prefix[:], appendTime(nil, p.s.now()))
		}
		return nil
	})
	if err != nil {
		// Rolled back: forget what this transaction assigned.
		p.rec.blob, p.rec.chunks = blob, n
		return fmt.Errorf("stage content: %w", err)
	}
	p.staged = true
	p.s.unmapAfterAppend()
	return nil
}

// unmapAfterAppend drops the store's mapping from the process's resident
// set after a staging transaction. Appending chunks rewrites bbolt's last
// leaf, which copies the up to three chunks already in it out of the
// mapping: a cold download left that share of every large zip it stored
// mapped, 130 MB of RSS for a project of 190 MB of zips. The pages stay in
// the page cache; readers fault back in what they use.
//
// The whole mapping, not the pages of the rewritten leaf: a call costs
// about 1 µs whatever the store's size (measured with mappings of 1, 20
// and 100 GiB: the kernel skips page tables nothing populated), and a
// targeted drop was not reliable: with large page-cache folios (ext4 on
// Linux 6.x), touching one key maps its whole folio, beyond any page range
// computed from the values.
func (s *Store) unmapAfterAppend() {
	_ = s.view(func(tx *bbolt.Tx) error {
		dropRange(tx.DB().Info().Data, uintptr(tx.Size()))
		return nil
	})
}

// maxBatchedPublish is the most content a publishing transaction may
// write and still share a transaction with other writes.
const maxBatchedPublish = 64 << 10

func chunksSize(chunks [][]byte) int {
	n := 0
	for _, c := range chunks {
		n += len(c)
	}
	return n
}

// publish writes the last chunks and the record in one transaction. If
// the key was published meanwhile, it writes nothing and returns the stored
// Meta; its own staged blob is then discarded.
func (p *putter) publish(chunks [][]byte) (Meta, error) {
	var stored Meta
	lost := false
	// A small publish shares a transaction with other small writes
	// (batch), so it may run again after a rollback: it starts from the
	// blob's state before the transaction. A large one (the last chunks of
	// a zip) runs alone: a shared transaction of several would hold all
	// their pages in memory at once.
	blob, n := p.rec.blob, p.rec.chunks
	run := p.s.batch
	if chunksSize(chunks) > maxBatchedPublish {
		run = p.s.update
	}
	err := run(func(tx *bbolt.Tx) error {
		stored, lost = Meta{}, false
		p.rec.blob, p.rec.chunks = blob, n
		if rec, err := lookup(tx, p.key); err == nil {
			stored, lost = rec.Meta, true
			return nil
		} else if !errors.Is(err, ErrNotFound) {
			return err
		}
		if err := p.writeChunks(tx, chunks, false); err != nil {
			return err
		}
		if p.rec.Created.IsZero() {
			p.rec.Created = p.s.now()
		}
		p.rec.Created = p.rec.Created.UTC().Round(0)
		var buf [256]byte
		if err := tx.Bucket(bucketArtifacts).Put(p.key, appendRecord(buf[:0], p.key, &p.rec)); err != nil {
			return err
		}
		if p.staged {
			prefix := blobPrefix(p.rec.blob)
			if err := tx.Bucket(bucketPending).Delete(prefix[:]); err != nil {
				return err
			}
		}
		return count(tx, p.kind, 1, p.rec.Size)
	})
	if err != nil {
		p.rec.blob, p.rec.chunks = blob, n
		return Meta{}, fmt.Errorf("publish: %w", err)
	}
	if lost {
		if p.staged {
			if err := p.s.discard(p.rec.blob); err != nil {
				return Meta{}, fmt.Errorf("%w; discard staged content: %w", errLost, err)
			}
		}
		return stored, nil
	}
	// Same conversion as the decoder, so Put and Stat agree exactly.
	return p.rec.Meta, nil
}

// Delete removes k's published artifact and any quarantined copies, with
// their content. It wraps ErrNotFound if there was none. Readers already
// open on the artifact fail once they reach a deleted chunk.
func (s *Store) Delete(k Key) error {
	if err := s.remove(k); err != nil {
		return fmt.Errorf("delete %s: %w", k, err)
	}
	return nil
}

func (s *Store) remove(k Key) error {
	if err := k.validate(); err != nil {
		return err
	}
	key := appendArtifactKey(nil, k)
	var blobs []uint64
	err := s.update(func(tx *bbolt.Tx) error {
		pending := tx.Bucket(bucketPending)
		free := func(blob uint64) error {
			blobs = append(blobs, blob)
			prefix := blobPrefix(blob)
			return pending.Put(prefix[:], appendTime(nil, s.now()))
		}
		arts := tx.Bucket(bucketArtifacts)
		if v := arts.Get(key); v != nil {
			rec, err := decodeRecord(key, v)
			if err != nil {
				return err
			}
			if err := arts.Delete(key); err != nil {
				return err
			}
			if err := count(tx, k.Kind, -1, rec.Size); err != nil {
				return err
			}
			if err := free(rec.blob); err != nil {
				return err
			}
		}
		// Quarantined copies: key 0x00 blobID.
		qprefix := append(slices.Clip(key), 0)
		c := tx.Bucket(bucketQuarantine).Cursor()
		for qk, v := c.Seek(qprefix); qk != nil && bytes.HasPrefix(qk, qprefix) && len(qk) == len(qprefix)+8; qk, v = c.Seek(qprefix) {
			_, _, recb, err := splitQuarantine(v)
			if err != nil {
				return err
			}
			rec, err := decodeRecord(key, recb)
			if err != nil {
				return err
			}
			if err := c.Delete(); err != nil {
				return err
			}
			if err := countQuarantine(tx, -1, rec.Size); err != nil {
				return err
			}
			if err := free(rec.blob); err != nil {
				return err
			}
		}
		if len(blobs) == 0 {
			return ErrNotFound
		}
		return nil
	})
	if err != nil {
		return err
	}
	// The records are gone and the blobs in pending: delete the content in
	// bounded transactions (a crash here leaves it to the next Open).
	for _, blob := range blobs {
		if err := s.discard(blob); err != nil {
			return err
		}
	}
	return nil
}

// Quarantine moves a published artifact aside: Stat, Get, Open, Walk and
// Versions no longer see it, and a new Put of k may store other content.
// The record and content are kept for inspection (WalkQuarantine) until
// Delete. Readers already open keep reading the quarantined content.
func (s *Store) Quarantine(k Key, reason string) error {
	if err := k.validate(); err != nil {
		return fmt.Errorf("quarantine %s: %w", k, err)
	}
	key := appendArtifactKey(nil, k)
	err := s.update(func(tx *bbolt.Tx) error {
		v := tx.Bucket(bucketArtifacts).Get(key)
		if v == nil {
			return ErrNotFound
		}
		return s.quarantineTx(tx, k, key, v, reason)
	})
	if err != nil {
		return fmt.Errorf("quarantine %s: %w", k, err)
	}
	return nil
}

// quarantineTx moves the published record v of k aside. A record too
// damaged to decode is moved too (counted with size 0; its blob, if any,
// is then left to the next garbage collection).
func (s *Store) quarantineTx(tx *bbolt.Tx, k Key, key, v []byte, reason string) error {
	rec, err := decodeRecord(key, v)
	if err != nil {
		// Keep a decodable stand-in naming the blob (when that much
		// decodes), so that WalkQuarantine, Delete and garbage collection
		// keep working.
		rec = record{chunkSize: defaultChunkSize, Meta: Meta{State: StateUnverified}}
		if blob, berr := recordBlob(v); berr == nil {
			rec.blob = blob
		}
		v = appendRecord(nil, key, &rec)
		reason += " (record undecodable)"
	}
	qv := appendQuarantine(nil, s.now(), reason, v)
	if err := tx.Bucket(bucketQuarantine).Put(quarantineKey(key, rec.blob), qv); err != nil {
		return err
	}
	if err := tx.Bucket(bucketArtifacts).Delete(key); err != nil {
		return err
	}
	if err := count(tx, k.Kind, -1, rec.Size); err != nil {
		return err
	}
	return countQuarantine(tx, 1, rec.Size)
}

// Walk calls fn for every published artifact, ordered by path, version and
// kind (byte order). It reads records in batches of short transactions and
// calls fn outside them, so fn may use the store (even write to it);
// artifacts changed during the walk may or may not be seen.
func (s *Store) Walk(fn func(Key, Meta) error) error {
	type item struct {
		k Key
		m Meta
	}
	err := walkBatched(s, bucketArtifacts, nil, nil,
		func(k, v []byte) (item, error) {
			key, err := parseArtifactKey(k)
			if err != nil {
				return item{}, err
			}
			rec, err := decodeRecord(k, v)
			if err != nil {
				return item{}, fmt.Errorf("artifact %s: %w", key, err)
			}
			return item{key, rec.Meta}, nil
		},
		func(it item) error { return fn(it.k, it.m) })
	if err != nil {
		return fmt.Errorf("walk store: %w", err)
	}
	return nil
}

// WalkQuarantine calls fn for every quarantined artifact with the reason it
// was quarantined, like Walk. A key quarantined more than once appears once
// per quarantined copy.
func (s *Store) WalkQuarantine(fn func(Key, Meta, string) error) error {
	type item struct {
		k      Key
		m      Meta
		reason string
	}
	err := walkBatched(s, bucketQuarantine, nil, nil,
		func(k, v []byte) (item, error) {
			key, err := parseQuarantineKey(k)
			if err != nil {
				return item{}, err
			}
			reason, _, recb, err := splitQuarantine(v)
			if err != nil {
				return item{}, fmt.Errorf("quarantined %s: %w", key, err)
			}
			rec, err := decodeRecord(k[:len(k)-9], recb)
			if err != nil {
				return item{}, fmt.Errorf("quarantined %s: %w", key, err)
			}
			return item{key, rec.Meta, reason}, nil
		},
		func(it item) error { return fn(it.k, it.m, it.reason) })
	if err != nil {
		return fmt.Errorf("walk quarantine: %w", err)
	}
	return nil
}

// Versions returns the versions of path that have a published .info,
// sorted by semantic version (as the list endpoint would be).
func (s *Store) Versions(path string) ([]string, error) {
	if path == "" || strings.IndexByte(path, 0) >= 0 {
		return nil, fmt.Errorf("versions of %q: invalid module path", path)
	}
	prefix := append([]byte(path), 0)
	var versions []string
	err := s.view(func(tx *bbolt.Tx) error {
		c := tx.Bucket(bucketArtifacts).Cursor()
		for k, _ := c.Seek(prefix); k != nil && bytes.HasPrefix(k, prefix); k, _ = c.Next() {
			rest := k[len(prefix):]
			if i := indexByte(rest, 0); i >= 0 && string(rest[i+1:]) == string(KindInfo) {
				versions = append(versions, string(rest[:i]))
			}
		}
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("versions of %s: %w", path, err)
	}
	semver.Sort(versions)
	return versions, nil
}

// walkBatchSize bounds the records decoded per read transaction of a walk.
const walkBatchSize = 256

// walkBatched decodes the entries of a bucket (nested under parent when
// parent is non-nil) whose keys have prefix, walkBatchSize per read
// transaction, and calls fn for each outside any transaction. decode must
// copy what it keeps: k and v point into bbolt's mmap.
func walkBatched[T any](s *Store, bucket, parent, prefix []byte, decode func(k, v []byte) (T, error), fn func(T) error) error {
	var (
		after []byte // last key of the previous batch
		items = make([]T, 0, walkBatchSize)
	)
	for {
		items = items[:0]
		more := false
		err := s.view(func(tx *bbolt.Tx) error {
			var b *bbolt.Bucket
			if parent != nil {
				if p := tx.Bucket(parent); p != nil {
					b = p.Bucket(bucket)
				}
			} else {
				b = tx.Bucket(bucket)
			}
			if b == nil {
				return nil
			}
			c := b.Cursor()
			var k, v []byte
			if after == nil {
				k, v = c.Seek(prefix)
			} else if k, v = c.Seek(after); bytes.Equal(k, after) {
				k, v = c.Next()
			}
			for ; k != nil && bytes.HasPrefix(k, prefix); k, v = c.Next() {
				if len(items) == walkBatchSize {
					more = true
					break
				}
				if v == nil { // nested bucket
					continue
				}
				it, err := decode(k, v)
				if err != nil {
					return err
				}
				items = append(items, it)
				after = append(after[:0], k...)
			}
			return nil
		})
		if err != nil {
			return err
		}
		for _, it := range items {
			if err := fn(it); err != nil {
				return err
			}
		}
		if !more {
			return nil
		}
	}
}
