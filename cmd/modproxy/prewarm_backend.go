package main

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"strings"
	"time"

	"golang.org/x/mod/module"
	"golang.org/x/mod/semver"
	"golang.org/x/mod/sumdb/dirhash"

	"github.com/modproxy/modproxy/bundle"
	"github.com/modproxy/modproxy/cache"
	"github.com/modproxy/modproxy/proxy"
)

// fetchResult is one artifact made present in the store.
type fetchResult struct {
	size   int64
	hash   string // "h1:" hash of a .mod or .zip, when known
	cached bool   // it was already stored
}

// prewarmBackend is where the pipeline runs: in this process on a store
// file (dbBackend) or in a running modproxy through HTTP (serverBackend).
type prewarmBackend interface {
	// fetch makes artifact k present in the store. For a .mod it returns
	// its hash; for a .zip when needHash is set.
	fetch(ctx context.Context, k cache.Key, needHash bool) (fetchResult, error)
	// GoMod and Latest make the backend a modgraph.Source.
	GoMod(ctx context.Context, path, version string) ([]byte, error)
	Latest(ctx context.Context, path string) (string, error)
	// sumdbGet reads a file of the checksum database's /sumdb/<name>/
	// endpoint ("lookup/…", "tile/…") so that its handler stores it.
	sumdbGet(ctx context.Context, rel string) ([]byte, error)
}

// dbBackend drives a proxy.Fetcher over a store file in this process: the
// same fetch–verify–store pipeline as "modproxy serve".
type dbBackend struct {
	store    *cache.Store
	fetcher  *proxy.Fetcher
	sumdb    http.Handler // nil when checksum verification is off
	sumdbPfx string       // "/sumdb/<name>/"
	tempDir  string
}

func (b *dbBackend) fetch(ctx context.Context, k cache.Key, needHash bool) (fetchResult, error) {
	if m, err := b.store.Stat(k); err == nil {
		res := fetchResult{size: m.Size, hash: m.Hash, cached: true}
		if res.hash == "" && (k.Kind == cache.KindMod || k.Kind == cache.KindZip && needHash) {
			if res.hash, err = b.storedHash(k); err != nil {
				return fetchResult{}, err
			}
		}
		return res, nil
	} else if !errors.Is(err, cache.ErrNotFound) {
		return fetchResult{}, fmt.Errorf("stat %s: %w", k, err)
	}
	req := proxy.Request{Module: k.Path, Version: k.Version, Kind: proxy.Kind(k.Kind)}
	var m cache.Meta
	switch k.Kind {
	case cache.KindZip:
		z, err := b.fetcher.Zip(ctx, req, false)
		if err != nil {
			return fetchResult{}, err
		}
		if z.Reader != nil {
			m = z.Reader.Meta()
		}
		z.Close()
		if z.Reader == nil {
			// Cannot happen with stream=false; read the record instead.
			if m, err = b.store.Stat(k); err != nil {
				return fetchResult{}, fmt.Errorf("stat %s after fetch: %w", k, err)
			}
		}
	default:
		a, err := b.fetcher.Small(ctx, req)
		if err != nil {
			return fetchResult{}, err
		}
		m = a.Meta
		if k.Kind == cache.KindMod && m.Hash == "" {
			h, err := bundle.HashMod(a.Data)
			if err != nil {
				return fetchResult{}, fmt.Errorf("hash %s: %w", k, err)
			}
			m.Hash = h
		}
	}
	res := fetchResult{size: m.Size, hash: m.Hash}
	if res.hash == "" && k.Kind == cache.KindZip && needHash {
		var err error
		if res.hash, err = b.storedHash(k); err != nil {
			return fetchResult{}, err
		}
	}
	return res, nil
}

// storedHash computes the "h1:" hash of a stored .mod or .zip that was
// stored without one (exempt from the checksum database, or sumdb off).
func (b *dbBackend) storedHash(k cache.Key) (string, error) {
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
		return bundle.HashMod(data)
	}
	return hashZipFrom(r, b.tempDir)
}

// hashZipFrom spools a zip to a temporary file and returns its "h1:" hash.
func hashZipFrom(r io.Reader, tempDir string) (string, error) {
	f, err := os.CreateTemp(tempDir, "modproxy-prewarm-*.zip")
	if err != nil {
		return "", fmt.Errorf("spool zip: %w", err)
	}
	defer func() {
		f.Close()
		os.Remove(f.Name())
	}()
	if _, err := io.Copy(f, r); err != nil {
		return "", fmt.Errorf("spool zip: %w", err)
	}
	h, err := dirhash.HashZip(f.Name(), dirhash.Hash1)
	if err != nil {
		return "", fmt.Errorf("hash zip: %w", err)
	}
	return h, nil
}

func (b *dbBackend) GoMod(ctx context.Context, path, version string) ([]byte, error) {
	a, err := b.fetcher.Small(ctx, proxy.Request{Module: path, Version: version, Kind: proxy.KindMod})
	if err != nil {
		return nil, err
	}
	return a.Data, nil
}

func (b *dbBackend) Latest(ctx context.Context, path string) (string, error) {
	a, err := b.fetcher.Mutable(ctx, proxy.Request{Module: path, Kind: proxy.KindLatest})
	if err != nil {
		return "", err
	}
	return infoVersion(path, a.Data)
}

