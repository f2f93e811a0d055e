package sumdb

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"

	"github.com/modproxy/modproxy/cache"
)

// ArtifactStore is what VerifyStore needs from the artifact store;
// CacheArtifacts adapts a *cache.Store.
type ArtifactStore interface {
	// Walk calls fn for every stored artifact. VerifyStore only collects
	// keys inside fn; it opens artifacts after Walk returns.
	Walk(fn func(cache.Key, cache.Meta) error) error
	// Open returns the content of an artifact.
	Open(k cache.Key) (io.ReadCloser, error)
}

// CacheArtifacts adapts s to ArtifactStore. Its Quarantine method suits
// VerifyOptions.Quarantine.
func CacheArtifacts(s *cache.Store) ArtifactStore { return cacheArtifacts{s} }

type cacheArtifacts struct{ s *cache.Store }

func (a cacheArtifacts) Walk(fn func(cache.Key, cache.Meta) error) error { return a.s.Walk(fn) }

func (a cacheArtifacts) Open(k cache.Key) (io.ReadCloser, error) { return a.s.Open(k) }

// VerifyOptions configures VerifyStore.
type VerifyOptions struct {
	// Quarantine, if set, is called for every artifact whose content does
	// not match its recorded hash (or the checksum database).
	Quarantine func(k cache.Key, reason string) error
	// Database, if set, is also asked for the hash of every artifact that
	// is not exempt, catching a recorded hash that is itself wrong.
	Database *Verifier
	// TempDir holds the temporary copies of zip files; default os.TempDir().
	TempDir string
}

// Problem statuses in a VerifyReport.
const (
	StatusMismatch   = "mismatch"    // content disagrees with its recorded hash, or cannot be hashed
	StatusDBMismatch = "db_mismatch" // recorded hash disagrees with the checksum database
	StatusSkipped    = "skipped"     // not checked (no recorded hash)
	StatusError      = "error"       // could not be read or checked
)

// VerifyReport is the result of VerifyStore.
type VerifyReport struct {
	Checked     int             `json:"checked"` // .mod and .zip artifacts examined
	OK          int             `json:"ok"`
	Mismatched  int             `json:"mismatched"` // StatusMismatch and StatusDBMismatch
	Skipped     int             `json:"skipped"`
	Errors      int             `json:"errors"`
	Quarantined int             `json:"quarantined"`
	Problems    []VerifyProblem `json:"problems,omitempty"`
}

// VerifyProblem is one artifact that was not verified OK.
type VerifyProblem struct {
	Path            string `json:"path"`
	Version         string `json:"version"`
	Kind            string `json:"kind"`
	Status          string `json:"status"`
	Want            string `json:"want,omitempty"` // recorded (or database) hash
	Got             string `json:"got,omitempty"`  // hash of the stored content
	Reason          string `json:"reason"`
	Quarantined     bool   `json:"quarantined,omitempty"`
	QuarantineError string `json:"quarantine_error,omitempty"`
}

// Failed reports whether any artifact mismatched or could not be checked.
func (r *VerifyReport) Failed() bool { return r.Mismatched > 0 || r.Errors > 0 }

// WriteText writes the report for people: a summary line, then one line per
// problem.
func (r *VerifyReport) WriteText(w io.Writer) error {
	_, err := fmt.Fprintf(w, "checked %d artifacts: %d ok, %d mismatched, %d skipped, %d errors, %d quarantined\n",
		r.Checked, r.OK, r.Mismatched, r.Skipped, r.Errors, r.Quarantined)
	for _, p := range r.Problems {
		if err != nil {
			break
		}
		line := fmt.Sprintf("%-11s %s@%s %s: %s", p.Status, p.Path, p.Version, p.Kind, p.Reason)
		if p.Want != "" || p.Got != "" {
			line += fmt.Sprintf(" (want %s, got %s)", orNone(p.Want), orNone(p.Got))
		}
		if p.Quarantined {
			line += " [quarantined]"
		} else if p.QuarantineError != "" {
			line += " [quarantine failed: " + p.QuarantineError + "]"
		}
		_, err = fmt.Fprintln(w, line)
	}
	return err
}

func orNone(s string) string {
	if s == "" {
		return "none"
	}
	return s
}

