package cache

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"hash/fnv"
	"io"
	"os"
)

// checkFile checks the page structure of a bbolt file before bbolt opens
// it. When the file has no freelist written, bbolt rebuilds it at a
// writable Open by walking every page, and reports what it finds wrong by
// panicking in a goroutine of its own, which no caller can recover: one
// damaged page crashed the whole process. With a freelist written, bbolt
// reads that page only, and so does checkFile. checkFile walks the same tree with bounds-checked reads of the
// file (no mmap) and at least bbolt's strictness (page numbers in range,
// page types, every page referenced once, key order, element bounds), so a
// file it accepts does not make that walk fail; a file it refuses gets an
// error wrapping ErrCorrupt that names the page.
//
// Only page headers, element headers, keys and bucket values are read, not
// the overflow pages of large values, so the cost is a small part of the
// file. A file with no valid meta page is left to bbolt, which refuses it
// with an error of its own.
func checkFile(f *os.File) error {
	fi, err := f.Stat()
	if err != nil {
		return err
	}
	pf, err := newPageFile(f, fi.Size(), false)
	if err != nil || pf == nil {
		return err
	}
	if pf.meta.freelist != noFreelist {
		// bbolt reads the freelist from its page and walks nothing at
		// Open: a damaged tree page is met later, by a transaction,
		// which recovers it. Keep Open's cost independent of the file.
		return pf.checkFreelistPage()
	}
	if err := pf.checkBucketRoot(pf.meta.root, 0); err != nil {
		return fmt.Errorf("%w: %v; `modproxy verify --salvage NEW.db` copies what is readable", ErrCorrupt, err)
	}
	return nil
}

// bbolt's on-disk format (go.etcd.io/bbolt/internal/common), little-endian
// on the platforms modproxy runs on.
const (
	boltMagic        = 0xED0CDAED
	boltVersion      = 2
	pageHeaderLen    = 16
	branchElemLen    = 16
	leafElemLen      = 16
	bucketHeaderLen  = 16
	branchPageFlag   = 0x01
	leafPageFlag     = 0x02
	bucketLeafFlag   = 0x01
	maxCheckDepth    = 64 // a bbolt tree of this store is a handful of levels deep
	freelistPageFlag = 0x10
	noFreelist       = ^uint64(0)
	metaChecksumSpan = 56 // bytes of the meta struct covered by its checksum
)

type boltMeta struct {
	pageSize uint32
	root     uint64
	freelist uint64 // noFreelist: not written (bbolt rebuilds it by walking every page)
	pgid     uint64 // high-water mark: pages [0, pgid) are allocated
	txid     uint64
}

// pageFile reads a bbolt file page by page.
type pageFile struct {
	r    io.ReaderAt
	size int64
	psz  int64
	meta boltMeta
	seen []uint64 // bitset of pages already reached
}

func parseMeta(b []byte) (boltMeta, bool) {
	if len(b) < pageHeaderLen+metaChecksumSpan+8 {
		return boltMeta{}, false
	}
	m := b[pageHeaderLen:]
	le := binary.LittleEndian
	if le.Uint32(m[0:]) != boltMagic || le.Uint32(m[4:]) != boltVersion {
		return boltMeta{}, false
	}
	h := fnv.New64a()
	h.Write(m[:metaChecksumSpan])
	if h.Sum64() != le.Uint64(m[metaChecksumSpan:]) {
		return boltMeta{}, false
	}
	return boltMeta{pageSize: le.Uint32(m[8:]), root: le.Uint64(m[16:]), freelist: le.Uint64(m[32:]), pgid: le.Uint64(m[40:]), txid: le.Uint64(m[48:])}, true
}

