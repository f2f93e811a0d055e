package cache

import (
	"errors"
	"fmt"
	"io"
	"io/fs"
	"sync"
	"sync/atomic"

	"go.etcd.io/bbolt"

	"github.com/modproxy/modproxy/cache/internal/seek"
)

// Reader reads the content of one artifact. It implements io.Reader,
// io.Seeker, io.ReaderAt, io.WriterTo and io.Closer.
//
// A Reader holds no transaction between calls: each Read or ReadAt opens a
// short read transaction, copies at most a few chunks out of bbolt's memory
// (valid only inside the transaction) and returns. A read transaction held
// while a slow client drains a socket would block bbolt's remap and so every
// writer.
//
// ReadAt may be called concurrently; Read, Seek and WriteTo share an offset
// and may not. If the artifact is deleted while being read, reads fail with
// an error wrapping ErrNotFound; they never return other content.
type Reader struct {
	s      *Store
	key    Key
	rec    record
	off    int64
	closed atomic.Bool
	// checked is the index+1 of the last chunk whose checksum was checked.
	checked atomic.Uint32
}

// Meta returns the artifact's Meta.
func (r *Reader) Meta() Meta { return r.rec.Meta }

// Size returns the content length.
func (r *Reader) Size() int64 { return r.rec.Size }

var errClosed = fmt.Errorf("cache reader: %w", fs.ErrClosed)

// readAt copies from one read transaction.
func (r *Reader) readAt(p []byte, off int64) (int, error) {
	if r.closed.Load() {
		return 0, errClosed
	}
	var n int
	err := r.s.view(func(tx *bbolt.Tx) (err error) {
		n, err = r.s.readChunks(tx, &r.rec, p, off, &r.checked)
		return err
	})
	if err != nil {
		return n, fmt.Errorf("read %s: %w", r.key, r.s.readFailed(r.key, &r.rec, err))
	}
	return n, nil
}

// Read implements io.Reader.
func (r *Reader) Read(p []byte) (int, error) {
	if r.closed.Load() {
		return 0, errClosed
	}
	if r.off >= r.rec.Size {
		return 0, io.EOF
	}
	n, err := r.readAt(p, r.off)
	r.off += int64(n)
	return n, err
}

// ReadAt implements io.ReaderAt: it fills p (in several transactions if p
// spans more than a few chunks) or returns an error, io.EOF at the end.
func (r *Reader) ReadAt(p []byte, off int64) (int, error) {
	if off < 0 {
		return 0, fmt.Errorf("read %s: negative offset %d", r.key, off)
	}
	n := 0
	for n < len(p) {
		if off+int64(n) >= r.rec.Size {
			return n, io.EOF
		}
		m, err := r.readAt(p[n:], off+int64(n))
		n += m
		if err != nil {
			return n, err
		}
	}
	return n, nil
}

// Seek implements io.Seeker. Seeking past the end is allowed; reads there
// return io.EOF.
func (r *Reader) Seek(offset int64, whence int) (int64, error) {
	if r.closed.Load() {
		return 0, errClosed
	}
	abs, err := seek.Abs(r.off, r.rec.Size, offset, whence)
	if err != nil {
		return 0, fmt.Errorf("seek %s: %w", r.key, err)
	}
	r.off = abs
	return abs, nil
}

// writeToChunks is the number of chunks WriteTo copies per transaction
// and write. One (512 KiB) measured cheaper than four: the buffer stays in
// the CPU's cache between the copy and the socket write.
const writeToChunks = 1

// copyBufs holds buffers for WriteTo, keyed by size.
var copyBufs sync.Map // int -> *sync.Pool

func copyBuf(size int) *[]byte {
	p, ok := copyBufs.Load(size)
	if !ok {
		p, _ = copyBufs.LoadOrStore(size, &sync.Pool{New: func() any {
			b := make([]byte, size)
			return &b
		}})
	}
	return p.(*sync.Pool).Get().(*[]byte)
}

// WriteTo implements io.WriterTo (used by io.Copy): it copies up to
// writeToChunks chunks per read transaction into a pooled buffer and writes
// them to w in one call after the transaction has ended, so that a socket
// gets large writes.
func (r *Reader) WriteTo(w io.Writer) (int64, error) {
	if r.closed.Load() {
		return 0, errClosed
	}
	size := r.rec.chunkSize * int(min(max(r.rec.chunks, 1), writeToChunks))
	bufp := copyBuf(size)
	defer func() {
		v, _ := copyBufs.Load(size)
		v.(*sync.Pool).Put(bufp)
	}()
	var total int64
	for r.off < r.rec.Size {
		n, err := r.readAt(*bufp, r.off)
		if err != nil {
			return total, err
		}
		m, err := w.Write((*bufp)[:n])
		r.off += int64(m)
		total += int64(m)
		if err != nil {
			return total, err
		}
		if m != n {
			return total, io.ErrShortWrite
		}
	}
	return total, nil
}

// Close marks the Reader closed; it holds no resources.
func (r *Reader) Close() error {
	if r.closed.Swap(true) {
		return errors.New("cache reader: already closed")
	}
	return nil
}
