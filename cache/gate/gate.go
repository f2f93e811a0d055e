// Package gate is the one way into the store: every .info, .mod and .zip
// that modproxy keeps passes through a Gate, whichever path brought it
// (a serve miss, prewarm, a bundle import, a go command's module cache).
//
// A Gate checks content first, for every artifact (exempt ones included):
// an .info must be JSON naming the requested version, a .mod must parse
// strictly and name the requested module path, a zip must pass
// modzip.CheckZip and hash within its declared and the protocol's sizes on
// the bytes as they inflate. It then asks its Verifier (the checksum
// database, or authenticated records carried by a bundle) about the "h1:"
// hash, and commits the artifact with one state:
//
//   - cache.StateVerified, with the record that proved it (Meta.Proof);
//   - cache.StateExempt for private and no-sumdb paths, for .info files
//     and when verification is off;
//   - cache.StateUnverified only with FailOpen, when the Verifier says the
//     database is unavailable.
//
// The content's "h1:" hash is recorded in every state, so that Verify can
// check exempt artifacts again later.
//
// cache.Store's writes take a grant only packages under cache/ can name
// (cache/internal/grant): proxy and bundle cannot write the store except
// through a Gate.
package gate

import (
	"bytes"
	"context"
	"crypto/rand"
	"crypto/sha256"
	"errors"
	"fmt"
	"io"
	"os"
	"time"

	"golang.org/x/mod/module"

	"github.com/modproxy/modproxy/cache"
	"github.com/modproxy/modproxy/cache/internal/grant"
	"github.com/modproxy/modproxy/internal/oneline"
	"github.com/modproxy/modproxy/sumdb"
)

// Verifier is the authority a Gate checks hashes with. sumdb.Verifier
// implements it for the checksum database; bundle implements it over the
// authenticated records of a bundle.
type Verifier interface {
	// Exempt reports whether path must not be checked (private, no-sumdb).
	Exempt(path string) bool
	// VerifyHash checks hash, the "h1:" hash of path@version's go.mod (kind
	// "mod") or zip (kind "zip"), and returns the record that proved it.
	// Errors wrap sumdb.ErrMismatch, sumdb.ErrNotFound, sumdb.ErrUnavailable
	// or sumdb.ErrSecurity.
	VerifyHash(ctx context.Context, kind, path, version, hash string) (proof string, err error)
}

// Store is where a Gate commits artifacts: *cache.Store and the other
// backends under cache/ (only they can name grant.Write). Put stores the
// content read from r under k unless k is already stored, and returns the
// stored Meta either way: the first writer wins, and a reader never sees a
// partial artifact.
type Store interface {
	Put(k cache.Key, r io.Reader, m cache.Meta, w grant.Write) (cache.Meta, error)
	PutEntry(key string, value []byte) error
}

// UnverifiedMarker is the store entry that tells whether the store may
// hold artifacts committed unverified (fail-open) that no background pass
// has verified yet: MarkerClean when none, anything else (or no entry, as
// in a store written by an older build) when it may. Commit sets it before
// and after committing an unverified artifact; the background verifier
// sets it to MarkerClean, by compare-and-swap, after a pass that left
// nothing to verify, so that a start with a clean marker need not walk the
// store (on S3, one HEAD request per artifact).
const UnverifiedMarker = "reverify/unverified"

// MarkerClean is UnverifiedMarker's value when nothing is left to verify.
const MarkerClean = "clean"

// Config configures a Gate.
type Config struct {
	Store Store
	// Verifier checks .mod and .zip hashes; nil means verification is off
	// (every artifact is exempt).
	Verifier Verifier
	// FailOpen commits artifacts unverified while the Verifier reports the
	// database unavailable, instead of refusing them.
	FailOpen bool
	// TempDir holds zips spooled to be checked; default os.TempDir().
	TempDir string
}

// Gate checks, verifies and commits artifacts. It is safe for concurrent
// use.
type Gate struct{ cfg Config }

// New returns a Gate over cfg.Store.
func New(cfg Config) (*Gate, error) {
	if cfg.Store == nil {
		return nil, errors.New("gate: no store")
	}
	return &Gate{cfg: cfg}, nil
}

// Origin is where an artifact came from; it is recorded, never trusted.
type Origin struct {
	Upstream string    // upstream URL or bundle name
	Created  time.Time // commit time to record; zero means now
}

// Ticket is an artifact that passed a Gate's checks, ready to Commit. Only
// a Gate makes one.
type Ticket struct {
	g       *Gate
	key     cache.Key
	meta    cache.Meta
	data    []byte                        // .info and .mod
	open    func() (io.ReadCloser, error) // zip content
	failErr error                         // why a fail-open artifact is unverified
}

// Key is the artifact the ticket admits.
func (t *Ticket) Key() cache.Key { return t.key }

// State is the state the artifact will be committed with.
func (t *Ticket) State() cache.State { return t.meta.State }