// newPageFile picks the meta page bbolt would use (the valid one with the
// highest transaction ID). It returns nil, nil when no meta page is valid.
// lenient (salvage) accepts a file shorter than its meta page says: the
// pages that are there can still be read.
func newPageFile(r io.ReaderAt, size int64, lenient bool) (*pageFile, error) {
	var metas []boltMeta
	buf := make([]byte, 4096)
	readMeta := func(off int64) {
		if n, _ := r.ReadAt(buf, off); n >= pageHeaderLen+metaChecksumSpan+8 {
			if m, ok := parseMeta(buf[:n]); ok {
				metas = append(metas, m)
			}
		}
	}
	readMeta(0)
	if len(metas) == 1 {
		readMeta(int64(metas[0].pageSize))
	} else {
		// As bbolt does: look for the second meta page at every plausible
		// page size.
		for i := 0; i <= 14; i++ {
			if pos := int64(1024) << i; pos < size-1024 {
				readMeta(pos)
				if len(metas) > 0 {
					break
				}
			}
		}
	}
	if len(metas) == 0 {
		return nil, nil
	}
	m := metas[0]
	if len(metas) == 2 && metas[1].txid > m.txid && metas[1].pageSize == m.pageSize {
		m = metas[1]
	}
	if m.pageSize < 512 || m.pageSize > 1<<20 || m.pageSize&(m.pageSize-1) != 0 {
		return nil, fmt.Errorf("%w: meta page has page size %d", ErrCorrupt, m.pageSize)
	}
	psz := int64(m.pageSize)
	if filePages := uint64(size / psz); m.pgid > filePages+1 || m.pgid < 4 {
		if !lenient || m.pgid < 4 {
			return nil, fmt.Errorf("%w: meta page claims %d pages, the file has %d", ErrCorrupt, m.pgid, filePages)
		}
		m.pgid = filePages
	}
	return &pageFile{r: r, size: size, psz: psz, meta: m, seen: make([]uint64, m.pgid/64+1)}, nil
}

// pageView is one page of the tree: its header and the bytes read so far.
type pageView struct {
	id       uint64
	flags    uint16
	count    int
	overflow uint64
	buf      []byte // the first len(buf) bytes of the page's span
	span     int64  // (overflow+1) * page size
}

// read returns the page id after checking its place in the file and that
// no other reference reached it before.
func (pf *pageFile) read(id uint64) (*pageView, error) {
	if id < 2 || id >= pf.meta.pgid {
		return nil, fmt.Errorf("page %d out of range [2, %d)", id, pf.meta.pgid)
	}
	off := int64(id) * pf.psz
	if off+pf.psz > pf.size {
		return nil, fmt.Errorf("page %d lies beyond the end of the file", id)
	}
	buf := make([]byte, pf.psz)
	if _, err := pf.r.ReadAt(buf, off); err != nil {
		return nil, fmt.Errorf("read page %d: %v", id, err)
	}
	le := binary.LittleEndian
	p := &pageView{
		id: le.Uint64(buf[0:]), flags: le.Uint16(buf[8:]),
		count: int(le.Uint16(buf[10:])), overflow: uint64(le.Uint32(buf[12:])), buf: buf,
	}
	if p.id != id {
		return nil, fmt.Errorf("page %d has the header of page %d", id, p.id)
	}
	if id+p.overflow >= pf.meta.pgid || off+int64(p.overflow+1)*pf.psz > pf.size {
		return nil, fmt.Errorf("page %d: %d overflow pages run past the end of the file", id, p.overflow)
	}
	for i := id; i <= id+p.overflow; i++ {
		if pf.seen[i/64]&(1<<(i%64)) != 0 {
			return nil, fmt.Errorf("page %d is referenced twice", i)
		}
		pf.seen[i/64] |= 1 << (i % 64)
	}
	p.span = int64(p.overflow+1) * pf.psz
	return p, nil
}

// extent makes sure p.buf holds the page's first n bytes.
func (pf *pageFile) extent(p *pageView, n int64) error {
	if n > p.span {
		return fmt.Errorf("element data at byte %d runs past the page's %d bytes", n, p.span)
	}
	if n <= int64(len(p.buf)) {
		return nil
	}
	more := make([]byte, n)
	copy(more, p.buf)
	if _, err := pf.r.ReadAt(more[len(p.buf):], int64(p.id)*pf.psz+int64(len(p.buf))); err != nil {
		return fmt.Errorf("read page %d: %v", p.id, err)
	}
	p.buf = more
	return nil
}

// element is one decoded branch or leaf element.
type element struct {
	key, value []byte // value only for bucket entries
	child      uint64 // branch elements
	bucket     bool
	vsize      uint32
	valOff     int64 // offset of the value in the page's span
}

