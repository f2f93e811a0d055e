// Package sumdb verifies module content against a Go checksum database
// (the "go.sum database" served as GOSUMDB) and serves that database to the
// go command through the proxy's /sumdb/<name>/ endpoints.
//
// A Verifier wraps golang.org/x/mod/sumdb's Client. All of the client's
// state lives in a Store: the verifier key comes from the configuration,
// the latest signed tree head is a mutable entry ("sumdb/<name>/latest"),
// and authenticated tiles and lookup records are immutable key/value pairs.
// Because the tree head persists, a restarted proxy keeps checking that the
// database only ever extends the history it saw before; a fork is reported
// as a security error (ErrSecurity), logged at Error level, counted in
// modproxy_sumdb_security_errors_total and makes every later verification
// fail.
//
// Verification fails closed: content that cannot be checked because the
// database is unreachable is refused with an error wrapping ErrUnavailable.
// Module paths matching the private patterns (GOPRIVATE, GONOSUMDB) are
// exempt and never sent to the database.
package sumdb

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/url"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"golang.org/x/mod/module"
	xsumdb "golang.org/x/mod/sumdb"
	"golang.org/x/mod/sumdb/dirhash"
	"golang.org/x/mod/sumdb/note"
	"golang.org/x/mod/sumdb/tlog"

	"github.com/modproxy/modproxy/cache"
	"github.com/modproxy/modproxy/internal/oneline"
)

// oneLine renders an error for a one-line answer body.
var oneLine = oneline.Of

// DefaultVerifierKey is the verifier key of the go command's default checksum
// database, the one it knows by name alone.
const DefaultVerifierKey = "sum.golang.org+033de0ae+Ac4zctda0e5eza+HJyk9SxEdh+s3Ux18htTTAD8OuAn8"

// knownAliases are GOSUMDB values the go command accepts as aliases:
// a name reachable at a different URL.
var knownAliases = map[string]string{
	"sum.golang.google.cn": "https://sum.golang.google.cn",
}

// knownKey returns the verifier key of a database known by name.
func knownKey(name string) string {
	if name == defaultName() {
		return DefaultVerifierKey
	}
	return ""
}

func defaultName() string {
	name, _, _ := strings.Cut(DefaultVerifierKey, "+")
	return name
}

var (
	// ErrSecurity is wrapped by every verification error after the checksum
	// database was caught misbehaving (for example serving a history that
	// forks from a signed tree head seen earlier). It is the same value as
	// golang.org/x/mod/sumdb.ErrSecurity.
	ErrSecurity = xsumdb.ErrSecurity
	// ErrUnavailable is wrapped when the checksum database cannot be reached
	// (or answers with an error), so content cannot be verified.
	ErrUnavailable = errors.New("checksum database unavailable")
	// ErrNotFound is wrapped when the checksum database has no record for a
	// module version (it answered 404 or 410, or its record lacks the hash).
	ErrNotFound = errors.New("not found in checksum database")
	// ErrExempt is wrapped when a module path matches the private or
	// no-sumdb patterns; such modules are never looked up.
	ErrExempt = errors.New("module is exempt from checksum database verification")
	// ErrMismatch is wrapped by *MismatchError.
	ErrMismatch = errors.New("checksum mismatch")
)

// MismatchError reports content whose hash disagrees with the checksum
// database.
type MismatchError struct {
	Path    string // module path
	Version string // module version
	Kind    string // "mod" or "zip"
	Want    string // hash recorded in the checksum database
	Got     string // hash of the content
}

func (e *MismatchError) Error() string {
	target := e.Path + "@" + e.Version
	if e.Kind == "mod" {
		target += "/go.mod"
	}
	return fmt.Sprintf("%s: checksum mismatch for %s: checksum database has %s, content has %s",
		target, e.Kind, e.Want, e.Got)
}

// Unwrap returns ErrMismatch.
func (e *MismatchError) Unwrap() error { return ErrMismatch }

