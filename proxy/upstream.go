package proxy

import (
	"errors"
	"fmt"
	"net/url"
	"strings"
)

// Upstream is one entry of a GOPROXY-style upstream list.
type Upstream struct {
	// URL is the base URL without a trailing slash; empty for off and direct.
	URL string
	// Off and Direct mark the list's keywords.
	Off, Direct bool
	// AnyError is true when the entry was followed by '|': the next entry
	// is tried after any error. Otherwise ('," or the last entry) only a
	// not-found answer (404, 410, or 403, see below) falls through.
	AnyError bool
}

// Name returns the name used in logs, headers and metric labels.
func (u Upstream) Name() string {
	switch {
	case u.Off:
		return "off"
	case u.Direct:
		return "direct"
	}
	return u.URL
}

// ParseUpstreams parses a list in the go command's GOPROXY syntax: URLs and
// the keywords "direct" and "off", separated by ',' (fall through on 404 or
// 410) or '|' (fall through on any error). A URL without a scheme gets
// https://, as with the go command. file:// and other schemes are refused.
func ParseUpstreams(list string) ([]Upstream, error) {
	list = strings.TrimSpace(list)
	if list == "" {
		return nil, errors.New("empty upstream list")
	}
	var ups []Upstream
	for list != "" {
		var elem string
		anyErr := false
		if i := strings.IndexAny(list, ",|"); i >= 0 {
			elem, anyErr, list = list[:i], list[i] == '|', list[i+1:]
		} else {
			elem, list = list, ""
		}
		elem = strings.TrimSpace(elem)
		if elem == "" {
			continue // the go command ignores empty elements
		}
		u := Upstream{AnyError: anyErr}
		switch elem {
		case "off":
			u.Off = true
		case "direct":
			u.Direct = true
		case "noproxy":
			return nil, fmt.Errorf("upstream list: %q is not supported", elem)
		default:
			if !strings.Contains(elem, "://") {
				elem = "https://" + elem
			}
			parsed, err := url.Parse(elem)
			if err != nil {
				return nil, fmt.Errorf("upstream list: invalid URL %q: %w", elem, err)
			}
			if parsed.Scheme != "http" && parsed.Scheme != "https" {
				return nil, fmt.Errorf("upstream list: %q: scheme %q is not supported (want http or https)", elem, parsed.Scheme)
			}
			if parsed.Host == "" {
				return nil, fmt.Errorf("upstream list: %q has no host", elem)
			}
			if parsed.RawQuery != "" || parsed.Fragment != "" {
				return nil, fmt.Errorf("upstream list: %q must not have a query or fragment", elem)
			}
			u.URL = strings.TrimRight(parsed.String(), "/")
		}
		ups = append(ups, u)
	}
	if len(ups) == 0 {
		return nil, errors.New("empty upstream list")
	}
	// The go command treats the separator after the last element as
	// irrelevant; normalise it so tests and logs are stable.
	ups[len(ups)-1].AnyError = false
	return ups, nil
}

// FormatUpstreams renders ups back into GOPROXY syntax.
func FormatUpstreams(ups []Upstream) string {
	var b strings.Builder
	for i, u := range ups {
		if i > 0 {
			if ups[i-1].AnyError {
				b.WriteByte('|')
			} else {
				b.WriteByte(',')
			}
		}
		b.WriteString(u.Name())
	}
	return b.String()
}

// URLs returns the base URLs of the HTTP upstreams in ups.
func URLs(ups []Upstream) []string {
	var out []string
	for _, u := range ups {
		if u.URL != "" {
			out = append(out, u.URL)
		}
	}
	return out
}