// VerifyStore re-hashes every stored .mod and .zip artifact and compares the
// result with the hash recorded when it was stored (Meta.Hash); artifacts
// without a recorded hash are skipped. Problems are listed in the report;
// the error is for failures to walk the store or a done ctx.
func VerifyStore(ctx context.Context, st ArtifactStore, opts VerifyOptions) (*VerifyReport, error) {
	type item struct {
		k cache.Key
		m cache.Meta
	}
	var items []item
	err := st.Walk(func(k cache.Key, m cache.Meta) error {
		if k.Kind == cache.KindMod || k.Kind == cache.KindZip {
			items = append(items, item{k, m})
		}
		return ctx.Err()
	})
	if err != nil {
		return nil, fmt.Errorf("walking store: %w", err)
	}
	rep := &VerifyReport{}
	for _, it := range items {
		if err := ctx.Err(); err != nil {
			return rep, err
		}
		rep.Checked++
		p := verifyArtifact(ctx, st, it.k, it.m, opts)
		if p == nil {
			rep.OK++
			continue
		}
		switch p.Status {
		case StatusSkipped:
			rep.Skipped++
		case StatusError:
			rep.Errors++
		default:
			rep.Mismatched++
			if opts.Quarantine != nil {
				if err := opts.Quarantine(it.k, p.Reason); err != nil {
					p.QuarantineError = err.Error()
				} else {
					p.Quarantined = true
					rep.Quarantined++
				}
			}
		}
		rep.Problems = append(rep.Problems, *p)
	}
	return rep, nil
}

// verifyArtifact checks one artifact, returning nil if it is fine.
func verifyArtifact(ctx context.Context, st ArtifactStore, k cache.Key, m cache.Meta, opts VerifyOptions) *VerifyProblem {
	p := &VerifyProblem{Path: k.Path, Version: k.Version, Kind: string(k.Kind), Want: m.Hash}
	if m.Hash == "" && m.SHA256 == ([32]byte{}) {
		p.Status, p.Reason = StatusSkipped, "no recorded hash (stored unverified: private module or checksum database off)"
		return p
	}
	if m.Hash == "" {
		// No checksum-database hash to compare with, but the store's own
		// SHA-256 still catches content damaged after it was stored.
		sum, err := contentSHA256(st, k)
		switch {
		case err != nil && errors.Is(err, cache.ErrCorrupt):
			p.Status, p.Reason = StatusMismatch, "stored content is damaged: "+err.Error()
		case err != nil:
			p.Status, p.Reason = StatusError, err.Error()
		case sum != m.SHA256:
			p.Status, p.Reason = StatusMismatch, "content does not match the SHA-256 recorded when it was stored"
			p.Want, p.Got = "sha256:"+hex.EncodeToString(m.SHA256[:]), "sha256:"+hex.EncodeToString(sum[:])
		default:
			p.Status, p.Reason = StatusSkipped, "no checksum-database hash (private module or checksum database off); content matches its stored SHA-256"
		}
		return p
	}
	got, corrupt, err := hashArtifact(st, k, opts.TempDir)
	if err != nil {
		if corrupt || errors.Is(err, cache.ErrCorrupt) {
			p.Status, p.Reason = StatusMismatch, "content cannot be hashed: "+err.Error()
		} else {
			p.Status, p.Reason = StatusError, err.Error()
		}
		return p
	}
	p.Got = got
	if got != m.Hash {
		p.Status, p.Reason = StatusMismatch, "content does not match the hash recorded when it was stored"
		return p
	}
	if db := opts.Database; db != nil && !db.Exempt(k.Path) {
		vers := k.Version
		if k.Kind == cache.KindMod {
			vers += "/go.mod"
		}
		want, err := db.lookupHash(ctx, k.Path, vers)
		switch {
		case err != nil:
			p.Status, p.Reason = StatusError, "checking against checksum database: "+err.Error()
			return p
		case want != got:
			p.Want, p.Status = want, StatusDBMismatch
			p.Reason = fmt.Sprintf("checksum database %s disagrees with the recorded hash %s", db.Name(), m.Hash)
			return p
		}
	}
	return nil
}

// contentSHA256 hashes a stored artifact's content.
func contentSHA256(st ArtifactStore, k cache.Key) ([32]byte, error) {
	rc, err := st.Open(k)
	if err != nil {
		return [32]byte{}, fmt.Errorf("opening: %w", err)
	}
	defer rc.Close()
	h := sha256.New()
	if _, err := io.Copy(h, rc); err != nil {
		return [32]byte{}, fmt.Errorf("reading: %w", err)
	}
	var sum [32]byte
	h.Sum(sum[:0])
	return sum, nil
}

// hashArtifact computes the "h1:" hash of a stored .mod or .zip. corrupt
// reports that the content was read but is not a valid artifact.
func hashArtifact(st ArtifactStore, k cache.Key, tempDir string) (hash string, corrupt bool, err error) {
	rc, err := st.Open(k)
	if err != nil {
		return "", false, fmt.Errorf("opening: %w", err)
	}
	defer rc.Close()
	if k.Kind == cache.KindMod {
		data, err := io.ReadAll(io.LimitReader(rc, 64<<20))
		if err != nil {
			return "", false, fmt.Errorf("reading: %w", err)
		}
		h, err := HashMod(data)
		return h, false, err
	}
	return hashZipFrom(rc, tempDir)
}
