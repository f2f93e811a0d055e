package gate

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"

	"github.com/modproxy/modproxy/cache"
	"github.com/modproxy/modproxy/internal/oneline"
	"github.com/modproxy/modproxy/sumdb"
)

// VerifyOptions configures Verify.
type VerifyOptions struct {
	// Verifier is asked about every .mod and .zip that is not exempt: the
	// checksum database online, or offline from the authenticated records
	// in the store. nil: artifacts count under the state they were stored
	// with (content and recorded hash are still checked).
	Verifier Verifier
	// Quarantine, if set, is called for every mismatching artifact.
	Quarantine func(k cache.Key, reason string) error
	// TempDir holds the zips being checked; default os.TempDir().
	TempDir string
}

// Verification outcomes, the states of a VerifyReport.
const (
	OutcomeVerified      = "verified"       // the checksum database's record agrees
	OutcomeExempt        = "exempt"         // private or no-sumdb; content matches the hash recorded at commit
	OutcomeUnverified    = "unverified"     // stored fail-open and still not verifiable
	OutcomeMismatch      = "mismatch"       // content fails its checks, its recorded hash or the database
	OutcomeMissingRecord = "missing record" // not exempt, but no record to check it against
	OutcomeError         = "error"          // could not be read or checked
)

// VerifyReport counts the .mod and .zip artifacts of a store by outcome.
// .info files are checked for content only and counted in Info.
type VerifyReport struct {
	Checked       int             `json:"checked"`
	Verified      int             `json:"verified"`
	Exempt        int             `json:"exempt"`
	Unverified    int             `json:"unverified"`
	Mismatch      int             `json:"mismatch"`
	MissingRecord int             `json:"missing_record"`
	Errors        int             `json:"errors"`
	Info          int             `json:"info"`
	Quarantined   int             `json:"quarantined"`
	Problems      []VerifyProblem `json:"problems,omitempty"`
}

// VerifyProblem is one artifact whose outcome is not verified or exempt.
type VerifyProblem struct {
	Path            string `json:"path"`
	Version         string `json:"version"`
	Kind            string `json:"kind"`
	Outcome         string `json:"outcome"`
	Want            string `json:"want,omitempty"`
	Got             string `json:"got,omitempty"`
	Reason          string `json:"reason"`
	Quarantined     bool   `json:"quarantined,omitempty"`
	QuarantineError string `json:"quarantine_error,omitempty"`
}

// Failed reports whether any artifact mismatched or could not be checked.
func (r *VerifyReport) Failed() bool { return r.Mismatch > 0 || r.Errors > 0 }

