package sumdb

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"strings"
	"time"

	"golang.org/x/mod/module"
	"golang.org/x/mod/sumdb/note"
	"golang.org/x/mod/sumdb/tlog"

	"github.com/modproxy/modproxy/cache"
)

// Handler serves the checksum database to the go command under the proxy's
// /sumdb/<name>/ URL space (the full request path, for example
// /sumdb/sum.example.test/lookup/example.com/m@v1.0.0):
//
//   - supported: 200, so the go command uses the proxy for the database.
//   - lookup/<path>@<version>: the record, authenticated by the Verifier's
//     client before it is stored and served; paths matching the private
//     patterns are refused with 404 and never sent to the database.
//   - tile/…: from the store (tiles the Verifier authenticated, or that the
//     handler passed through before; a partial tile may be cut from the
//     stored full tile), else fetched remotely and stored. Tile content is
//     fixed by its path, so stored tiles never expire.
//   - latest: the database's latest signed tree head (its signature checked),
//     stored and served for LatestTTL, then asked for again; served from the
//     store when the database cannot be reached or the Verifier is Offline.
//
// Other database names answer 404.
func (v *Verifier) Handler() http.Handler { return http.HandlerFunc(v.serveHTTP) }

func (v *Verifier) serveHTTP(w http.ResponseWriter, r *http.Request) {
	prefix := "/sumdb/" + v.name + "/"
	rest, ok := strings.CutPrefix(r.URL.Path, prefix)
	if !ok {
		v.notFound(w, "other", fmt.Sprintf("not found: this proxy serves only the checksum database %s", v.name))
		return
	}
	if r.Method != http.MethodGet && r.Method != http.MethodHead {
		w.Header().Set("Allow", "GET, HEAD")
		http.Error(w, "method not allowed", http.StatusMethodNotAllowed)
		return
	}
	switch {
	case rest == "supported":
		v.metrics.requests.WithLabelValues("supported", "hit").Inc()
		w.WriteHeader(http.StatusOK)
	case rest == "latest":
		v.serveLatest(w)
	case strings.HasPrefix(rest, "lookup/"):
		v.serveLookup(w, r, strings.TrimPrefix(rest, "lookup/"))
	case strings.HasPrefix(rest, "tile/"):
		v.serveTile(w, r, rest)
	default:
		v.notFound(w, "other", "not found: unknown checksum database endpoint "+r.URL.Path)
	}
}

func (v *Verifier) notFound(w http.ResponseWriter, endpoint, msg string) {
	v.metrics.requests.WithLabelValues(endpoint, "not_found").Inc()
	http.Error(w, msg, http.StatusNotFound)
}

func (v *Verifier) fail(w http.ResponseWriter, endpoint string, code int, msg string) {
	v.metrics.requests.WithLabelValues(endpoint, "error").Inc()
	http.Error(w, msg, code)
}

func serve(w http.ResponseWriter, contentType string, data []byte) {
	w.Header().Set("Content-Type", contentType)
	w.Write(data)
}

func (v *Verifier) serveLookup(w http.ResponseWriter, r *http.Request, mod string) {
	const ep = "lookup"
	epath, evers, ok := strings.Cut(mod, "@")
	path, err1 := module.UnescapePath(epath)
	vers, err2 := module.UnescapeVersion(evers)
	if !ok || err1 != nil || err2 != nil || strings.Contains(evers, "/") {
		v.fail(w, ep, http.StatusBadRequest, "invalid module@version syntax: "+mod)
		return
	}
	// Normalize the escaping so the store key matches the client's.
	epath, _ = module.EscapePath(path)
	evers, _ = module.EscapeVersion(vers)
	mod = epath + "@" + evers
	if v.Exempt(path) {
		v.metrics.requests.WithLabelValues(ep, "private").Inc()
		http.Error(w, fmt.Sprintf("not found: %s is private (matches GOPRIVATE/GONOSUMDB); not looked up in checksum database %s", path, v.name), http.StatusNotFound)
		return
	}
	file := v.name + "/lookup/" + mod
	_, err := v.store.GetKV(bucketVerified, file)
	hit := err == nil
	// Look the record up through the client even when it is stored: the
	// client authenticates the stored record (a bad one is dropped and
	// fetched again) or fetches, authenticates and stores it.
	if _, err := v.clientLookup(r.Context(), path, vers); err != nil {
		switch {
		case errors.Is(err, ErrNotFound):
			v.notFound(w, ep, fmt.Sprintf("not found: %s@%s: %v", path, vers, oneLine(err)))
		case v.cfg.Offline && errors.Is(err, ErrUnavailable):
			v.notFound(w, ep, fmt.Sprintf("not found: %s@%s is not in the store and the proxy is offline", path, vers))
		case errors.Is(err, ErrSecurity):
			v.fail(w, ep, http.StatusBadGateway, fmt.Sprintf("checksum database %s: security error (misbehavior detected; see the proxy's log)", v.name))
		default:
			v.fail(w, ep, http.StatusBadGateway, fmt.Sprintf("%s@%s: %v", path, vers, oneLine(err)))
		}
		return
	}
	data, err := v.store.GetKV(bucketVerified, file)
	if err != nil {
		// The record was authenticated but could not be stored: fetch
		// it again, and serve it only once it authenticates again (the
		// source may answer differently this time).
		data, err = v.readRemoteChecked("/lookup/"+mod, func(ctx context.Context, base string, d []byte) error {
			aerr := v.authenticateRecord(ctx, base, d)
			if errors.Is(aerr, errBadData) {
				v.reportBadData(fmt.Sprintf("%s served lookup %s, which fails authentication: %v", v.upstreamOf(base), mod, aerr))
			}
			return aerr
		})
		if err != nil {
			v.fail(w, ep, http.StatusBadGateway, oneLine(err))
			return
		}
	}
	cacheLabel := "miss"
	if hit {
		cacheLabel = "hit"
	}
	v.metrics.requests.WithLabelValues(ep, cacheLabel).Inc()
	serve(w, "text/plain; charset=UTF-8", data)
}

