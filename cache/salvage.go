package cache

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"os"
	"sort"

	"go.etcd.io/bbolt"

	"github.com/modproxy/modproxy/cache/internal/grant"
)

// SalvageReport says what Salvage copied and what it could not.
type SalvageReport struct {
	Artifacts int              `json:"artifacts"` // artifacts published in the destination
	Bytes     int64            `json:"bytes"`     // their content bytes
	Existing  int              `json:"existing"`  // artifacts the destination already held
	Meta      int              `json:"meta"`      // mutable entries (list, @latest, checksum-database latest) copied
	KV        int              `json:"kv"`        // key/value pairs (checksum-database tiles and lookups) copied
	Lost      []SalvageProblem `json:"lost,omitempty"`
}

// SalvageProblem is one thing Salvage could not copy.
type SalvageProblem struct {
	What   string `json:"what"` // an artifact (path@version.kind) or a part of the file
	Reason string `json:"reason"`
}

// Complete reports whether everything found was copied.
func (r *SalvageReport) Complete() bool { return len(r.Lost) == 0 }

// Salvage copies everything readable and intact from the (possibly
// damaged) store file at src into dst: every artifact whose chunks pass
// their length and checksum checks and whose content matches the SHA-256
// of its record, published in dst with its Meta; and the mutable entries
// and key/value data that can be read (they carry no checksum of their own:
// the checksum-database client authenticates them when it uses them).
// Quarantined artifacts are not copied.
//
// It never opens src with bbolt: a damaged page can send bbolt into a
// panic, a fault or an endless descent. It reads the file's pages itself,
// bounds-checked, skipping a damaged subtree and going on with its siblings.
// src is only read; it may not be open for writing by another process.
//
// Like CopyTo it writes artifacts, so it takes the write grant: cache/gate
// offers it to other packages. What it copies is content the store admitted
// once, checked chunk by chunk and as a whole; records of schema 1 carry no
// checksum over their key, so `modproxy verify` of the new store (content
// checks name the module and version) is the check for those.
func Salvage(src string, dst *Store, w grant.Write) (*SalvageReport, error) {
	if dst.readOnly {
		return nil, fmt.Errorf("salvage into %s: %w", dst.path, errReadOnly)
	}
	f, err := os.Open(src)
	if err != nil {
		return nil, fmt.Errorf("salvage %s: %w", src, err)
	}
	defer f.Close()
	if err := flockShared(f, defaultLockTimeout); err != nil {
		return nil, fmt.Errorf("salvage %s: %w", src, err)
	}
	fi, err := f.Stat()
	if err != nil {
		return nil, fmt.Errorf("salvage %s: %w", src, err)
	}
	pf, err := newPageFile(f, fi.Size(), true)
	if err != nil {
		return nil, fmt.Errorf("salvage %s: %w", src, err)
	}
	if pf == nil {
		return nil, fmt.Errorf("salvage %s: %w: no valid bbolt meta page, nothing can be read", src, ErrCorrupt)
	}
	sv := &salvager{pf: pf, dst: dst, w: w, rep: &SalvageReport{}, inline: map[string][]byte{}}
	buckets := map[string][]byte{}
	scanTop := func() {
		sv.scanTree(pf.meta.root, nil, "top-level buckets", func(kv leafKV) {
			if kv.bucket {
				buckets[string(kv.key)] = kv.val
			}
		})
	}
	// Only the newest transaction's tree: the previous one could bring back
	// what the last transaction quarantined.
	scanTop()
	for _, name := range [][]byte{bucketArtifacts, bucketChunks} {
		if buckets[string(name)] == nil {
			sv.lose(string(name)+" bucket", "not found (its page is damaged)")
		}
	}
	// Quarantined blobs are never copied. A damaged leaf (its element count
	// raised) can show stale elements that bbolt left in the page: such a
	// ghost of a quarantined record still checks out, and so does its
	// content, which quarantine keeps.
	quarantined := map[uint64]bool{}
	if q := buckets[string(bucketQuarantine)]; q != nil {
		sv.scanBucket(q, "quarantine", func(kv leafKV) {
			v, err := sv.value(kv)
			if err != nil {
				return
			}
			if _, _, rec, err := splitQuarantine(v); err == nil {
				if blob, err := recordBlob(rec); err == nil {
					quarantined[blob] = true
				}
			}
		})
	} else {
		sv.lose("quarantine bucket", "not found (its page is damaged): quarantined artifacts cannot be told apart")
	}
	sv.artifacts(buckets[string(bucketArtifacts)], buckets[string(bucketChunks)], buckets[string(bucketBlobs)], quarantined)
	sv.pairs(buckets[string(bucketEntries)], "meta", func(tx *bbolt.Tx) (*bbolt.Bucket, error) { return tx.Bucket(bucketEntries), nil },
		func(v []byte) bool { _, err := decodeEntry(v); return err == nil }, &sv.rep.Meta)
	if kv := buckets[string(bucketKV)]; kv != nil {
		var names []leafKV
		sv.scanBucket(kv, "kv", func(e leafKV) {
			if e.bucket {
				names = append(names, e)
			}
		})
		for _, n := range names {
			name := bytes.Clone(n.key)
			sv.pairs(n.val, "kv/"+string(name), func(tx *bbolt.Tx) (*bbolt.Bucket, error) {
				return tx.Bucket(bucketKV).CreateBucketIfNotExists(name)
			}, nil, &sv.rep.KV)
		}
	}
	return sv.rep, nil
}

