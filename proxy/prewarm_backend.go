package proxy

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"

	"golang.org/x/mod/module"

	"github.com/modproxy/modproxy/cache"
	"github.com/modproxy/modproxy/cache/gate"
	"github.com/modproxy/modproxy/modgraph"
	"github.com/modproxy/modproxy/sumdb"
)

// PrewarmArtifact is one artifact that a PrewarmBackend made present in its
// store.
type PrewarmArtifact struct {
	Size   int64
	Hash   string // "h1:" hash of a .mod, or of a .zip when asked for; "" otherwise
	Cached bool   // it was stored before
}

// PrewarmBackend is where Prewarm runs the fetch–verify–store pipeline: in
// this process over a Fetcher (NewFetcherBackend), or in a running modproxy
// through its HTTP API (NewHTTPBackend). It is also a modgraph.Source, so
// that the needs can be resolved through the same pipeline.
type PrewarmBackend interface {
	modgraph.Source
	// Fetch makes artifact k present in the backend's store. For a .mod it
	// returns the file's "h1:" hash; for a .zip when needHash is set.
	Fetch(ctx context.Context, k cache.Key, needHash bool) (PrewarmArtifact, error)
	// SumDB reads file rel ("supported", "lookup/…", "tile/…") of the
	// /sumdb/<name>/ endpoint of checksum database name, which stores what
	// it serves.
	SumDB(ctx context.Context, name, rel string) ([]byte, error)
}

// fetcherBackend drives a Fetcher in this process: the same pipeline as the
// Server's.
type fetcherBackend struct {
	f     *Fetcher
	sumdb http.Handler // nil when checksum verification is off
}

// NewFetcherBackend returns a PrewarmBackend that fetches, verifies and
// stores through f, spooling zips it must hash in f's SpoolDir. sumdb
// serves the checksum database's /sumdb/<name>/ endpoints over f's store
// (sumdb.Verifier.Handler); nil when checksum verification is off.
func NewFetcherBackend(f *Fetcher, sumdb http.Handler) PrewarmBackend {
	return &fetcherBackend{f: f, sumdb: sumdb}
}

func (b *fetcherBackend) Fetch(ctx context.Context, k cache.Key, needHash bool) (PrewarmArtifact, error) {
	store := b.f.store
	if m, err := store.Stat(k); err == nil {
		res := PrewarmArtifact{Size: m.Size, Hash: m.Hash, Cached: true}
		if res.Hash == "" && (k.Kind == cache.KindMod || k.Kind == cache.KindZip && needHash) {
			if res.Hash, err = b.storedHash(k); err != nil {
				return PrewarmArtifact{}, err
			}
		}
		return res, nil
	} else if !errors.Is(err, cache.ErrNotFound) {
		return PrewarmArtifact{}, fmt.Errorf("stat %s: %w", k, err)
	}
	req := Request{Module: k.Path, Version: k.Version, Kind: Kind(k.Kind)}
	var m cache.Meta
	switch k.Kind {
	case cache.KindZip:
		// Without streaming, Zip returns only once the zip is stored.
		z, err := b.f.Zip(ctx, req, false)
		if err != nil {
			return PrewarmArtifact{}, err
		}
		m = z.Reader.Meta()
		z.Close()
	default:
		a, err := b.f.Small(ctx, req)
		if err != nil {
			return PrewarmArtifact{}, err
		}
		m = a.Meta
		if k.Kind == cache.KindMod && m.Hash == "" {
			h, err := sumdb.HashMod(a.Data)
			if err != nil {
				return PrewarmArtifact{}, fmt.Errorf("hash %s: %w", k, err)
			}
			m.Hash = h
		}
	}
	res := PrewarmArtifact{Size: m.Size, Hash: m.Hash}
	if res.Hash == "" && k.Kind == cache.KindZip && needHash {
		var err error
		if res.Hash, err = b.storedHash(k); err != nil {
			return PrewarmArtifact{}, err
		}
	}
	return res, nil
}

// storedHash computes the "h1:" hash of a stored .mod or .zip that was
// stored without one (exempt from the checksum database, or sumdb off).
func (b *fetcherBackend) storedHash(k cache.Key) (string, error) {
	r, err := b.f.store.Open(k)
	if err != nil {
		return "", fmt.Errorf("read %s: %w", k, err)
	}
	defer r.Close()
	if k.Kind == cache.KindMod {
		data, err := io.ReadAll(r)
		if err != nil {
			return "", fmt.Errorf("read %s: %w", k, err)
		}
		return sumdb.HashMod(data)
	}
	return gate.HashZip(k, func() (io.ReadCloser, error) { return io.NopCloser(r), nil }, b.f.cfg.SpoolDir)
}

func (b *fetcherBackend) GoMod(ctx context.Context, path, version string) ([]byte, error) {
	a, err := b.f.Small(ctx, Request{Module: path, Version: version, Kind: KindMod})
	if err != nil {
		return nil, err
	}
	return a.Data, nil
}

func (b *fetcherBackend) Latest(ctx context.Context, path string) (string, error) {
	a, err := b.f.Mutable(ctx, Request{Module: path, Kind: KindLatest})
	if err != nil {
		return "", err
	}
	return infoVersion(path, a.Data)
}

func (b *fetcherBackend) SumDB(ctx context.Context, name, rel string) ([]byte, error) {
	if b.sumdb == nil {
		return nil, errors.New("checksum database verification is off")
	}
	p := "/sumdb/" + name + "/" + rel
	req := httptest.NewRequestWithContext(ctx, http.MethodGet, p, nil)
	rec := httptest.NewRecorder()
	b.sumdb.ServeHTTP(rec, req)
	if rec.Code != http.StatusOK {
		line, _, _ := strings.Cut(strings.TrimSpace(rec.Body.String()), "\n")
		return nil, fmt.Errorf("%s: %d %s", p, rec.Code, line)
	}
	return rec.Body.Bytes(), nil
}

