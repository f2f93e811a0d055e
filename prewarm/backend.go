package prewarm

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"strings"

	"golang.org/x/mod/module"

	"github.com/modproxy/modproxy/cache"
	"github.com/modproxy/modproxy/cache/gate"
	"github.com/modproxy/modproxy/modgraph"
	"github.com/modproxy/modproxy/proxy"
	"github.com/modproxy/modproxy/sumdb"
)

// Artifact is one artifact that a Backend made present in its
// store.
type Artifact struct {
	Size   int64
	Hash   string // "h1:" hash of a .mod, or of a .zip when asked for; "" otherwise
	Cached bool   // it was stored before
}

// Backend is where Run runs the fetch–verify–store pipeline: in
// this process over a Fetcher (NewFetcherBackend), or in a running modproxy
// through its HTTP API (NewHTTPBackend). It is also a modgraph.Source, so
// that the needs can be resolved through the same pipeline.
type Backend interface {
	modgraph.Source
	// Fetch makes artifact k present in the backend's store. For a .mod it
	// returns the file's "h1:" hash; for a .zip when needHash is set.
	Fetch(ctx context.Context, k cache.Key, needHash bool) (Artifact, error)
	// SumDB reads file rel ("supported", "lookup/…", "tile/…") of the
	// /sumdb/<name>/ endpoint of checksum database name, which stores what
	// it serves.
	SumDB(ctx context.Context, name, rel string) ([]byte, error)
}

// fetcherBackend drives a proxy.Fetcher in this process: the same pipeline
// as the server's.
type fetcherBackend struct {
	f        *proxy.Fetcher
	store    *cache.Store
	spoolDir string
	sumdb    http.Handler // nil when checksum verification is off
}

// NewFetcherBackend returns a Backend that fetches, verifies and stores
// through f into store (f's store), spooling zips it must hash in spoolDir
// ("": the system temporary directory). sumdb serves the checksum
// database's /sumdb/<name>/ endpoints over the store
// (sumdb.Verifier.Handler); nil when checksum verification is off.
func NewFetcherBackend(f *proxy.Fetcher, store *cache.Store, spoolDir string, sumdb http.Handler) Backend {
	return &fetcherBackend{f: f, store: store, spoolDir: spoolDir, sumdb: sumdb}
}

func (b *fetcherBackend) Fetch(ctx context.Context, k cache.Key, needHash bool) (Artifact, error) {
	store := b.store
	if m, err := store.Stat(k); err == nil {
		res := Artifact{Size: m.Size, Hash: m.Hash, Cached: true}
		if res.Hash == "" && (k.Kind == cache.KindMod || k.Kind == cache.KindZip && needHash) {
			if res.Hash, err = b.storedHash(k); err != nil {
				return Artifact{}, err
			}
		}
		return res, nil
	} else if !errors.Is(err, cache.ErrNotFound) {
		return Artifact{}, fmt.Errorf("stat %s: %w", k, err)
	}
	req := proxy.Request{Module: k.Path, Version: k.Version, Kind: proxy.Kind(k.Kind), Stored: true}
	var m cache.Meta
	switch k.Kind {
	case cache.KindZip:
		// In prewarm mode, Zip returns only once the zip is stored, and
		// the download goes on even if ctx ends.
		z, err := b.f.Zip(ctx, req, proxy.ZipPrewarm)
		if err != nil {
			return Artifact{}, err
		}
		m = z.Reader.Meta()
		z.Close()
	default:
		a, err := b.f.Small(ctx, req)
		if err != nil {
			return Artifact{}, err
		}
		m = a.Meta
		if k.Kind == cache.KindMod && m.Hash == "" {
			h, err := sumdb.HashMod(a.Data)
			if err != nil {
				return Artifact{}, fmt.Errorf("hash %s: %w", k, err)
			}
			m.Hash = h
		}
	}
	res := Artifact{Size: m.Size, Hash: m.Hash}
	if res.Hash == "" && k.Kind == cache.KindZip && needHash {
		var err error
		if res.Hash, err = b.storedHash(k); err != nil {
			return Artifact{}, err
		}
	}
	return res, nil
}

// storedHash computes the "h1:" hash of a stored .mod or .zip that was
// stored without one (exempt from the checksum database, or sumdb off).
func (b *fetcherBackend) storedHash(k cache.Key) (string, error) {
	r, err := b.store.Open(k)
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
	return gate.HashZip(k, func() (io.ReadCloser, error) { return io.NopCloser(r), nil }, b.spoolDir)
}

func (b *fetcherBackend) GoMod(ctx context.Context, path, version string) ([]byte, error) {
	a, err := b.f.Small(ctx, proxy.Request{Module: path, Version: version, Kind: proxy.KindMod})
	if err != nil {
		return nil, err
	}
	return a.Data, nil
}

