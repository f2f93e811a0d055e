package proxy

import (
	"errors"
	"fmt"
	"net/http"
	"strings"
	"time"

	"github.com/modproxy/modproxy/cache/gate"
	"github.com/modproxy/modproxy/internal/oneline"
	"github.com/modproxy/modproxy/netprobe"
	"github.com/modproxy/modproxy/sumdb"
)

// StatusError is an upstream's non-200 answer.
type StatusError struct {
	Upstream string
	Status   int
	Msg      string // first line of the body, trimmed
}

func (e *StatusError) Error() string {
	msg := e.Msg
	if msg == "" {
		msg = http.StatusText(e.Status)
	}
	return fmt.Sprintf("upstream %s: %d %s", e.Upstream, e.Status, msg)
}

// notFound reports whether the upstream says it does not have the
// artifact. 403 counts: mirrors and artifact managers answer it for
// modules they do not carry (and the public mirror for modules it refuses),
// and the go command would otherwise stop at the first such upstream. So
// does 400: the proxy only forwards paths it has validated, so an upstream
// 400 ("module host not permitted", say) is a refusal of this module, not
// a malformed request.
func (e *StatusError) notFound() bool {
	switch e.Status {
	case http.StatusNotFound, http.StatusGone, http.StatusForbidden, http.StatusBadRequest:
		return true
	}
	return false
}

// errBadContent marks an upstream answer that failed validation (garbage);
// it is the gate's content-check error, so both count alike.
var errBadContent = gate.ErrContent

// HTTPError is an error with the status and one-line message that the
// proxy's client sees.
type HTTPError struct {
	Status int
	Msg    string
	Err    error
	// RetryAfter, when set, is sent as Retry-After (the proxy is busy, not
	// broken).
	RetryAfter time.Duration
}

func (e *HTTPError) Error() string { return e.Msg }
func (e *HTTPError) Unwrap() error { return e.Err }

func notFoundf(format string, args ...any) *HTTPError {
	return &HTTPError{Status: http.StatusNotFound, Msg: "not found: " + fmt.Sprintf(format, args...)}
}

// fetchFailure is upstreamFailure for a fetch over ups, the module's
// upstream list, which is empty for a private module without private
// upstreams.
func fetchFailure(req Request, ups []Upstream, errs []error) *HTTPError {
	if len(ups) == 0 {
		return noPrivateUpstream(req)
	}
	return upstreamFailure(req, errs)
}

func noPrivateUpstream(req Request) *HTTPError {
	return notFoundf("%s is private and no private upstream is configured", req.Module)
}

// upstreamFailure sums up why no upstream could serve req.
func upstreamFailure(req Request, errs []error) *HTTPError {
	if len(errs) == 0 {
		return &HTTPError{Status: http.StatusBadGateway, Msg: fmt.Sprintf("%s: no upstream configured for this module", req)}
	}
	allNotFound, gone, mismatch := true, false, false
	status := http.StatusBadGateway
	var parts []string
	for _, err := range errs {
		parts = append(parts, oneLine(err.Error()))
		var se *StatusError
		if errors.As(err, &se) && se.notFound() {
			gone = gone || se.Status == http.StatusGone
			continue
		}
		allNotFound = false
		if isTimeout(err) {
			status = http.StatusGatewayTimeout
		}
		if errors.Is(err, sumdb.ErrMismatch) || errors.Is(err, errCondemned) {
			mismatch = true
		}
	}
	if allNotFound {
		st := http.StatusNotFound
		if gone {
			st = http.StatusGone
		}
		return &HTTPError{Status: st, Msg: fmt.Sprintf("not found: %s: %s", req, strings.Join(parts, "; ")), Err: errors.Join(errs...)}
	}
	if mismatch {
		return &HTTPError{Status: http.StatusBadGateway, Msg: fmt.Sprintf("checksum mismatch: %s", strings.Join(parts, "; ")), Err: errors.Join(errs...)}
	}
	return &HTTPError{Status: status, Msg: fmt.Sprintf("%s: upstreams failed: %s", req, strings.Join(parts, "; ")), Err: errors.Join(errs...)}
}

// isTimeout reports whether err is a timeout.
var isTimeout = netprobe.IsTimeout

// oneLine keeps error text on a single line for one-line response bodies.
var oneLine = oneline.String

// UpstreamError is a failure to get an answer from an upstream (connection,
// timeout, truncated or invalid content).
type UpstreamError struct {
	Upstream string
	Err      error
}

func (e *UpstreamError) Error() string { return fmt.Sprintf("upstream %s: %v", e.Upstream, e.Err) }
func (e *UpstreamError) Unwrap() error { return e.Err }