// Config configures a Verifier.
type Config struct {
	// Name is the database name (for example the first element of
	// VerifierKey). It may be empty; it is then taken from VerifierKey.
	Name string
	// VerifierKey is the database's note verifier key. It may be empty for
	// the default database named in DefaultVerifierKey.
	VerifierKey string
	// URL is the database's direct base URL; default "https://<Name>".
	URL string
	// Upstreams are module proxy base URLs that may pass the database through
	// at <upstream>/sumdb/<name>/. Each is probed once with
	// <upstream>/sumdb/<name>/supported, like the go command does: the
	// proxies answering 200 are used (in order, falling through on errors);
	// if every upstream answers 404 or 410 the database is reached directly
	// at URL. An entry "direct" or "off" ends the list. Leave Upstreams
	// empty when GOSUMDB named an explicit URL, which bypasses proxies.
	Upstreams []string
	// Client sends remote requests; default a new http.Client.
	Client *http.Client
	// Timeout bounds each remote request; default 30s.
	Timeout time.Duration
	// Offline serves and verifies from the store only.
	Offline bool
	// Private and NoSumDB are comma-separated glob patterns
	// (module.MatchPrefixPatterns syntax, as GOPRIVATE and GONOSUMDB).
	Private, NoSumDB string
	// LatestTTL is how long the handler serves a stored /latest before
	// asking the database again; default 1m.
	LatestTTL time.Duration
	// Logger receives logs; default slog.Default().
	Logger *slog.Logger
	// Registerer registers the package's metrics; nil registers nothing.
	Registerer prometheus.Registerer
	// Health, if set, hedges slow database requests across passthrough
	// upstreams and counts those decisions, as module requests do.
	Health Health
}

// Health is the part of the proxy's upstream health tracking that database
// requests use; netprobe.Health implements it.
type Health interface {
	// HedgeAfter is how long to wait for upstream before also asking the
	// next one; ok is false when there is not enough data to decide.
	HedgeAfter(upstream string) (d time.Duration, ok bool)
	// RecordDecision counts one fallback decision.
	RecordDecision(upstream, decision, reason string)
}

// Store holds the verifier's state. *cache.Store implements it. Errors for
// missing keys wrap cache.ErrNotFound.
type Store interface {
	GetKV(bucket, key string) ([]byte, error)
	PutKV(bucket, key string, value []byte) error
	DeleteKV(bucket, key string) error
	GetEntry(key string) (cache.Entry, error)
	PutEntry(key string, value []byte) error
	// SwapEntry replaces key's value with new only if it is old (empty
	// old: only if absent), atomically, and reports whether it did.
	SwapEntry(key string, old, new []byte) (bool, error)
}

// Store buckets. Only data authenticated by the x/mod client goes into
// bucketVerified, which the client reads back as trusted; what the handler
// passes through unverified is kept apart so that a bad tile from one
// upstream cannot poison the verifier.
const (
	bucketVerified   = BucketVerified
	bucketUnverified = BucketUnverified
)

// The store buckets of the package's layout, for code that moves store
// content in bulk (bundles): BucketVerified holds records and tiles the
// client authenticated (and re-checks whenever it reads them);
// BucketUnverified holds tiles passed through unauthenticated.
const (
	BucketVerified   = "sumdb"
	BucketUnverified = "sumdb-unverified"
)

// ParseGOSUMDB parses a GOSUMDB value as the go command does: "off"; a
// known database name alone; a verifier key "<name>+<hash>+<key>"; or a
// verifier key (or known name) followed by the database's base URL. An
// empty value means the default database, as an empty GOSUMDB does for the
// go command: only an explicit "off" disables verification. It returns the
// database name, verifier key and base URL (default "https://<name>"), or
// off.
func ParseGOSUMDB(s string) (name, vkey, dbURL string, off bool, err error) {
	s = strings.TrimSpace(s)
	if s == "off" {
		return "", "", "", true, nil
	}
	if s == "" {
		s = DefaultVerifierKey
	}
	if u, ok := knownAliases[s]; ok {
		s = defaultName() + " " + u
	}
	f := strings.Fields(s)
	switch {
	case len(f) > 2:
		return "", "", "", false, fmt.Errorf("invalid GOSUMDB %q: too many fields", s)
	}
	vkey = f[0]
	if k := knownKey(vkey); k != "" {
		vkey = k
	} else if !strings.Contains(vkey, "+") {
		return "", "", "", false, fmt.Errorf("invalid GOSUMDB %q: unknown checksum database name %q (give its verifier key <name>+<hash>+<key>)", s, vkey)
	}
	v, err := note.NewVerifier(vkey)
	if err != nil {
		return "", "", "", false, fmt.Errorf("invalid GOSUMDB %q: %v", s, err)
	}
	name = v.Name()
	if err := checkName(name); err != nil {
		return "", "", "", false, fmt.Errorf("invalid GOSUMDB %q: %v", s, err)
	}
	dbURL = "https://" + name
	if len(f) == 2 {
		if dbURL, err = checkURL(f[1]); err != nil {
			return "", "", "", false, fmt.Errorf("invalid GOSUMDB %q: %v", s, err)
		}
	}
	return name, vkey, dbURL, false, nil
}

