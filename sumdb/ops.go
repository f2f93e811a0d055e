package sumdb

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	xsumdb "golang.org/x/mod/sumdb"
	"golang.org/x/mod/sumdb/tlog"

	"github.com/modproxy/modproxy/cache"
	"github.com/modproxy/modproxy/fallback"
)

// configMu serializes notePartialTile's read-modify-write within a
// process. Across replicas sharing a store the index is only a hint (a
// narrower width loses nothing but a cut), unlike the tree head, which
// WriteConfig swaps atomically in the store.
var configMu sync.Mutex

// opsMode is how a clientOps reads: the Verifier's long-lived client uses
// the store and the network; when a lookup on it fails, clients of their
// own find out why (see Verifier.recoverLookup).
type opsMode int

const (
	// modeShared reads the store, then the network.
	modeShared opsMode = iota
	// modeFresh reads nothing from the store but the trusted tree head and
	// the tiles this process authenticated (see authMemo),
	// accepts a remote tile or record only once it is authenticated
	// (falling through to the next source otherwise) and replaces stored
	// data that differs from what it authenticated.
	modeFresh
	// modeCacheOnly reads only the store.
	modeCacheOnly
)

// clientOps implements xsumdb.ClientOps over a Verifier's store and
// remotes, and accounts for its reads: the x/mod client flattens errors to
// text, so these flags are how a failed lookup is classified (never from
// the error text, which can quote data a source chose).
type clientOps struct {
	v    *Verifier
	mode opsMode

	remoteFailed atomic.Bool // a remote read failed (not 404/410, not bad data)
	remoteWanted atomic.Bool // modeCacheOnly: the store lacked something
	badData      atomic.Bool // a source answered with data that fails authentication
	notFound     sync.Map    // remote paths answered 404 or 410
	tree         atomic.Pointer[tlog.Tree]
}

var _ xsumdb.ClientOps = (*clientOps)(nil)

// latestKey is the store's mutable entry for a configuration file
// ("<name>/latest" → "sumdb/<name>/latest").
func latestKey(file string) string { return "sumdb/" + file }

func (o *clientOps) ReadConfig(file string) ([]byte, error) {
	v := o.v
	switch file {
	case "key":
		return []byte(v.cfg.VerifierKey), nil
	case v.name + "/latest":
		e, err := v.store.GetEntry(latestKey(file))
		if errors.Is(err, cache.ErrNotFound) {
			return []byte{}, nil // start from the empty tree
		}
		if err != nil {
			return nil, fmt.Errorf("reading %s from store: %w", file, err)
		}
		return e.Value, nil
	}
	return nil, fmt.Errorf("unknown checksum database config file %q", file)
}

func (o *clientOps) WriteConfig(file string, old, new []byte) error {
	v := o.v
	if file != v.name+"/latest" {
		return fmt.Errorf("cannot write checksum database config file %q", file)
	}
	// A compare-and-swap in the store, not a lock here: replicas sharing
	// one store race for the tree head, and the x/mod client only moves it
	// forward from what it read (old), so a lost swap is a write conflict
	// it resolves by reading the newer head and checking consistency.
	swapped, err := v.store.SwapEntry(latestKey(file), old, new)
	if err != nil {
		return fmt.Errorf("writing %s to store: %w", file, err)
	}
	if !swapped {
		return xsumdb.ErrWriteConflict
	}
	return nil
}

func (o *clientOps) ReadCache(file string) ([]byte, error) {
	data, err := o.v.store.GetKV(bucketVerified, file)
	// A fresh client trusts only what this process authenticated, such as
	// the proof tiles it just fetched to authenticate a remote tile;
	// everything else it reads from the network.
	if o.mode == modeFresh && err == nil && !o.v.authed.known(file, data) {
		return nil, fmt.Errorf("%s: not authenticated in this process, not read from the store: %w", file, cache.ErrNotFound)
	}
	return data, err
}

// WriteCache stores what the x/mod client authenticated.
func (o *clientOps) WriteCache(file string, data []byte) { o.v.storeVerified(file, data) }

// partialKey is the store entry recording the widest verified partial tile
// stored for the position of t, so that the handler can cut narrower
// partial tiles (of older trees) from it.
func (v *Verifier) partialKey(t tlog.Tile) string {
	return fmt.Sprintf("sumdb/%s/partial/%d/%d/%d", v.name, t.H, t.L, t.N)
}