func (b *fetcherBackend) Latest(ctx context.Context, path string) (string, error) {
	a, err := b.f.Mutable(ctx, proxy.Request{Module: path, Kind: proxy.KindLatest})
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
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, p, nil)
	if err != nil {
		return nil, err
	}
	w := &memResponse{header: http.Header{}}
	b.sumdb.ServeHTTP(w, req)
	if w.overflow {
		return nil, fmt.Errorf("%s: answer larger than %d bytes", p, maxSmall)
	}
	if w.code != http.StatusOK {
		line, _, _ := strings.Cut(strings.TrimSpace(w.body.String()), "\n")
		return nil, fmt.Errorf("%s: %d %s", p, w.code, line)
	}
	return w.body.Bytes(), nil
}

// maxSmall bounds the size of a go.mod, .info or checksum-database answer.
const maxSmall = 64 << 20

// memResponse collects the answer of an in-process handler: the
// checksum-database endpoints answer small files in one piece.
type memResponse struct {
	header   http.Header
	code     int
	body     bytes.Buffer
	overflow bool
}

func (w *memResponse) Header() http.Header { return w.header }

func (w *memResponse) WriteHeader(code int) {
	if w.code == 0 {
		w.code = code
	}
}

func (w *memResponse) Write(p []byte) (int, error) {
	w.WriteHeader(http.StatusOK)
	if w.body.Len()+len(p) > maxSmall {
		w.overflow = true
		return 0, errors.New("answer too large")
	}
	return w.body.Write(p)
}

// httpBackend drives a running modproxy through its HTTP API, so that the
// server's own pipeline fetches, verifies and stores.
type httpBackend struct {
	base     string // server base URL without a trailing slash
	client   *http.Client
	spoolDir string
}

// NewHTTPBackend returns a Backend that fills the store of the
// modproxy serving serverURL by requesting every artifact from it with
// client (share one client across the run so that connections are reused;
// its transport should allow a long wait for response headers, since the
// server may be fetching a large zip). Zips whose hash is needed are spooled
// in spoolDir ("": the system temporary directory).
func NewHTTPBackend(client *http.Client, serverURL, spoolDir string) Backend {
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
	// Answered once stored: the store is full when prewarm exits.
	req.Header.Set(proxy.HeaderWantStored, "1")
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
	data, err := io.ReadAll(io.LimitReader(resp.Body, maxSmall+1))
	if err != nil {
		return nil, fmt.Errorf("GET %s: %w", p, err)
	}
	if len(data) > maxSmall {
		return nil, fmt.Errorf("GET %s: answer larger than %d bytes", p, maxSmall)
	}
	return data, nil
}

// checkedURLPath returns req's protocol path with a leading slash. Unlike
// ParsePath's requests, prewarm's come from go.mod and go.sum files, so
// their path and version are checked here.
func checkedURLPath(req proxy.Request) (string, error) {
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

func (b *httpBackend) Fetch(ctx context.Context, k cache.Key, needHash bool) (Artifact, error) {
	p, err := checkedURLPath(proxy.Request{Module: k.Path, Version: k.Version, Kind: proxy.Kind(k.Kind)})
	if err != nil {
		return Artifact{}, err
	}
	resp, err := b.get(ctx, p)
	if err != nil {
		return Artifact{}, err
	}
	defer resp.Body.Close()
	res := Artifact{Cached: resp.Header.Get("X-Modproxy-Cache") == "hit"}
	switch {
	case k.Kind == cache.KindMod:
		data, err := io.ReadAll(resp.Body)
		if err != nil {
			return Artifact{}, fmt.Errorf("GET %s: %w", p, err)
		}
		res.Size = int64(len(data))
		if res.Hash, err = sumdb.HashMod(data); err != nil {
			return Artifact{}, fmt.Errorf("hash %s: %w", k, err)
		}
	case k.Kind == cache.KindZip && needHash:
		cr := &countingReader{r: resp.Body}
		if res.Hash, err = gate.HashZip(k, func() (io.ReadCloser, error) { return io.NopCloser(cr), nil }, b.spoolDir); err != nil {
			return Artifact{}, fmt.Errorf("GET %s: %w", p, err)
		}
		res.Size = cr.n
	default:
		n, err := io.Copy(io.Discard, resp.Body)
		if err != nil {
			return Artifact{}, fmt.Errorf("GET %s: %w", p, err)
		}
		res.Size = n
	}
	return res, nil
}

func (b *httpBackend) GoMod(ctx context.Context, path, version string) ([]byte, error) {
	p, err := checkedURLPath(proxy.Request{Module: path, Version: version, Kind: proxy.KindMod})
	if err != nil {
		return nil, err
	}
	return b.getSmall(ctx, p)
}

func (b *httpBackend) Latest(ctx context.Context, path string) (string, error) {
	p, err := checkedURLPath(proxy.Request{Module: path, Kind: proxy.KindLatest})
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
