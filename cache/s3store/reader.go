package s3store

import (
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"net/http"
	"sync"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/service/s3"

	"github.com/modproxy/modproxy/cache"
	"github.com/modproxy/modproxy/cache/internal/seek"
)

// reader reads one artifact object. Sequential reads share one streaming
// GET from the current offset; ReadAt issues its own ranged GET. Every GET
// is conditional on the ETag the reader was opened with.
type reader struct {
	s    *Store
	key  string
	name string
	oi   objectInfo

	mu     sync.Mutex // guards off, body, closed
	off    int64
	body   io.ReadCloser // open stream positioned at off, or nil
	cancel context.CancelFunc
	closed bool
}

var _ cache.ArtifactReader = (*reader)(nil)

var errClosed = fmt.Errorf("s3 reader: %w", fs.ErrClosed)

func (r *reader) Meta() cache.Meta { return r.oi.meta }
func (r *reader) Size() int64      { return r.oi.meta.Size }

// get opens a GET of bytes [off, end) (end <= 0: to the end of the object).
func (r *reader) get(off, end int64) (io.ReadCloser, context.CancelFunc, error) {
	ctx, cancel := context.WithTimeout(context.Background(), r.s.cfg.TransferTimeout)
	rng := fmt.Sprintf("bytes=%d-", off)
	if end > 0 {
		rng = fmt.Sprintf("bytes=%d-%d", off, end-1)
	}
	out, err := r.s.c.GetObject(ctx, &s3.GetObjectInput{
		Bucket: &r.s.cfg.Bucket, Key: aws.String(r.key), Range: aws.String(rng), IfMatch: aws.String(r.oi.etag),
	})
	if err != nil {
		cancel()
		if st := statusOf(err); st == http.StatusPreconditionFailed || st == http.StatusNotFound {
			return nil, nil, fmt.Errorf("read %s: the artifact was deleted or replaced while being read: %w", r.name, cache.ErrNotFound)
		}
		return nil, nil, fmt.Errorf("read %s: %w", r.name, err)
	}
	return out.Body, cancel, nil
}

func (r *reader) dropBody() {
	if r.body != nil {
		r.body.Close()
		r.cancel()
		r.body, r.cancel = nil, nil
	}
}

func (r *reader) Read(p []byte) (int, error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.closed {
		return 0, errClosed
	}
	if r.off >= r.oi.meta.Size {
		return 0, io.EOF
	}
	if len(p) == 0 {
		return 0, nil
	}
	if r.body == nil {
		body, cancel, err := r.get(r.off, 0)
		if err != nil {
			return 0, err
		}
		r.body, r.cancel = body, cancel
	}
	n, err := r.body.Read(p)
	r.off += int64(n)
	if err == io.EOF {
		r.dropBody()
		if r.off < r.oi.meta.Size {
			return n, fmt.Errorf("read %s: object ended at %d of %d bytes", r.name, r.off, r.oi.meta.Size)
		}
		return n, nil
	}
	if err != nil {
		r.dropBody()
		return n, fmt.Errorf("read %s: %w", r.name, err)
	}
	return n, nil
}

func (r *reader) ReadAt(p []byte, off int64) (int, error) {
	if off < 0 {
		return 0, fmt.Errorf("read %s: negative offset %d", r.name, off)
	}
	r.mu.Lock()
	closed := r.closed
	r.mu.Unlock()
	if closed {
		return 0, errClosed
	}
	size := r.oi.meta.Size
	if off >= size {
		return 0, io.EOF
	}
	want := min(int64(len(p)), size-off)
	body, cancel, err := r.get(off, off+want)
	if err != nil {
		return 0, err
	}
	defer cancel()
	defer body.Close()
	n, err := io.ReadFull(body, p[:want])
	if err != nil {
		return n, fmt.Errorf("read %s: %w", r.name, err)
	}
	if int64(n) < int64(len(p)) {
		return n, io.EOF
	}
	return n, nil
}

func (r *reader) Seek(offset int64, whence int) (int64, error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.closed {
		return 0, errClosed
	}
	abs, err := seek.Abs(r.off, r.oi.meta.Size, offset, whence)
	if err != nil {
		return 0, fmt.Errorf("seek %s: %w", r.name, err)
	}
	if abs != r.off {
		r.dropBody()
	}
	r.off = abs
	return abs, nil
}

// WriteTo copies the rest of the artifact to w from one streaming GET.
func (r *reader) WriteTo(w io.Writer) (int64, error) {
	var total int64
	buf := make([]byte, 256<<10)
	for {
		n, err := r.Read(buf)
		if n > 0 {
			m, werr := w.Write(buf[:n])
			total += int64(m)
			if werr != nil {
				return total, werr
			}
			if m != n {
				return total, io.ErrShortWrite
			}
		}
		if err == io.EOF {
			return total, nil
		}
		if err != nil {
			return total, err
		}
	}
}

func (r *reader) Close() error {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.closed {
		return errors.New("s3 reader: already closed")
	}
	r.closed = true
	r.dropBody()
	return nil
}