type salvager struct {
	w      grant.Write
	pf     *pageFile
	dst    *Store
	rep    *SalvageReport
	inline map[string][]byte // chunks of an inline chunks bucket, by key
}

func (sv *salvager) lose(what, reason string) {
	sv.rep.Lost = append(sv.rep.Lost, SalvageProblem{What: what, Reason: reason})
}

// leafKV is one readable leaf element. Bucket entries and values of
// inline buckets come with val; other values are read on demand at off.
type leafKV struct {
	key    []byte
	bucket bool
	val    []byte // bucket value, or the value itself when inline
	off    int64  // file offset of the value when val is nil
	n      int64
}

func (sv *salvager) value(kv leafKV) ([]byte, error) {
	if kv.val != nil || kv.n == 0 {
		return kv.val, nil
	}
	b := make([]byte, kv.n)
	if _, err := sv.pf.r.ReadAt(b, kv.off); err != nil {
		return nil, err
	}
	return b, nil
}

// scanTree calls fn for every readable leaf element under page id; a
// damaged page is reported and its subtree skipped.
func (sv *salvager) scanTree(id uint64, stack []uint64, what string, fn func(leafKV)) {
	if len(stack) > maxCheckDepth {
		sv.lose(what, fmt.Sprintf("page %d: tree too deep", id))
		return
	}
	p, err := sv.pf.read(id)
	if err == nil && p.flags != branchPageFlag && p.flags != leafPageFlag {
		err = fmt.Errorf("page %d: unexpected page type (flags %#x)", id, p.flags)
	}
	var els []element
	if err == nil {
		els, err = elements(p.buf, p.span, p.flags, p.count, func(n int64) ([]byte, error) {
			if err := sv.pf.extent(p, n); err != nil {
				return nil, err
			}
			return p.buf, nil
		})
	}
	if err != nil {
		sv.lose(what, fmt.Sprintf("page %d unreadable, its entries are lost: %v", id, err))
		return
	}
	base := int64(id) * sv.pf.psz
	for _, e := range els {
		if p.flags == branchPageFlag {
			sv.scanTree(e.child, append(stack, id), what, fn)
			continue
		}
		kv := leafKV{key: bytes.Clone(e.key), bucket: e.bucket, off: base + e.valOff, n: int64(e.vsize)}
		if e.bucket {
			kv.val = bytes.Clone(e.value)
		}
		fn(kv)
	}
}

// scanBucket is scanTree for a bucket value: a root page or an inline page.
func (sv *salvager) scanBucket(v []byte, what string, fn func(leafKV)) {
	if len(v) < bucketHeaderLen {
		sv.lose(what, "bucket header damaged")
		return
	}
	if root := binary.LittleEndian.Uint64(v); root != 0 {
		sv.scanTree(root, nil, what, fn)
		return
	}
	inline := v[bucketHeaderLen:]
	if len(inline) < pageHeaderLen {
		sv.lose(what, "inline bucket damaged")
		return
	}
	flags, count := binary.LittleEndian.Uint16(inline[8:]), int(binary.LittleEndian.Uint16(inline[10:]))
	els, err := elements(inline, int64(len(inline)), flags, count, func(n int64) ([]byte, error) {
		if n > int64(len(inline)) {
			return nil, errors.New("element past the inline page")
		}
		return inline, nil
	})
	if err != nil || flags != leafPageFlag {
		sv.lose(what, fmt.Sprintf("inline bucket damaged: %v", err))
		return
	}
	for _, e := range els {
		kv := leafKV{key: bytes.Clone(e.key), bucket: e.bucket}
		end := e.valOff + int64(e.vsize)
		kv.val = bytes.Clone(inline[e.valOff:end])
		fn(kv)
	}
}

type chunkLoc struct{ off, n int64 }