// Hash is the content's "h1:" hash ("" for .info).
func (t *Ticket) Hash() string { return t.meta.Hash }

// Meta is what the store will record when the ticket is committed, but
// for the time of creation when the origin gave none.
func (t *Ticket) Meta() cache.Meta { return t.meta }

// Data is the content of an .info or .mod ticket.
func (t *Ticket) Data() []byte { return t.data }

// Unverified is, for a fail-open ticket, why it could not be verified.
func (t *Ticket) Unverified() error { return t.failErr }

// CheckSmall checks an .info or .mod file.
func (g *Gate) CheckSmall(ctx context.Context, k cache.Key, data []byte, o Origin) (*Ticket, error) {
	if err := checkKey(k); err != nil {
		return nil, err
	}
	t := &Ticket{g: g, key: k, data: data}
	t.meta = cache.Meta{Size: int64(len(data)), SHA256: sha256.Sum256(data), Upstream: o.Upstream, Created: o.Created}
	switch k.Kind {
	case cache.KindInfo:
		if _, err := ParseInfo(data, k.Version); err != nil {
			return nil, fmt.Errorf("%s@%s.info: %w", k.Path, k.Version, err)
		}
		t.meta.State = cache.StateExempt // no database records .info files
		return t, nil
	case cache.KindMod:
		h, err := CheckMod(k.Path, k.Version, data)
		if err != nil {
			return nil, err
		}
		t.meta.Hash = h
		return t, g.verify(ctx, t)
	}
	return nil, fmt.Errorf("gate: %s: not an .info or .mod", k)
}

// CheckZipFile checks the zip at file, which must stay unchanged until
// the ticket is committed (Commit reads it again and fails if it changed).
func (g *Gate) CheckZipFile(ctx context.Context, k cache.Key, file string, o Origin) (*Ticket, error) {
	if err := checkZipKey(k); err != nil {
		return nil, err
	}
	var m cache.Meta
	if err := fileDigest(file, &m); err != nil {
		return nil, fmt.Errorf("read zip of %s@%s: %w", k.Path, k.Version, err)
	}
	return g.CheckSpooledZip(ctx, k, file, m.Size, m.SHA256, o)
}

// CheckSpooledZip is CheckZipFile for a file whose size and SHA-256 the
// caller took while writing it, which saves reading it once more. Commit
// still fails unless it reads bytes of that size and SHA-256.
func (g *Gate) CheckSpooledZip(ctx context.Context, k cache.Key, file string, size int64, sha [sha256.Size]byte, o Origin) (*Ticket, error) {
	if err := checkZipKey(k); err != nil {
		return nil, err
	}
	m := cache.Meta{Upstream: o.Upstream, Created: o.Created, Size: size, SHA256: sha}
	return g.checkZip(ctx, k, file, m, func() (io.ReadCloser, error) { return os.Open(file) })
}

// checkZipKey refuses a key that is not a zip's or names an invalid module
// version, before anything is read.
func checkZipKey(k cache.Key) error {
	if k.Kind != cache.KindZip {
		return fmt.Errorf("gate: %s: not a zip", k)
	}
	return checkKey(k)
}

// checkZip checks the zip at file, whose Size and SHA256 are in m, and
// makes the ticket that commits what open reads.
func (g *Gate) checkZip(ctx context.Context, k cache.Key, file string, m cache.Meta, open func() (io.ReadCloser, error)) (*Ticket, error) {
	h, err := CheckZipFile(k.Path, k.Version, file)
	if err != nil {
		return nil, err
	}
	m.Hash = h
	t := &Ticket{g: g, key: k, meta: m, open: open}
	return t, g.verify(ctx, t)
}

// CheckZip checks the zip that open reads, spooling it to check it. open
// is called again by Commit, which fails unless it reads the same bytes.
func (g *Gate) CheckZip(ctx context.Context, k cache.Key, open func() (io.ReadCloser, error), o Origin) (*Ticket, error) {
	if k.Kind != cache.KindZip {
		return nil, fmt.Errorf("gate: %s: not a zip", k)
	}
	m := cache.Meta{Upstream: o.Upstream, Created: o.Created}
	// The digest is taken while spooling, not by reading the spool again.
	file, err := spool(k, open, g.cfg.TempDir, &m)
	if err != nil {
		return nil, err
	}
	defer os.Remove(file)
	if err := checkKey(k); err != nil {
		return nil, err
	}
	return g.checkZip(ctx, k, file, m, open)
}

// Spool copies the zip open reads to a new temporary file in dir ("": the
// system's) and returns its name, refusing more than MaxZip bytes. The
// caller removes the file.
func Spool(k cache.Key, open func() (io.ReadCloser, error), dir string) (string, error) {
	return spool(k, open, dir, nil)
}