// notePartialTile records t as stored if it is wider than the recorded one.
func (v *Verifier) notePartialTile(t tlog.Tile) {
	configMu.Lock()
	defer configMu.Unlock()
	key := v.partialKey(t)
	if e, err := v.store.GetEntry(key); err == nil {
		if w, err := strconv.Atoi(string(e.Value)); err == nil && w >= t.W {
			return
		}
	}
	if err := v.store.PutEntry(key, []byte(strconv.Itoa(t.W))); err != nil {
		v.log.Warn("cannot store checksum database tile index", "tile", t.Path(), "err", err)
	}
}

// widestPartialTile returns the width of the widest verified partial tile
// stored at t's position, or 0.
func (v *Verifier) widestPartialTile(t tlog.Tile) int {
	e, err := v.store.GetEntry(v.partialKey(t))
	if err != nil {
		return 0
	}
	w, _ := strconv.Atoi(string(e.Value))
	return w
}

func (o *clientOps) Log(msg string) { o.v.log.Debug(msg) }

func (o *clientOps) SecurityError(msg string) { o.v.reportSecurity(msg) }

func (o *clientOps) ReadRemote(path string) ([]byte, error) {
	v := o.v
	if o.mode == modeCacheOnly {
		o.remoteWanted.Store(true)
		return nil, fmt.Errorf("%w: %s%s is not in the store", ErrUnavailable, v.name, path)
	}
	var data []byte
	var err error
	t, terr := tlog.ParseTilePath(strings.TrimPrefix(path, "/"))
	switch {
	case o.mode != modeFresh:
		data, err = v.readRemote(path)
	case terr == nil:
		data, err = v.readRemoteChecked(path, o.rejecting(path, func(ctx context.Context, base string, d []byte) error {
			return v.authenticateTile(ctx, t, d, base, o.trees()...)
		}))
	case strings.HasPrefix(path, "/lookup/"):
		data, err = v.readRemoteChecked(path, o.rejecting(path, v.authenticateRecord))
	default:
		data, err = v.readRemote(path)
	}
	switch {
	case err == nil:
		if o.mode == modeFresh && strings.HasPrefix(path, "/lookup/") {
			o.noteRecordTree(data)
		}
	case isNotFound(err):
		o.notFound.Store(path, true)
	case errors.Is(err, errBadData) && !errors.Is(err, ErrUnavailable):
		o.badData.Store(true)
	default:
		o.remoteFailed.Store(true)
	}
	return data, err
}

// rejecting wraps an authentication of what a source answered for path:
// a failure is recorded and reported as a security event naming the
// source, and makes readRemoteChecked try the next source.
func (o *clientOps) rejecting(path string, check func(ctx context.Context, base string, data []byte) error) func(context.Context, string, []byte) error {
	return func(ctx context.Context, base string, data []byte) error {
		err := check(ctx, base, data)
		if errors.Is(err, errBadData) {
			o.badData.Store(true)
			o.v.reportBadData(fmt.Sprintf("%s answered %s with data that fails authentication: %v", o.v.upstreamOf(base), path, err))
		}
		return err
	}
}

// answeredNotFound reports whether a remote read of path answered 404 or
// 410.
func (o *clientOps) answeredNotFound(path string) bool {
	_, ok := o.notFound.Load(path)
	return ok
}

// noteRecordTree remembers the signed tree head in a lookup record, the
// tree the client will authenticate the record's tiles against before it
// stores that head.
func (o *clientOps) noteRecordTree(record []byte) {
	_, _, msg, err := tlog.ParseRecord(record)
	if err != nil {
		return
	}
	t, err := o.v.openTree(msg)
	if err != nil {
		return
	}
	for {
		cur := o.tree.Load()
		if cur != nil && cur.N >= t.N || o.tree.CompareAndSwap(cur, &t) {
			return
		}
	}
}

func (o *clientOps) trees() []tlog.Tree {
	if t := o.tree.Load(); t != nil {
		return []tlog.Tree{*t}
	}
	return nil
}

// maxRemoteBody bounds a remote answer (tiles are 8 KiB, records smaller).
const maxRemoteBody = 4 << 20

// httpError is a non-200 answer. Its text ends "<url>: <code> <reason>",
// which isRemoteNotFound relies on.
type httpError struct {
	URL    string
	Status int
	Body   string // first line of the body, if any
}

