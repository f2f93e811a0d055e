package proxy

import (
	"context"
	"errors"
	"io"
	"io/fs"
	"net/http"
)

// Direct serves GOPROXY protocol requests straight from version control
// (the "direct" upstream list entry). Package direct implements it. An
// error for which errors.Is(err, fs.ErrNotExist) holds is "not found";
// anything else is a failure.
type Direct interface {
	Open(ctx context.Context, path, kind, version string) (io.ReadCloser, int64, error)
}

// getDirect answers p from Config.Direct as an upstream's 200 response,
// so that direct answers take the same validation, verification and
// storage path as any upstream's. Not-found is a 404 StatusError: direct
// is the go command's last resort, and what it cannot find does not exist.
func (f *Fetcher) getDirect(ctx context.Context, p string) (*http.Response, error) {
	req, err := ParsePath("/" + p)
	if err != nil {
		return nil, &UpstreamError{Upstream: "direct", Err: err}
	}
	rc, size, err := f.cfg.Direct.Open(ctx, req.Module, string(req.Kind), req.Version)
	if err != nil {
		if errors.Is(err, fs.ErrNotExist) {
			return nil, &StatusError{Upstream: "direct", Status: http.StatusNotFound, Msg: oneLine(err.Error())}
		}
		return nil, &UpstreamError{Upstream: "direct", Err: errors.New(oneLine(err.Error()))}
	}
	if size < 0 {
		size = -1
	}
	return &http.Response{StatusCode: http.StatusOK, Body: rc, ContentLength: size, Header: http.Header{}}, nil
}

// errDirectDisabled answers a "direct" entry when no Direct is configured.
var errDirectDisabled = &StatusError{Upstream: "direct", Status: http.StatusNotFound, Msg: "direct: fetching from version control is not configured"}