// elements decodes the elements of a page in memory (b is the page's bytes
// from its header on; span bounds them).
func elements(b []byte, span int64, flags uint16, count int, fetch func(n int64) ([]byte, error)) ([]element, error) {
	le := binary.LittleEndian
	hdrEnd := int64(pageHeaderLen) + int64(count)*leafElemLen
	b, err := fetch(hdrEnd)
	if err != nil {
		return nil, err
	}
	els := make([]element, count)
	need := hdrEnd
	type extent struct{ off, n int64 }
	keys := make([]extent, count)
	vals := make([]extent, count)
	for i := range count {
		e := b[pageHeaderLen+i*16:]
		elemOff := int64(pageHeaderLen + i*16)
		var pos, ksize uint32
		if flags == branchPageFlag {
			pos, ksize = le.Uint32(e[0:]), le.Uint32(e[4:])
			els[i].child = le.Uint64(e[8:])
		} else {
			els[i].bucket = le.Uint32(e[0:])&bucketLeafFlag != 0
			pos, ksize, els[i].vsize = le.Uint32(e[4:]), le.Uint32(e[8:]), le.Uint32(e[12:])
		}
		if ksize == 0 {
			return nil, fmt.Errorf("element %d has an empty key", i)
		}
		k := extent{elemOff + int64(pos), int64(ksize)}
		end := k.off + k.n + int64(els[i].vsize)
		if end > span {
			return nil, fmt.Errorf("element %d runs past the page (byte %d of %d)", i, end, span)
		}
		keys[i] = k
		els[i].valOff = k.off + k.n
		need = max(need, k.off+k.n)
		if els[i].bucket {
			if els[i].vsize < bucketHeaderLen {
				return nil, fmt.Errorf("element %d: bucket value of %d bytes", i, els[i].vsize)
			}
			vals[i] = extent{k.off + k.n, int64(els[i].vsize)}
			need = max(need, end)
		}
	}
	if b, err = fetch(need); err != nil {
		return nil, err
	}
	for i := range els {
		els[i].key = b[keys[i].off : keys[i].off+keys[i].n]
		if els[i].bucket {
			els[i].value = b[vals[i].off : vals[i].off+vals[i].n]
		}
	}
	return els, nil
}

// checkBucketRoot checks the tree of a bucket whose root page is root.
func (pf *pageFile) checkBucketRoot(root uint64, depth int) error {
	if depth > maxCheckDepth {
		return errors.New("buckets nested too deep")
	}
	return pf.checkTree(root, nil, nil, 0, depth)
}

// checkTree checks page id and its subtree: every key in [lo, hi).
func (pf *pageFile) checkTree(id uint64, lo, hi []byte, level, bucketDepth int) error {
	if level > maxCheckDepth {
		return fmt.Errorf("page %d: tree deeper than %d levels", id, maxCheckDepth)
	}
	p, err := pf.read(id)
	if err != nil {
		return err
	}
	if p.flags != branchPageFlag && p.flags != leafPageFlag {
		return fmt.Errorf("page %d: unexpected page type (flags %#x)", id, p.flags)
	}
	if p.flags == branchPageFlag && p.count == 0 {
		return fmt.Errorf("page %d: empty branch page", id)
	}
	els, err := elements(p.buf, p.span, p.flags, p.count, func(n int64) ([]byte, error) {
		if err := pf.extent(p, n); err != nil {
			return nil, err
		}
		return p.buf, nil
	})
	if err != nil {
		return fmt.Errorf("page %d: %v", id, err)
	}
	if err := checkOrder(els, lo, hi); err != nil {
		return fmt.Errorf("page %d: %v", id, err)
	}
	for i, e := range els {
		if p.flags == branchPageFlag {
			next := hi
			if i+1 < len(els) {
				next = els[i+1].key
			}
			if err := pf.checkTree(e.child, e.key, next, level+1, bucketDepth); err != nil {
				return err
			}
			continue
		}
		if e.bucket {
			if err := pf.checkBucketValue(e.value, bucketDepth+1); err != nil {
				return fmt.Errorf("bucket %q in page %d: %v", e.key, id, err)
			}
		}
	}
	return nil
}