func (e *httpError) Error() string {
	s := fmt.Sprintf("GET %s: %d %s", e.URL, e.Status, http.StatusText(e.Status))
	if e.Body != "" {
		s += " (server says: " + e.Body + ")"
	}
	return s
}

func isNotFound(err error) bool {
	var he *httpError
	return errors.As(err, &he) && (he.Status == http.StatusNotFound || he.Status == http.StatusGone)
}

// readRemote fetches path ("/lookup/…", "/tile/…", "/latest") from the
// database, through the upstreams that pass it through or else directly,
// with the same fallback engine as module requests (package fallback): the
// passthrough bases are one '|' group (they serve the same database, so
// any failure of one goes on to the next), a 404 or 410 is final, an open
// circuit is skipped unless every base is open (then the healthiest is
// tried anyway), and with Config.Health a slow base is hedged to the next.
func (v *Verifier) readRemote(path string) ([]byte, error) {
	return v.readRemoteChecked(path, nil)
}

// readRemoteChecked is readRemote with accept, if set, judging each
// source's answer: a rejected answer counts as that source's failure, so
// the next source is tried. When every source was rejected for data that
// fails authentication, the error wraps errBadData and not ErrUnavailable.
func (v *Verifier) readRemoteChecked(path string, accept func(ctx context.Context, base string, data []byte) error) ([]byte, error) {
	if v.cfg.Offline {
		return nil, fmt.Errorf("%w: offline: %s%s is not in the store", ErrUnavailable, v.name, path)
	}
	bases, err := v.remoteBases()
	if err != nil {
		return nil, err
	}
	entries := make([]fallback.Entry, len(bases))
	byName := make(map[string]string, len(bases))
	for i, b := range bases {
		name := v.upstreamOf(b)
		byName[name] = b
		entries[i] = fallback.Entry{Name: name, AnyError: i < len(bases)-1}
	}
	cfg := fallback.Config{
		Hedge: true,
		Classify: func(err error) fallback.Class {
			if isNotFound(err) {
				return fallback.Final
			}
			return fallback.Failed
		},
	}
	if h := v.cfg.Health; h != nil {
		cfg.Health = engineHealth(h)
		// A half-open trial is a /latest read of its own, in the
		// background (bounded by Config.Timeout): no verification waits
		// on an upstream that was failing.
		cfg.Trial = func(e fallback.Entry) {
			go func() {
				if _, err := v.get(context.Background(), byName[e.Name]+"/latest"); err != nil {
					v.log.Info("checksum database half-open trial failed", "upstream", e.Name, "err", err)
				}
			}()
		}
	}
	data, res, errs := fallback.Run(context.Background(), cfg, entries, func(ctx context.Context, e fallback.Entry) ([]byte, error) {
		data, err := v.get(ctx, byName[e.Name]+path)
		if err == nil && accept != nil {
			err = accept(ctx, byName[e.Name], data)
		}
		return data, err
	})
	if res.Upstream != "" {
		return data, nil
	}
	for _, err := range errs {
		if isNotFound(err) {
			return nil, err
		}
	}
	// A source skipped by its open circuit said nothing: it neither makes
	// bad data "unavailable" (which fail-open would act on) nor excuses it.
	allBad, answered := true, 0
	for _, err := range errs {
		if errors.Is(err, fallback.ErrCircuitOpen) {
			continue
		}
		answered++
		allBad = allBad && errors.Is(err, errBadData)
	}
	allBad = allBad && answered > 0
	if allBad {
		return nil, fmt.Errorf("checksum database %s%s: no source answered with data that authenticates: %w", v.name, path, errors.Join(errs...))
	}
	return nil, fmt.Errorf("%w: %w", ErrUnavailable, errors.Join(errs...))
}

// engineHealth gives the fallback engine the whole health interface: a
// Health that also implements the breaker (netprobe's does) is used as it
// is; a hedging-only one allows every request.
func engineHealth(h Health) fallback.Health {
	if fh, ok := h.(fallback.Health); ok {
		return fh
	}
	return hedgeOnly{h}
}

type hedgeOnly struct{ Health }

func (hedgeOnly) Allow(string) (bool, string) { return true, "healthy" }
func (hedgeOnly) Score(string) float64        { return 1 }