// spool is Spool that also sets m's Size and SHA256 (m not nil) from the
// bytes it copies.
func spool(k cache.Key, open func() (io.ReadCloser, error), dir string, m *cache.Meta) (string, error) {
	r, err := open()
	if err != nil {
		return "", fmt.Errorf("read %s: %w", k, err)
	}
	defer r.Close()
	f, err := os.CreateTemp(dir, "modproxy-zip-*")
	if err != nil {
		return "", fmt.Errorf("spool %s: %w", k, err)
	}
	var w io.Writer = f
	h := sha256.New()
	if m != nil {
		w = io.MultiWriter(f, h)
	}
	n, err := io.Copy(w, io.LimitReader(r, MaxZip+1))
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err == nil && n > MaxZip {
		err = contentErr("zip of %s@%s is over the %d-byte limit", k.Path, k.Version, int64(MaxZip))
	}
	if err != nil {
		os.Remove(f.Name())
		return "", fmt.Errorf("spool %s: %w", k, err)
	}
	if m != nil {
		m.Size = n
		h.Sum(m.SHA256[:0])
	}
	return f.Name(), nil
}

// checkKey applies the go command's rules for module paths and versions.
func checkKey(k cache.Key) error {
	if err := module.Check(k.Path, k.Version); err != nil {
		return contentErr("%s: %s", k, oneline.Of(err))
	}
	return nil
}

// fileDigest sets m's Size and SHA256 from file.
func fileDigest(file string, m *cache.Meta) error {
	f, err := os.Open(file)
	if err != nil {
		return err
	}
	defer f.Close()
	h := sha256.New()
	n, err := io.Copy(h, f)
	if err != nil {
		return err
	}
	m.Size = n
	h.Sum(m.SHA256[:0])
	return nil
}

// verify sets t's state from the Verifier.
func (g *Gate) verify(ctx context.Context, t *Ticket) error {
	k := t.key
	v := g.cfg.Verifier
	if v == nil || v.Exempt(k.Path) {
		t.meta.State = cache.StateExempt
		return nil
	}
	proof, err := v.VerifyHash(ctx, string(k.Kind), k.Path, k.Version, t.meta.Hash)
	switch {
	case err == nil:
		t.meta.State, t.meta.Proof = cache.StateVerified, proof
		return nil
	case g.cfg.FailOpen && errors.Is(err, sumdb.ErrUnavailable) && !errors.Is(err, sumdb.ErrSecurity):
		t.meta.State, t.failErr = cache.StateUnverified, err
		return nil
	}
	return err
}

// Commit stores the ticket's artifact with its state, unless the key is
// already stored (artifacts are immutable: the stored Meta is returned).
func (g *Gate) Commit(t *Ticket) (cache.Meta, error) {
	if t == nil || t.g != g {
		return cache.Meta{}, errors.New("gate: commit of a ticket this gate did not issue")
	}
	if t.meta.State == cache.StateUnverified {
		// Before: a store that has the artifact has the marker. After
		// too: a background pass that read the marker between the two
		// and missed the artifact cannot then mark the store clean.
		if err := g.markUnverified(); err != nil {
			return cache.Meta{}, fmt.Errorf("commit %s: %w", t.key, err)
		}
		defer g.markUnverified()
	}
	if t.data != nil || t.open == nil {
		return g.cfg.Store.Put(t.key, bytes.NewReader(t.data), t.meta, grant.Write{})
	}
	r, err := t.open()
	if err != nil {
		return cache.Meta{}, fmt.Errorf("commit %s: %w", t.key, err)
	}
	defer r.Close()
	// Put checks Size and SHA256 against what was checked.
	return g.cfg.Store.Put(t.key, r, t.meta, grant.Write{})
}

// markUnverified sets UnverifiedMarker to a value no other call writes.
func (g *Gate) markUnverified() error {
	var nonce [8]byte
	rand.Read(nonce[:])
	v := fmt.Sprintf("pending %s %x", time.Now().UTC().Format(time.RFC3339Nano), nonce)
	if err := g.cfg.Store.PutEntry(UnverifiedMarker, []byte(v)); err != nil {
		return fmt.Errorf("mark the store as holding unverified artifacts: %w", err)
	}
	return nil
}

// Copy copies the artifacts of src that keep accepts (all when keep is
// nil) into dst with their states, for writing bundles: a bundle is
// untrusted input wherever it is imported, and a store opened on it serves
// what the source store had admitted.
func Copy(src, dst *cache.Store, keep func(cache.Key, cache.Meta) bool) (cache.CopyStats, error) {
	return src.CopyTo(dst, keep, grant.Write{})
}

// Salvage copies every intact artifact of the damaged store file src into
// dst, with its state (see cache.Salvage), for `modproxy verify --salvage`.
func Salvage(src string, dst *cache.Store) (*cache.SalvageReport, error) {
	return cache.Salvage(src, dst, grant.Write{})
}