// checkBucketValue checks a bucket entry's value: a root page number, or
// (root 0) an inline leaf page that follows the bucket header.
func (pf *pageFile) checkBucketValue(v []byte, depth int) error {
	if depth > maxCheckDepth {
		return errors.New("buckets nested too deep")
	}
	root := binary.LittleEndian.Uint64(v)
	if root != 0 {
		return pf.checkBucketRoot(root, depth)
	}
	inline := v[bucketHeaderLen:]
	if len(inline) < pageHeaderLen {
		return fmt.Errorf("inline bucket of %d bytes", len(inline))
	}
	flags, count := binary.LittleEndian.Uint16(inline[8:]), int(binary.LittleEndian.Uint16(inline[10:]))
	if flags != leafPageFlag {
		return fmt.Errorf("inline bucket page has flags %#x", flags)
	}
	els, err := elements(inline, int64(len(inline)), flags, count, func(n int64) ([]byte, error) {
		if n > int64(len(inline)) {
			return nil, fmt.Errorf("inline bucket element at byte %d of %d", n, len(inline))
		}
		return inline, nil
	})
	if err != nil {
		return fmt.Errorf("inline bucket: %v", err)
	}
	if err := checkOrder(els, nil, nil); err != nil {
		return fmt.Errorf("inline bucket: %v", err)
	}
	for _, e := range els {
		if e.bucket {
			if err := pf.checkBucketValue(e.value, depth+1); err != nil {
				return fmt.Errorf("bucket %q: %v", e.key, err)
			}
		}
	}
	return nil
}

// checkOrder checks bbolt's key order rules: keys strictly ascending, the
// first not below lo, all below hi.
func checkOrder(els []element, lo, hi []byte) error {
	for i, e := range els {
		if i == 0 && lo != nil && bytes.Compare(lo, e.key) > 0 {
			return fmt.Errorf("first key %x sorts before its parent's %x", e.key, lo)
		}
		if i > 0 && bytes.Compare(els[i-1].key, e.key) >= 0 {
			return fmt.Errorf("key %d (%x) does not sort after key %d", i, e.key, i-1)
		}
		if hi != nil && bytes.Compare(e.key, hi) >= 0 {
			return fmt.Errorf("key %x does not sort before the next parent key %x", e.key, hi)
		}
	}
	return nil
}

// checkFreelistPage checks that the freelist page bbolt will read lies in
// the file and is a freelist page listing pages of the file.
func (pf *pageFile) checkFreelistPage() error {
	id := pf.meta.freelist
	if id < 2 || id >= pf.meta.pgid || int64(id+1)*pf.psz > pf.size {
		return fmt.Errorf("%w: freelist page %d out of range", ErrCorrupt, id)
	}
	buf := make([]byte, pf.psz)
	if _, err := pf.r.ReadAt(buf, int64(id)*pf.psz); err != nil {
		return fmt.Errorf("%w: read freelist page %d: %v", ErrCorrupt, id, err)
	}
	le := binary.LittleEndian
	if le.Uint64(buf) != id || le.Uint16(buf[8:]) != freelistPageFlag {
		return fmt.Errorf("%w: page %d is not the freelist page", ErrCorrupt, id)
	}
	count, off := int64(le.Uint16(buf[10:])), int64(pageHeaderLen)
	if count == 0xFFFF {
		count, off = int64(le.Uint64(buf[pageHeaderLen:])), pageHeaderLen+8
	}
	span := int64(le.Uint32(buf[12:])+1) * pf.psz
	if count < 0 || off+count*8 > span || int64(id)*pf.psz+span > pf.size {
		return fmt.Errorf("%w: freelist page %d lists %d pages past its end", ErrCorrupt, id, count)
	}
	ids := make([]byte, count*8)
	if _, err := pf.r.ReadAt(ids, int64(id)*pf.psz+off); err != nil {
		return fmt.Errorf("%w: read freelist page %d: %v", ErrCorrupt, id, err)
	}
	for i := int64(0); i < count; i++ {
		if p := le.Uint64(ids[i*8:]); p < 2 || p >= pf.meta.pgid {
			return fmt.Errorf("%w: freelist page %d lists page %d, out of range", ErrCorrupt, id, p)
		}
	}
	return nil
}
