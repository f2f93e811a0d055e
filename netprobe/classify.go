package netprobe

import (
	"net/url"
	"strings"
)

// Request kinds (the kind label).
const (
	KindList   = "list"
	KindInfo   = "info"
	KindMod    = "mod"
	KindZip    = "zip"
	KindLatest = "latest"
	KindSumDB  = "sumdb"
	KindOther  = "other"
)

// baseURL is a parsed configured upstream.
type baseURL struct {
	name   string // as configured, without trailing slash: the label value
	scheme string
	host   string // lower case, with port if configured
	path   string // without trailing slash; "" for the root
}

func parseUpstreams(list []string) ([]baseURL, error) {
	out := make([]baseURL, 0, len(list))
	seen := make(map[string]bool)
	for _, s := range list {
		b, err := parseBase(s)
		if err != nil {
			return nil, err
		}
		if !seen[b.name] {
			seen[b.name] = true
			out = append(out, b)
		}
	}
	return out, nil
}

func parseBase(s string) (baseURL, error) {
	name := strings.TrimRight(s, "/")
	u, err := url.Parse(name)
	if err != nil {
		return baseURL{}, errorf("upstream %q: %w", s, err)
	}
	if u.Scheme == "" || u.Host == "" {
		return baseURL{}, errorf("upstream %q: not an absolute URL", s)
	}
	return baseURL{
		name:   name,
		scheme: strings.ToLower(u.Scheme),
		host:   strings.ToLower(u.Host),
		path:   strings.TrimRight(u.Path, "/"),
	}, nil
}

// Classify labels a request URL: upstream is the longest configured base URL
// that is a prefix of u (on a path-segment boundary), or scheme://host when
// none matches; kind is one of list, info, mod, zip, latest, sumdb, other,
// derived from the path.
func Classify(upstreams []string, u *url.URL) (upstream, kind string) {
	bases := make([]baseURL, 0, len(upstreams))
	for _, s := range upstreams {
		if b, err := parseBase(s); err == nil {
			bases = append(bases, b)
		}
	}
	return classify(bases, u)
}

func classify(bases []baseURL, u *url.URL) (upstream, kind string) {
	host := strings.ToLower(u.Host)
	scheme := strings.ToLower(u.Scheme)
	path := u.Path
	best := -1
	for i, b := range bases {
		if b.scheme != scheme || b.host != host {
			continue
		}
		if b.path != "" && path != b.path && !strings.HasPrefix(path, b.path+"/") {
			continue
		}
		if best < 0 || len(b.path) > len(bases[best].path) {
			best = i
		}
	}
	rel := path
	if best >= 0 {
		upstream = bases[best].name
		rel = strings.TrimPrefix(path, bases[best].path)
	} else {
		upstream = scheme + "://" + host
	}
	return upstream, kindOf(rel)
}

// kindOf derives the request kind from a path relative to its upstream.
func kindOf(p string) string {
	if i := strings.LastIndex(p, "/@v/"); i >= 0 {
		file := p[i+len("/@v/"):]
		switch {
		case file == "list":
			return KindList
		case strings.HasSuffix(file, ".info"):
			return KindInfo
		case strings.HasSuffix(file, ".mod"):
			return KindMod
		case strings.HasSuffix(file, ".zip"):
			return KindZip
		}
	}
	if strings.HasSuffix(p, "/@latest") {
		return KindLatest
	}
	if strings.Contains(p, "/sumdb/") ||
		strings.HasPrefix(p, "/lookup/") || strings.HasPrefix(p, "/tile/") ||
		p == "/latest" || p == "/supported" {
		return KindSumDB
	}
	return KindOther
}