// artifacts copies the artifacts of the artifacts bucket arts whose chunks
// are readable in the chunks bucket or their own bucket in blobs (nil
// before schema 3).
func (sv *salvager) artifacts(arts, chunks, blobs []byte, quarantined map[uint64]bool) {
	if arts == nil {
		return
	}
	type item struct {
		k   Key
		rec record
	}
	var items []item
	wanted := map[uint64][]chunkLoc{}
	sv.scanBucket(arts, "artifacts", func(kv leafKV) {
		k, err := parseArtifactKey(kv.key)
		if err != nil || kv.bucket {
			sv.lose(fmt.Sprintf("artifact key %q", kv.key), "damaged key")
			return
		}
		v, err := sv.value(kv)
		if err != nil {
			sv.lose(k.String(), "record unreadable: "+err.Error())
			return
		}
		rec, err := decodeRecord(kv.key, v)
		if err != nil {
			sv.lose(k.String(), "record damaged: "+err.Error())
			return
		}
		if quarantined[rec.blob] {
			return
		}
		items = append(items, item{k, rec})
		wanted[rec.blob] = make([]chunkLoc, rec.chunks)
	})
	// found records where chunk idx of blob is.
	found := func(blob uint64, idx uint32, kv leafKV) {
		locs, ok := wanted[blob]
		if !ok || int(idx) >= len(locs) {
			return
		}
		if kv.val != nil { // an inline bucket (a tiny store or blob)
			locs[idx] = chunkLoc{off: -1, n: int64(len(kv.val))}
			key := chunkKey(blob, idx)
			sv.inline[string(key[:])] = kv.val
			return
		}
		locs[idx] = chunkLoc{off: kv.off, n: kv.n}
	}
	if chunks != nil {
		sv.scanBucket(chunks, "chunks", func(kv leafKV) {
			if len(kv.key) == 12 && !kv.bucket {
				found(binary.BigEndian.Uint64(kv.key), binary.BigEndian.Uint32(kv.key[8:]), kv)
			}
		})
	}
	if blobs != nil {
		var own []leafKV
		sv.scanBucket(blobs, "blobs", func(kv leafKV) {
			if len(kv.key) == 8 && kv.bucket {
				if _, ok := wanted[binary.BigEndian.Uint64(kv.key)]; ok {
					own = append(own, kv)
				}
			}
		})
		for _, b := range own {
			blob := binary.BigEndian.Uint64(b.key)
			sv.scanBucket(b.val, fmt.Sprintf("blob %d", blob), func(kv leafKV) {
				if len(kv.key) == 4 && !kv.bucket {
					found(blob, binary.BigEndian.Uint32(kv.key), kv)
				}
			})
		}
	}
	sort.Slice(items, func(i, j int) bool {
		return bytes.Compare(appendArtifactKey(nil, items[i].k), appendArtifactKey(nil, items[j].k)) < 0
	})
	for _, it := range items {
		if _, err := sv.dst.Stat(it.k); err == nil {
			sv.rep.Existing++
			continue
		}
		r := &salvageReader{sv: sv, rec: &it.rec, locs: wanted[it.rec.blob]}
		m, err := sv.dst.Put(it.k, r, it.rec.Meta, sv.w)
		if err != nil {
			sv.lose(it.k.String(), err.Error())
			continue
		}
		sv.rep.Artifacts++
		sv.rep.Bytes += m.Size
	}
}

// salvageReader reads an artifact's chunks from the file, checking each.
// Put checks the size and SHA-256 of the whole against the record.
type salvageReader struct {
	sv   *salvager
	rec  *record
	locs []chunkLoc
	idx  uint32
	buf  []byte
}

func (r *salvageReader) Read(p []byte) (int, error) {
	for len(r.buf) == 0 {
		if r.idx >= r.rec.chunks {
			return 0, io.EOF
		}
		loc := r.locs[r.idx]
		if loc.n == 0 {
			return 0, fmt.Errorf("%w: chunk %d is missing (its page is damaged)", ErrCorrupt, r.idx)
		}
		var v []byte
		if loc.off < 0 {
			key := chunkKey(r.rec.blob, r.idx)
			v = r.sv.inline[string(key[:])]
		} else {
			v = make([]byte, loc.n)
			if _, err := r.sv.pf.r.ReadAt(v, loc.off); err != nil {
				return 0, fmt.Errorf("read chunk %d: %w", r.idx, err)
			}
		}
		c, err := r.rec.checkChunk(v, r.idx)
		if err != nil {
			return 0, err
		}
		r.buf = c
		r.idx++
	}
	n := copy(p, r.buf)
	r.buf = r.buf[n:]
	return n, nil
}

// pairs copies the readable pairs of a bucket into the destination bucket
// dstBucket returns, keeping pairs the destination already has.
func (sv *salvager) pairs(bucket []byte, what string, dstBucket func(*bbolt.Tx) (*bbolt.Bucket, error), valid func([]byte) bool, n *int) {
	if bucket == nil {
		return
	}
	var batch []rawPair
	flush := func() {
		if len(batch) == 0 {
			return
		}
		err := sv.dst.update(func(tx *bbolt.Tx) error {
			b, err := dstBucket(tx)
			if err != nil {
				return err
			}
			for _, p := range batch {
				if b.Get(p.k) != nil {
					continue
				}
				if err := b.Put(p.k, p.v); err != nil {
					return err
				}
				*n++
			}
			return nil
		})
		if err != nil {
			sv.lose(what, "write: "+err.Error())
		}
		batch = batch[:0]
	}
	sv.scanBucket(bucket, what, func(kv leafKV) {
		if kv.bucket {
			return
		}
		v, err := sv.value(kv)
		if err != nil || (valid != nil && !valid(v)) {
			sv.lose(fmt.Sprintf("%s %q", what, kv.key), "value damaged")
			return
		}
		batch = append(batch, rawPair{kv.key, v})
		if len(batch) == walkBatchSize {
			flush()
		}
	})
	flush()
}