func (b *dbBackend) sumdbGet(ctx context.Context, rel string) ([]byte, error) {
	if b.sumdb == nil {
		return nil, errors.New("checksum database verification is off")
	}
	req := httptest.NewRequestWithContext(ctx, http.MethodGet, b.sumdbPfx+rel, nil)
	rec := httptest.NewRecorder()
	b.sumdb.ServeHTTP(rec, req)
	if rec.Code != http.StatusOK {
		line, _, _ := strings.Cut(strings.TrimSpace(rec.Body.String()), "\n")
		return nil, fmt.Errorf("%s%s: %d %s", b.sumdbPfx, rel, rec.Code, line)
	}
	return rec.Body.Bytes(), nil
}

// infoVersion returns the version named by an .info or @latest answer.
func infoVersion(path string, data []byte) (string, error) {
	var info struct{ Version string }
	if err := json.Unmarshal(data, &info); err != nil {
		return "", fmt.Errorf("%s@latest: invalid answer: %w", path, err)
	}
	if !semver.IsValid(info.Version) {
		return "", fmt.Errorf("%s@latest: invalid version %q", path, info.Version)
	}
	return info.Version, nil
}

// serverBackend drives a running modproxy through its HTTP API, so that the
// server's own pipeline fetches, verifies and stores.
type serverBackend struct {
	base     string // server base URL without a trailing slash
	client   *http.Client
	sumdbPfx string // "/sumdb/<name>/"
	tempDir  string
}

// newPrewarmClient returns the one client every request of a prewarm run
// shares, so that connections are reused across workers.
func newPrewarmClient(jobs int) *http.Client {
	t := http.DefaultTransport.(*http.Transport).Clone()
	t.MaxIdleConns = 2 * jobs
	t.MaxIdleConnsPerHost = 2 * jobs
	t.ResponseHeaderTimeout = 5 * time.Minute // the server may be fetching a large zip
	return &http.Client{Transport: t}
}

// get GETs p (escaped, with a leading slash) and returns the response when it is 200.
func (b *serverBackend) get(ctx context.Context, p string) (*http.Response, error) {
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

func (b *serverBackend) getSmall(ctx context.Context, p string) ([]byte, error) {
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

func artifactURLPath(path, version string, kind cache.Kind) (string, error) {
	epath, err := module.EscapePath(path)
	if err != nil {
		return "", err
	}
	evers, err := module.EscapeVersion(version)
	if err != nil {
		return "", err
	}
	return "/" + epath + "/@v/" + evers + "." + string(kind), nil
}

func (b *serverBackend) fetch(ctx context.Context, k cache.Key, needHash bool) (fetchResult, error) {
	p, err := artifactURLPath(k.Path, k.Version, k.Kind)
	if err != nil {
		return fetchResult{}, err
	}
	resp, err := b.get(ctx, p)
	if err != nil {
		return fetchResult{}, err
	}
	defer resp.Body.Close()
	res := fetchResult{cached: resp.Header.Get("X-Modproxy-Cache") == "hit"}
	switch {
	case k.Kind == cache.KindMod:
		data, err := io.ReadAll(resp.Body)
		if err != nil {
			return fetchResult{}, fmt.Errorf("GET %s: %w", p, err)
		}
		res.size = int64(len(data))
		if res.hash, err = bundle.HashMod(data); err != nil {
			return fetchResult{}, fmt.Errorf("hash %s: %w", k, err)
		}
	case k.Kind == cache.KindZip && needHash:
		cr := &countingReader{r: resp.Body}
		if res.hash, err = hashZipFrom(cr, b.tempDir); err != nil {
			return fetchResult{}, fmt.Errorf("GET %s: %w", p, err)
		}
		res.size = cr.n
	default:
		n, err := io.Copy(io.Discard, resp.Body)
		if err != nil {
			return fetchResult{}, fmt.Errorf("GET %s: %w", p, err)
		}
		res.size = n
	}
	return res, nil
}

type countingReader struct {
	r io.Reader
	n int64
}

func (c *countingReader) Read(p []byte) (int, error) {
	n, err := c.r.Read(p)
	c.n += int64(n)
	return n, err
}

func (b *serverBackend) GoMod(ctx context.Context, path, version string) ([]byte, error) {
	p, err := artifactURLPath(path, version, cache.KindMod)
	if err != nil {
		return nil, err
	}
	return b.getSmall(ctx, p)
}

func (b *serverBackend) Latest(ctx context.Context, path string) (string, error) {
	epath, err := module.EscapePath(path)
	if err != nil {
		return "", err
	}
	data, err := b.getSmall(ctx, "/"+epath+"/@latest")
	if err != nil {
		return "", err
	}
	return infoVersion(path, data)
}

func (b *serverBackend) sumdbGet(ctx context.Context, rel string) ([]byte, error) {
	if b.sumdbPfx == "" {
		return nil, errors.New("checksum database verification is off")
	}
	data, err := b.getSmall(ctx, b.sumdbPfx+rel)
	if err != nil {
		return nil, err
	}
	return bytes.Clone(data), nil
}