func (v *Verifier) serveTile(w http.ResponseWriter, r *http.Request, rest string) {
	const ep = "tile"
	t, err := tlog.ParseTilePath(rest)
	if err != nil {
		v.fail(w, ep, http.StatusBadRequest, "invalid tile syntax: "+rest)
		return
	}
	if t.H > maxTileHeight {
		v.fail(w, ep, http.StatusBadRequest, fmt.Sprintf("invalid tile %s: height %d, this proxy serves heights up to %d", rest, t.H, maxTileHeight))
		return
	}
	contentType := "application/octet-stream"
	if t.L < 0 {
		contentType = "text/plain; charset=UTF-8"
	}
	ctx := r.Context()
	file := v.name + "/" + t.Path()
	// Each stored copy that fails authentication is dropped, and the next
	// one tried; a bounded loop, since each pass removes an entry.
	for range 4 {
		data, src, ok := v.storedTile(t)
		if !ok {
			break
		}
		// A tile authenticated before with these bytes is not proven
		// again: this is the hot path of serving tiles.
		var err error
		if !v.authed.known(file, data) {
			err = v.authenticateTile(ctx, t, data, "")
		}
		if err == nil {
			if src.bucket != bucketVerified || src.key != file {
				v.storeVerified(file, data)
			}
			v.metrics.requests.WithLabelValues(ep, "hit").Inc()
			serve(w, contentType, data)
			return
		}
		if !errors.Is(err, errBadData) {
			// The store holds the tile but not what proves it: ask the
			// database, as for a tile not stored.
			v.log.Debug("stored checksum database tile cannot be authenticated from the store", "tile", rest, "err", err)
			break
		}
		v.reportBadData(fmt.Sprintf("stored %s (%s) fails authentication, dropped it: %v", src.key, src.bucket, err))
		if derr := v.store.DeleteKV(src.bucket, src.key); derr != nil {
			v.log.Warn("cannot drop checksum database tile that fails authentication", "tile", src.key, "err", derr)
			break
		}
	}
	if v.cfg.Offline {
		v.notFound(w, ep, fmt.Sprintf("not found: tile %s of %s is not in the store (with what authenticates it) and the proxy is offline", rest, v.name))
		return
	}
	data, err := v.readRemoteChecked("/"+rest, func(rctx context.Context, base string, d []byte) error {
		// Proofs stop with the remote read or with the client's request.
		rctx, cancel := context.WithCancel(rctx)
		defer cancel()
		stop := context.AfterFunc(ctx, cancel)
		defer stop()
		aerr := v.authenticateTile(rctx, t, d, base)
		if errors.Is(aerr, errBadData) {
			v.reportBadData(fmt.Sprintf("%s served tile %s, which fails authentication: %v", v.upstreamOf(base), rest, aerr))
		}
		return aerr
	})
	if err != nil {
		switch {
		case isNotFound(err):
			v.notFound(w, ep, oneLine(err))
		case errors.Is(err, errBadData) && !errors.Is(err, ErrUnavailable):
			v.fail(w, ep, http.StatusBadGateway, fmt.Sprintf("checksum database %s: security error: tile %s from every source fails authentication against the signed tree head (see the proxy's log)", v.name, rest))
		default:
			v.fail(w, ep, http.StatusBadGateway, oneLine(err))
		}
		return
	}
	v.storeVerified(file, data)
	v.metrics.requests.WithLabelValues(ep, "miss").Inc()
	serve(w, contentType, data)
}