// httpBackend drives a running modproxy through its HTTP API, so that the
// server's own pipeline fetches, verifies and stores.
type httpBackend struct {
	base     string // server base URL without a trailing slash
	client   *http.Client
	spoolDir string
}

// NewHTTPBackend returns a PrewarmBackend that fills the store of the
// modproxy serving serverURL by requesting every artifact from it with
// client (share one client across the run so that connections are reused;
// its transport should allow a long wait for response headers, since the
// server may be fetching a large zip). Zips whose hash is needed are spooled
// in spoolDir ("": the system temporary directory).
func NewHTTPBackend(client *http.Client, serverURL, spoolDir string) PrewarmBackend {
	return &httpBackend{base: strings.TrimRight(serverURL, "/"), client: client, spoolDir: spoolDir}
}

// get GETs p (escaped, with a leading slash) and returns the response when
// it is 200.
func (b *httpBackend) get(ctx context.Context, p string) (*http.Response, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, b.base+p, nil)
	if err != nil {
		return nil, err
	}
	req.Header.Set("User-Agent", "modproxy-prewarm")
	resp, err := b.client.Do(req)
	if err != nil {
		return nil, err
	}
	if resp.StatusCode != http.StatusOK {
		body, _ := io.ReadAll(io.LimitReader(resp.Body, 1024))
		resp.Body.Close()
		line, _, _ := strings.Cut(strings.TrimSpace(string(body)), "\n")
		return nil, fmt.Errorf("GET %s: %s: %s", p, resp.Status, line)
	}
	return resp, nil
}

func (b *httpBackend) getSmall(ctx context.Context, p string) ([]byte, error) {
	resp, err := b.get(ctx, p)
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	data, err := io.ReadAll(io.LimitReader(resp.Body, 64<<20))
	if err != nil {
		return nil, fmt.Errorf("GET %s: %w", p, err)
	}
	return data, nil
}

// checkedURLPath returns req's protocol path with a leading slash. Unlike
// ParsePath's requests, prewarm's come from go.mod and go.sum files, so
// their path and version are checked here.
func checkedURLPath(req Request) (string, error) {
	if _, err := module.EscapePath(req.Module); err != nil {
		return "", err
	}
	if req.Version != "" {
		if _, err := module.EscapeVersion(req.Version); err != nil {
			return "", err
		}
	}
	return "/" + req.URLPath(), nil
}

func (b *httpBackend) Fetch(ctx context.Context, k cache.Key, needHash bool) (PrewarmArtifact, error) {
	p, err := checkedURLPath(Request{Module: k.Path, Version: k.Version, Kind: Kind(k.Kind)})
	if err != nil {
		return PrewarmArtifact{}, err
	}
	resp, err := b.get(ctx, p)
	if err != nil {
		return PrewarmArtifact{}, err
	}
	defer resp.Body.Close()
	res := PrewarmArtifact{Cached: resp.Header.Get("X-Modproxy-Cache") == "hit"}
	switch {
	case k.Kind == cache.KindMod:
		data, err := io.ReadAll(resp.Body)
		if err != nil {
			return PrewarmArtifact{}, fmt.Errorf("GET %s: %w", p, err)
		}
		res.Size = int64(len(data))
		if res.Hash, err = sumdb.HashMod(data); err != nil {
			return PrewarmArtifact{}, fmt.Errorf("hash %s: %w", k, err)
		}
	case k.Kind == cache.KindZip && needHash:
		cr := &countingReader{r: resp.Body}
		if res.Hash, err = gate.HashZip(k, func() (io.ReadCloser, error) { return io.NopCloser(cr), nil }, b.spoolDir); err != nil {
			return PrewarmArtifact{}, fmt.Errorf("GET %s: %w", p, err)
		}
		res.Size = cr.n
	default:
		n, err := io.Copy(io.Discard, resp.Body)
		if err != nil {
			return PrewarmArtifact{}, fmt.Errorf("GET %s: %w", p, err)
		}
		res.Size = n
	}
	return res, nil
}

func (b *httpBackend) GoMod(ctx context.Context, path, version string) ([]byte, error) {
	p, err := checkedURLPath(Request{Module: path, Version: version, Kind: KindMod})
	if err != nil {
		return nil, err
	}
	return b.getSmall(ctx, p)
}

func (b *httpBackend) Latest(ctx context.Context, path string) (string, error) {
	p, err := checkedURLPath(Request{Module: path, Kind: KindLatest})
	if err != nil {
		return "", err
	}
	data, err := b.getSmall(ctx, p)
	if err != nil {
		return "", err
	}
	return infoVersion(path, data)
}

func (b *httpBackend) SumDB(ctx context.Context, name, rel string) ([]byte, error) {
	return b.getSmall(ctx, "/sumdb/"+name+"/"+rel)
}

// infoVersion returns the version named by an @latest answer.
func infoVersion(path string, data []byte) (string, error) {
	v, err := gate.ParseInfo(data, "")
	if err != nil {
		return "", fmt.Errorf("%s@latest: %w", path, err)
	}
	return v, nil
}

// countingReader counts the bytes read through it.
type countingReader struct {
	r io.Reader
	n int64
}

func (c *countingReader) Read(p []byte) (int, error) {
	n, err := c.r.Read(p)
	c.n += int64(n)
	return n, err
}