// upstreamOf names the upstream (or the direct URL) behind a base URL.
func (v *Verifier) upstreamOf(base string) string {
	return strings.TrimSuffix(base, "/sumdb/"+v.name)
}

// get fetches url within the configured timeout.
func (v *Verifier) get(ctx context.Context, url string) ([]byte, error) {
	ctx, cancel := context.WithTimeout(ctx, v.cfg.Timeout)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		return nil, err
	}
	resp, err := v.http.Do(req)
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		b, _ := io.ReadAll(io.LimitReader(resp.Body, 512))
		line, _, _ := strings.Cut(strings.TrimSpace(string(b)), "\n")
		return nil, &httpError{URL: url, Status: resp.StatusCode, Body: line}
	}
	data, err := io.ReadAll(io.LimitReader(resp.Body, maxRemoteBody+1))
	if err != nil {
		return nil, fmt.Errorf("GET %s: reading body: %w", url, err)
	}
	if len(data) > maxRemoteBody {
		return nil, fmt.Errorf("GET %s: body larger than %d bytes", url, maxRemoteBody)
	}
	return data, nil
}

// probe is what is known about an upstream's passthrough of the database.
type probe struct {
	known     bool      // supported is final
	supported bool      // <upstream>/sumdb/<name>/supported answered 200
	failedAt  time.Time // last probe failed (neither 200 nor 404/410)
	err       error
	running   chan struct{} // non-nil while a probe is in flight; closed when it ends
}

// probeRetry is how long a failed probe is remembered before the upstream
// is asked again.
var probeRetry = 30 * time.Second

// remoteBases returns the base URLs to read the database from: the
// passthrough URLs of the upstreams that support it, or else the direct URL
// when every upstream declined (404/410) or there are none. An upstream
// that could not answer the probe makes the database unavailable unless
// another upstream supports it, as with the go command's "," lists.
//
// Probes run outside probeMu. A verification waits only for the first
// probe of an upstream (nothing is known about it yet); a retry after a
// failed probe runs in the background, so no verification queues behind a
// failing upstream's network round trip.
func (v *Verifier) remoteBases() ([]string, error) {
	if len(v.cfg.Upstreams) == 0 {
		return []string{v.cfg.URL}, nil
	}
	var wait []chan struct{}
	v.probeMu.Lock()
	for _, up := range v.cfg.Upstreams {
		p := v.probes[up]
		if p == nil {
			p = &probe{}
			v.probes[up] = p
		}
		first := p.failedAt.IsZero() // nothing is known yet
		switch {
		case p.running != nil && first:
			wait = append(wait, p.running)
		case p.running == nil && !p.known && (first || time.Since(p.failedAt) >= probeRetry):
			p.running = make(chan struct{})
			if first {
				wait = append(wait, p.running)
			}
			// A retry after a failure runs in the background: callers go
			// on with what is known rather than wait on a failing upstream.
			go v.probeUpstream(up, p)
		}
	}
	v.probeMu.Unlock()
	for _, ch := range wait {
		<-ch // each probe is bounded by Config.Timeout
	}
	v.probeMu.Lock()
	defer v.probeMu.Unlock()
	var bases []string
	var errs []error
	for _, up := range v.cfg.Upstreams {
		p := v.probes[up]
		switch {
		case p.known && p.supported:
			bases = append(bases, up+"/sumdb/"+v.name)
		case !p.known && p.err != nil:
			errs = append(errs, p.err)
		}
	}
	if len(bases) > 0 {
		return bases, nil
	}
	if len(errs) > 0 {
		return nil, fmt.Errorf("%w: no upstream passes %s through: %v", ErrUnavailable, v.name, errors.Join(errs...))
	}
	return []string{v.cfg.URL}, nil
}

// probeUpstream asks up whether it passes the database through and
// records the answer in p (under probeMu), ending p's run.
func (v *Verifier) probeUpstream(up string, p *probe) {
	_, err := v.get(context.Background(), up+"/sumdb/"+v.name+"/supported")
	v.probeMu.Lock()
	defer v.probeMu.Unlock()
	defer func() { close(p.running); p.running = nil }()
	switch {
	case err == nil:
		p.known, p.supported = true, true
	case isNotFound(err):
		p.known, p.supported = true, false
	default:
		p.failedAt, p.err = time.Now(), err
		return
	}
	v.log.Debug("probed checksum database passthrough", "upstream", up, "supported", p.supported)
}