// tileSource names the store entry a stored tile was read from.
type tileSource struct{ bucket, key string }

// storedTile returns tile t from the store, unauthenticated: the tile
// itself, or for a partial hash tile the prefix of the stored full tile or
// of a wider verified partial tile, looking first at verified tiles and
// then at passed-through ones (which older versions stored, and bundles
// may bring). Callers authenticate it (authenticateTile) before use.
func (v *Verifier) storedTile(t tlog.Tile) ([]byte, tileSource, bool) {
	full := t
	full.W = 1 << uint(t.H)
	for _, bucket := range []string{bucketVerified, bucketUnverified} {
		key := v.name + "/" + t.Path()
		if data, err := v.store.GetKV(bucket, key); err == nil {
			return data, tileSource{bucket, key}, true
		}
		if t.L >= 0 && t != full {
			key := v.name + "/" + full.Path()
			if data, err := v.store.GetKV(bucket, key); err == nil && len(data) == full.W*tlog.HashSize {
				return data[:t.W*tlog.HashSize], tileSource{bucket, key}, true
			}
			if bucket != bucketVerified {
				continue
			}
			wider := t
			if wider.W = v.widestPartialTile(t); wider.W > t.W {
				key := v.name + "/" + wider.Path()
				if data, err := v.store.GetKV(bucket, key); err == nil && len(data) == wider.W*tlog.HashSize {
					return data[:t.W*tlog.HashSize], tileSource{bucket, key}, true
				}
			}
		}
	}
	return nil, tileSource{}, false
}

// servedLatestKey is the store entry for the tree head served at /latest.
func (v *Verifier) servedLatestKey() string { return "sumdb/" + v.name + "/served-latest" }

func (v *Verifier) serveLatest(w http.ResponseWriter) {
	const ep = "latest"
	stored, have := v.storedHead(v.servedLatestKey())
	if have && (v.cfg.Offline || time.Since(stored.Fetched) < v.cfg.LatestTTL) {
		v.metrics.requests.WithLabelValues(ep, "hit").Inc()
		serve(w, "text/plain; charset=UTF-8", stored.Value)
		return
	}
	var remoteErr error
	if !v.cfg.Offline {
		data, err := v.readRemoteChecked("/latest", func(_ context.Context, base string, d []byte) error {
			if _, err := note.Open(d, v.note); err != nil {
				v.reportBadData(fmt.Sprintf("%s served a /latest that is not a tree head signed by %s: %v", v.upstreamOf(base), v.name, err))
				return fmt.Errorf("%w: %s/latest is not a tree head signed by %s: %v", errBadData, v.upstreamOf(base), v.name, err)
			}
			return nil
		})
		if err == nil {
			if err := v.store.PutEntry(v.servedLatestKey(), data); err != nil {
				v.log.Warn("cannot store checksum database latest tree head", "err", err)
			}
			v.metrics.requests.WithLabelValues(ep, "miss").Inc()
			serve(w, "text/plain; charset=UTF-8", data)
			return
		}
		remoteErr = err
	}
	// Stale: the last served head, or else the one the Verifier trusts.
	if !have {
		stored, have = v.storedHead(latestKey(v.name + "/latest"))
	}
	if have {
		v.metrics.requests.WithLabelValues(ep, "stale").Inc()
		w.Header().Set("Warning", `110 - "stale: checksum database unreachable"`)
		serve(w, "text/plain; charset=UTF-8", stored.Value)
		return
	}
	if remoteErr == nil {
		v.notFound(w, ep, fmt.Sprintf("not found: no tree head of %s in the store and the proxy is offline", v.name))
		return
	}
	v.fail(w, ep, http.StatusBadGateway, oneLine(remoteErr))
}

// storedHead returns the tree head stored at key if its signature checks;
// one that does not is reported and treated as absent, never served.
func (v *Verifier) storedHead(key string) (cache.Entry, bool) {
	e, err := v.store.GetEntry(key)
	if err != nil {
		if !errors.Is(err, cache.ErrNotFound) {
			v.log.Warn("cannot read checksum database tree head from store", "key", key, "err", err)
		}
		return cache.Entry{}, false
	}
	if len(e.Value) == 0 {
		return cache.Entry{}, false
	}
	if _, err := note.Open(e.Value, v.note); err != nil {
		v.reportBadData(fmt.Sprintf("stored tree head %s is not signed by %s: %v", key, v.name, err))
		return cache.Entry{}, false
	}
	return e, true
}