// checkName applies the go command's rule: a database name is host[/path]
// such that https://<name> is a plain URL.
func checkName(name string) error {
	u, err := url.Parse("https://" + name)
	if err != nil || strings.HasSuffix(name, "/") || u.Host == "" || u.RawPath != "" ||
		*u != (url.URL{Scheme: "https", Host: u.Host, Path: u.Path}) {
		return fmt.Errorf("invalid checksum database name %q (must be host[/path])", name)
	}
	return nil
}

// checkURL validates a base URL and returns it without a trailing slash.
func checkURL(s string) (string, error) {
	u, err := url.Parse(s)
	if err != nil {
		return "", fmt.Errorf("invalid URL %q: %v", s, err)
	}
	if (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
		return "", fmt.Errorf("invalid URL %q: want http:// or https:// and a host", s)
	}
	return strings.TrimSuffix(s, "/"), nil
}

// maxClientLookups bounds the lookups served by one x/mod client before it
// is replaced: the client keeps every record and tile it has seen in memory
// (and every error, forever), while the store keeps them durably.
var maxClientLookups = 2000

// Verifier checks module content against one checksum database. Its methods
// are safe for concurrent use.
type Verifier struct {
	cfg     Config
	name    string
	store   Store
	log     *slog.Logger
	http    *http.Client
	metrics *metrics
	note    note.Verifiers // for checking /latest before serving it

	mu      sync.Mutex
	client  *xsumdb.Client // current x/mod client; nil to make a new one
	ops     *clientOps     // client's
	lookups int            // lookups through client

	security atomic.Pointer[string] // first security error message

	authed authMemo // tiles authenticated in this process

	probeMu sync.Mutex
	probes  map[string]*probe // upstream → passthrough support
}