// WriteText writes the report for people: a summary line, then one line
// per problem.
func (r *VerifyReport) WriteText(w io.Writer) error {
	_, err := fmt.Fprintf(w, "checked %d artifacts: %d verified, %d exempt, %d unverified, %d mismatch, %d missing record, %d errors (%d .info checked), %d quarantined\n",
		r.Checked, r.Verified, r.Exempt, r.Unverified, r.Mismatch, r.MissingRecord, r.Errors, r.Info, r.Quarantined)
	for _, p := range r.Problems {
		if err != nil {
			break
		}
		line := fmt.Sprintf("%-14s %s@%s %s: %s", p.Outcome, p.Path, p.Version, p.Kind, p.Reason)
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

// Verify checks every artifact of st again: its content (the checks of the
// gate), the "h1:" hash recorded at commit, and, for paths that are not
// exempt, the checksum database through opts.Verifier. The error is for
// failures to walk the store or a done ctx; artifact problems are in the
// report.
func Verify(ctx context.Context, st *cache.Store, opts VerifyOptions) (*VerifyReport, error) {
	type item struct {
		k cache.Key
		m cache.Meta
	}
	var items []item
	if err := st.Walk(func(k cache.Key, m cache.Meta) error {
		items = append(items, item{k, m})
		return ctx.Err()
	}); err != nil {
		return nil, fmt.Errorf("walking store: %w", err)
	}
	rep := &VerifyReport{}
	for _, it := range items {
		if err := ctx.Err(); err != nil {
			return rep, err
		}
		p := verifyOne(ctx, st, it.k, it.m, opts)
		if it.k.Kind == cache.KindInfo {
			rep.Info++
			if p.Outcome == OutcomeExempt {
				continue
			}
		} else {
			rep.Checked++
		}
		switch p.Outcome {
		case OutcomeVerified:
			rep.Verified++
			continue
		case OutcomeExempt:
			rep.Exempt++
			continue
		case OutcomeUnverified:
			rep.Unverified++
		case OutcomeMissingRecord:
			rep.MissingRecord++
		case OutcomeError:
			rep.Errors++
		case OutcomeMismatch:
			rep.Mismatch++
			if opts.Quarantine != nil {
				if err := opts.Quarantine(it.k, p.Reason); err != nil {
					p.QuarantineError = err.Error()
				} else {
					p.Quarantined = true
					rep.Quarantined++
				}
			}
		}
		rep.Problems = append(rep.Problems, p)
	}
	return rep, nil
}

// verifyOne checks one artifact.
func verifyOne(ctx context.Context, st *cache.Store, k cache.Key, m cache.Meta, opts VerifyOptions) VerifyProblem {
	p := VerifyProblem{Path: k.Path, Version: k.Version, Kind: string(k.Kind)}
	got, err := storedHash(st, k, opts.TempDir)
	switch {
	case errors.Is(err, ErrContent):
		p.Outcome, p.Reason = OutcomeMismatch, "stored content fails its checks: "+oneline.Of(err)
		return p
	case errors.Is(err, cache.ErrCorrupt):
		// A chunk failing its checksum: the bytes on disk are damaged.
		p.Outcome, p.Reason = OutcomeMismatch, "stored content is damaged: "+oneline.Of(err)
		return p
	case err != nil:
		p.Outcome, p.Reason = OutcomeError, oneline.Of(err)
		return p
	case k.Kind == cache.KindInfo:
		p.Outcome = OutcomeExempt
		return p
	}
	p.Got = got
	if m.Hash != "" && got != m.Hash {
		p.Outcome, p.Want = OutcomeMismatch, m.Hash
		p.Reason = "content does not match the hash recorded when it was stored"
		return p
	}
	v := opts.Verifier
	if v == nil {
		switch m.State {
		case cache.StateVerified:
			p.Outcome = OutcomeVerified
		case cache.StateExempt:
			p.Outcome = OutcomeExempt
		default:
			p.Outcome, p.Reason = OutcomeUnverified, "stored unverified; no checksum database to check it against"
		}
		return p
	}
	if v.Exempt(k.Path) {
		p.Outcome = OutcomeExempt
		return p
	}
	_, err = v.VerifyHash(ctx, string(k.Kind), k.Path, k.Version, got)
	var mm *sumdb.MismatchError
	switch {
	case err == nil:
		p.Outcome = OutcomeVerified
	case errors.As(err, &mm):
		p.Outcome, p.Want, p.Reason = OutcomeMismatch, mm.Want, "the checksum database disagrees"
	case errors.Is(err, sumdb.ErrSecurity):
		p.Outcome, p.Reason = OutcomeError, oneline.Of(err)
	case errors.Is(err, sumdb.ErrNotFound):
		p.Outcome, p.Reason = OutcomeMissingRecord, oneline.Of(err)
	case m.State == cache.StateUnverified:
		p.Outcome, p.Reason = OutcomeUnverified, "stored fail-open; still cannot be verified: "+oneline.Of(err)
	case errors.Is(err, sumdb.ErrUnavailable):
		p.Outcome, p.Reason = OutcomeMissingRecord, oneline.Of(err)
	default:
		p.Outcome, p.Reason = OutcomeError, oneline.Of(err)
	}
	return p
}

// storedHash runs the content checks on a stored artifact and returns its
// "h1:" hash ("" for .info).
func storedHash(st *cache.Store, k cache.Key, tempDir string) (string, error) {
	if k.Kind != cache.KindZip {
		data, _, err := st.Get(k)
		if err != nil {
			return "", err
		}
		if k.Kind == cache.KindInfo {
			_, err := ParseInfo(data, k.Version)
			return "", err
		}
		return CheckMod(k.Path, k.Version, data)
	}
	return HashZip(k, func() (io.ReadCloser, error) { return st.Open(k) }, tempDir)
}

// HashZip spools the zip that open reads into dir ("": the system's temp
// dir), checks it as a Gate does and returns its "h1:" hash.
func HashZip(k cache.Key, open func() (io.ReadCloser, error), dir string) (string, error) {
	file, err := Spool(k, open, dir)
	if err != nil {
		return "", err
	}
	defer os.Remove(file)
	return CheckZipFile(k.Path, k.Version, file)
}