// New returns a Verifier for the database described by cfg whose state
// lives in store.
func New(cfg Config, store Store) (*Verifier, error) {
	if store == nil {
		return nil, errors.New("sumdb.New: nil store")
	}
	if cfg.VerifierKey == "" {
		name := cfg.Name
		if name == "" {
			name = defaultName()
		}
		if cfg.VerifierKey = knownKey(name); cfg.VerifierKey == "" {
			return nil, fmt.Errorf("sumdb.New: no verifier key for checksum database %q", name)
		}
	}
	nv, err := note.NewVerifier(cfg.VerifierKey)
	if err != nil {
		return nil, fmt.Errorf("sumdb.New: verifier key %q: %v", cfg.VerifierKey, err)
	}
	if cfg.Name == "" {
		cfg.Name = nv.Name()
	}
	if cfg.Name != nv.Name() {
		return nil, fmt.Errorf("sumdb.New: name %q does not match verifier key %q", cfg.Name, cfg.VerifierKey)
	}
	if err := checkName(cfg.Name); err != nil {
		return nil, fmt.Errorf("sumdb.New: %v", err)
	}
	if cfg.URL == "" {
		cfg.URL = "https://" + cfg.Name
	}
	if cfg.URL, err = checkURL(cfg.URL); err != nil {
		return nil, fmt.Errorf("sumdb.New: database %v", err)
	}
	var ups []string
	for _, u := range cfg.Upstreams {
		if u == "direct" || u == "off" {
			break
		}
		cu, err := checkURL(u)
		if err != nil {
			return nil, fmt.Errorf("sumdb.New: upstream %v", err)
		}
		ups = append(ups, cu)
	}
	cfg.Upstreams = ups
	if cfg.Client == nil {
		cfg.Client = &http.Client{}
	}
	if cfg.Timeout <= 0 {
		cfg.Timeout = 30 * time.Second
	}
	if cfg.LatestTTL <= 0 {
		cfg.LatestTTL = time.Minute
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	m, err := newMetrics(cfg.Registerer)
	if err != nil {
		return nil, fmt.Errorf("sumdb.New: %v", err)
	}
	// Export the zero, so that alerts on increase() see the series before
	// the first security error.
	m.security.WithLabelValues(cfg.Name)
	return &Verifier{
		cfg:     cfg,
		name:    cfg.Name,
		store:   store,
		log:     cfg.Logger.With("sumdb", cfg.Name),
		http:    cfg.Client,
		metrics: m,
		note:    note.VerifierList(nv),
		probes:  make(map[string]*probe),
	}, nil
}

// Name is the database name.
func (v *Verifier) Name() string { return v.name }

// Exempt reports whether path matches the Private or NoSumDB patterns (in
// any letter case, see MatchPatterns), so that it must not be looked up in
// the checksum database.
func (v *Verifier) Exempt(path string) bool {
	return MatchPatterns(v.cfg.Private, path) || MatchPatterns(v.cfg.NoSumDB, path)
}

// MatchPatterns reports whether path, or any case variant of it, matches
// the comma-separated glob patterns (GOPRIVATE / GONOSUMDB syntax, as
// module.MatchPrefixPatterns). Code hosts treat paths case-insensitively,
// so example.com/Private/x names the same repository as
// example.com/private/x: a case variant of a private path is private too,
// never sent to a public upstream or the checksum database.
func MatchPatterns(patterns, path string) bool {
	if patterns == "" {
		return false
	}
	// The exact match first: lower-casing a pattern can only make it match
	// more paths, except for a character range it turns invalid.
	return module.MatchPrefixPatterns(patterns, path) ||
		module.MatchPrefixPatterns(strings.ToLower(patterns), strings.ToLower(path))
}

// Lookup returns the hashes the checksum database records for path@version:
// of its go.mod file and of its zip file. zipHash is "" when the record has
// only a go.mod line. Errors wrap ErrExempt, ErrNotFound, ErrUnavailable or
// ErrSecurity.
func (v *Verifier) Lookup(ctx context.Context, path, version string) (modHash, zipHash string, err error) {
	if v.Exempt(path) {
		return "", "", fmt.Errorf("%s@%s: %w", path, version, ErrExempt)
	}
	modHash, err = v.lookupHash(ctx, path, version+"/go.mod")
	if err != nil {
		return "", "", err
	}
	zipHash, err = v.lookupHash(ctx, path, version)
	if err != nil && !errors.Is(err, ErrNotFound) {
		return "", "", err
	}
	return modHash, zipHash, nil
}

// VerifyMod checks the go.mod file content data of path@version against the
// checksum database and returns its "h1:" hash. A disagreement is a
// *MismatchError.
func (v *Verifier) VerifyMod(ctx context.Context, path, version string, data []byte) (string, error) {
	return v.verify(ctx, "mod", path, version, func() (string, error) {
		return HashMod(data)
	})
}

// VerifyZip checks the module zip file zipFile of path@version against the
// checksum database and returns its "h1:" hash. A disagreement is a
// *MismatchError.
func (v *Verifier) VerifyZip(ctx context.Context, path, version, zipFile string) (string, error) {
	return v.verify(ctx, "zip", path, version, func() (string, error) {
		return dirhash.HashZip(zipFile, dirhash.Hash1)
	})
}

// VerifyHash checks hash, the "h1:" hash of path@version's go.mod (kind
// "mod") or zip (kind "zip"), against the checksum database, and returns
// the record that proved it ("<name>/lookup/<path>@<version> record <id>").
// A disagreement is a *MismatchError.
func (v *Verifier) VerifyHash(ctx context.Context, kind, path, version, hash string) (string, error) {
	if kind != "mod" && kind != "zip" {
		return "", fmt.Errorf("verifying %s@%s: unknown kind %q", path, version, kind)
	}
	if _, err := v.verify(ctx, kind, path, version, func() (string, error) { return hash, nil }); err != nil {
		return "", err
	}
	return v.proof(path, version), nil
}

// proof names the stored record of path@version, with its record number
// when the record is in the store.
func (v *Verifier) proof(path, version string) string {
	epath, err1 := module.EscapePath(path)
	evers, err2 := module.EscapeVersion(version)
	if err1 != nil || err2 != nil {
		return v.name
	}
	file := v.name + "/lookup/" + epath + "@" + evers
	if data, err := v.store.GetKV(bucketVerified, file); err == nil {
		if id, _, _, err := tlog.ParseRecord(data); err == nil {
			return fmt.Sprintf("%s record %d", file, id)
		}
	}
	return file
}

func (v *Verifier) verify(ctx context.Context, kind, path, version string, hash func() (string, error)) (string, error) {
	if v.Exempt(path) {
		v.metrics.verifications.WithLabelValues(kind, "exempt").Inc()
		return "", fmt.Errorf("verifying %s@%s: %w", path, version, ErrExempt)
	}
	got, err := hash()
	if err != nil {
		v.metrics.verifications.WithLabelValues(kind, "error").Inc()
		return "", fmt.Errorf("verifying %s@%s %s: hashing content: %w", path, version, kind, err)
	}
	vers := version
	if kind == "mod" {
		vers += "/go.mod"
	}
	want, err := v.lookupHash(ctx, path, vers)
	if err != nil {
		v.metrics.verifications.WithLabelValues(kind, resultOf(err)).Inc()
		return "", fmt.Errorf("verifying %s@%s %s: %w", path, version, kind, err)
	}
	if want != got {
		v.metrics.verifications.WithLabelValues(kind, "mismatch").Inc()
		return "", &MismatchError{Path: path, Version: version, Kind: kind, Want: want, Got: got}
	}
	v.metrics.verifications.WithLabelValues(kind, "ok").Inc()
	return got, nil
}

// resultOf maps a lookup error to a verification metric result.
func resultOf(err error) string {
	switch {
	case errors.Is(err, ErrSecurity):
		return "security"
	case errors.Is(err, ErrNotFound):
		return "not_found"
	case errors.Is(err, ErrUnavailable):
		return "unavailable"
	case errors.Is(err, context.Canceled), errors.Is(err, context.DeadlineExceeded):
		return "unavailable"
	}
	return "error"
}

// HashMod returns the "h1:" hash of a go.mod file's content, as recorded
// in the checksum database and in go.sum lines ending in "/go.mod".
func HashMod(data []byte) (string, error) {
	return dirhash.Hash1([]string{"go.mod"}, func(string) (io.ReadCloser, error) {
		return io.NopCloser(bytes.NewReader(data)), nil
	})
}

// securityError returns the error wrapping ErrSecurity once the database
// was caught misbehaving, or nil.
func (v *Verifier) securityError() error {
	if msg := v.security.Load(); msg != nil {
		return fmt.Errorf("%w: checksum database %s misbehaved earlier (see the error log); refusing to verify until an operator investigates and restarts", ErrSecurity, v.name)
	}
	return nil
}

// lookupHash returns the "h1:" hash on the database's line for path vers
// (vers may end in "/go.mod").
func (v *Verifier) lookupHash(ctx context.Context, path, vers string) (string, error) {
	lines, err := v.clientLookup(ctx, path, vers)
	if err != nil {
		return "", err
	}
	prefix := path + " " + vers + " "
	for _, line := range lines {
		if h, ok := strings.CutPrefix(line, prefix); ok && strings.HasPrefix(h, "h1:") {
			return h, nil
		}
	}
	return "", fmt.Errorf("%s %s: %w: the record has no h1: line for it", path, vers, ErrNotFound)
}

// clientLookup runs the x/mod client's Lookup and classifies its failures,
// replacing a client that failed, since the client caches failures
// forever. It returns when ctx is done even if a remote request is still
// running (it then ends within Config.Timeout).
//
// Only a database that could not be asked makes an ErrUnavailable: data
// that fails authentication, from the store or from a source, is a
// security event (ErrSecurity), so that --sumdb-fail-open can never be
// reached with bad data. See recoverLookup.
func (v *Verifier) clientLookup(ctx context.Context, path, vers string) ([]string, error) {
	if err := v.securityError(); err != nil {
		return nil, err
	}
	c, ops := v.currentClient()
	lines, err := v.runLookup(ctx, c, path, vers)
	if err == nil || ctx.Err() != nil {
		return lines, err
	}
	if err := v.securityError(); err != nil {
		return nil, err
	}
	v.dropClient(c)
	if isRemoteNotFound(err, path, vers) && ops.answeredNotFound(lookupPath(path, vers)) {
		return nil, fmt.Errorf("%w: %v", ErrNotFound, err)
	}
	return v.recoverLookup(ctx, path, vers, err, ops.remoteFailed.Load())
}

// recoverLookup finds out why a lookup failed on the shared client (whose
// reads, shared with other lookups, cannot be attributed to this one) with
// clients of its own whose every read it accounts for, repairing what it
// can:
//
//  1. Unless the network already failed, a fresh client reads everything
//     it has not authenticated in this process from the network,
//     authenticating each remote tile and record
//     (falling through to the next source when one fails), and replaces
//     stored data that differs from what it authenticated. Success is the
//     answer. A failure without any network failure is data that fails
//     authentication.
//  2. A cache-only client then tells a store that merely lacks data (the
//     database is unavailable) from a store whose data fails
//     authentication (a security error).
func (v *Verifier) recoverLookup(ctx context.Context, path, vers string, first error, networkFailed bool) ([]string, error) {
	lp := lookupPath(path, vers)
	sawBad := false
	last := first
	if !networkFailed {
		fops := &clientOps{v: v, mode: modeFresh}
		lines, err := v.runLookup(ctx, xsumdb.NewClient(fops), path, vers)
		if err == nil || ctx.Err() != nil {
			return lines, err
		}
		if serr := v.securityError(); serr != nil {
			return nil, serr
		}
		if isRemoteNotFound(err, path, vers) && fops.answeredNotFound(lp) {
			return nil, fmt.Errorf("%w: %v", ErrNotFound, err)
		}
		if !fops.remoteFailed.Load() {
			v.reportBadData(fmt.Sprintf("lookup of %s %s: data from checksum database %s fails authentication: %v", path, vers, v.name, err))
			return nil, fmt.Errorf("%w: looking up %s %s in checksum database %s: its data fails authentication: %v", ErrSecurity, path, vers, v.name, err)
		}
		sawBad, last = fops.badData.Load(), err
	}
	cops := &clientOps{v: v, mode: modeCacheOnly}
	lines, err := v.runLookup(ctx, xsumdb.NewClient(cops), path, vers)
	if err == nil || ctx.Err() != nil {
		return lines, err
	}
	if serr := v.securityError(); serr != nil {
		return nil, serr
	}
	if cops.remoteWanted.Load() && !sawBad {
		return nil, fmt.Errorf("%w: %v", ErrUnavailable, last)
	}
	if !cops.remoteWanted.Load() {
		v.reportBadData(fmt.Sprintf("lookup of %s %s: stored checksum-database data fails authentication and the database cannot be asked again now: %v", path, vers, err))
	}
	return nil, fmt.Errorf("%w: looking up %s %s in checksum database %s: data fails authentication (%v), and the database could not be asked again: %v", ErrSecurity, path, vers, v.name, err, last)
}

// runLookup runs c.Lookup, returning when ctx is done.
func (v *Verifier) runLookup(ctx context.Context, c *xsumdb.Client, path, vers string) ([]string, error) {
	type result struct {
		lines []string
		err   error
	}
	ch := make(chan result, 1)
	go func() {
		lines, err := c.Lookup(path, vers)
		ch <- result{lines, err}
	}()
	select {
	case r := <-ch:
		return r.lines, r.err
	case <-ctx.Done():
		return nil, fmt.Errorf("looking up %s %s in checksum database %s: %w", path, vers, v.name, ctx.Err())
	}
}

// lookupPath is the remote path of the record for path vers.
func lookupPath(path, vers string) string {
	epath, _ := module.EscapePath(path)
	evers, _ := module.EscapeVersion(strings.TrimSuffix(vers, "/go.mod"))
	return "/lookup/" + epath + "@" + evers
}

// isRemoteNotFound reports whether err (flattened by the x/mod client) came
// from a 404 or 410 answer to the lookup of path@vers itself.
func isRemoteNotFound(err error, path, vers string) bool {
	epath, err1 := module.EscapePath(path)
	evers, err2 := module.EscapeVersion(strings.TrimSuffix(vers, "/go.mod"))
	if err1 != nil || err2 != nil {
		return false
	}
	msg := err.Error()
	target := "/lookup/" + epath + "@" + evers + ": "
	return strings.Contains(msg, target+"404 ") || strings.Contains(msg, target+"410 ")
}

// currentClient returns the x/mod client to use, making a new one when
// there is none or the current one has served maxClientLookups lookups. A
// new client reads the tree head and tiles from the store.
func (v *Verifier) currentClient() (*xsumdb.Client, *clientOps) {
	v.mu.Lock()
	defer v.mu.Unlock()
	if v.client == nil || v.lookups >= maxClientLookups {
		v.ops = &clientOps{v: v, mode: modeShared}
		v.client = xsumdb.NewClient(v.ops)
		v.lookups = 0
	}
	v.lookups++
	return v.client, v.ops
}

// dropClient discards c if it is still the current client.
func (v *Verifier) dropClient(c *xsumdb.Client) {
	v.mu.Lock()
	if v.client == c {
		v.client = nil
	}
	v.mu.Unlock()
}

// reportSecurity records a security error reported by the x/mod client.
func (v *Verifier) reportSecurity(msg string) {
	v.security.CompareAndSwap(nil, &msg)
	v.metrics.security.WithLabelValues(v.name).Inc()
	v.log.Error("checksum database SECURITY ERROR: the database served a history inconsistent with one it signed earlier; every verification will fail until an operator investigates",
		"db", v.name, "detail", msg)
}
