package auth

import (
	"bytes"
	"errors"
	"fmt"
	"os"
	pathpkg "path"
	"path/filepath"
	"strings"

	yaml "go.yaml.in/yaml/v2"
	"golang.org/x/crypto/bcrypt"
	"golang.org/x/mod/module"
)

// Scope names with a meaning of their own; any other scope is a module path
// pattern in GOPRIVATE syntax.
const (
	ScopePublic = "public" // every module path outside --private
	ScopeAdmin  = "admin"  // the admin endpoints and every module path
)

// File is the auth file: who may do what.
//
//	anonymous: [public]
//	identities:
//	  - name: ci
//	    token_id: 3f9a0c1d2e4b5a69
//	    token_hash: $2a$10$...
//	    scopes: [public, git.corp.example/*]
//	  - name: build-bot
//	    subject: CN=build-bot,O=Corp
//	    scopes: [admin]
type File struct {
	// Anonymous are the scopes of a request without credentials; empty
	// means such a request is refused with 401.
	Anonymous  []string `yaml:"anonymous,omitempty"`
	Identities []Entry  `yaml:"identities"`
}

// Entry is one identity of the auth file: a token (by its id and bcrypt
// hash) or a TLS client certificate subject, with its scopes.
type Entry struct {
	Name      string   `yaml:"name"`
	TokenID   string   `yaml:"token_id,omitempty"`
	TokenHash string   `yaml:"token_hash,omitempty"`
	Subject   string   `yaml:"subject,omitempty"`
	Scopes    []string `yaml:"scopes"`
}

// ParseFile parses and validates an auth file. Unknown keys are errors, so
// that a misspelt key never silently grants or drops access.
func ParseFile(data []byte) (*File, error) {
	var f File
	if err := yaml.UnmarshalStrict(data, &f); err != nil {
		return nil, fmt.Errorf("parse auth file: %w", err)
	}
	if err := f.Validate(); err != nil {
		return nil, err
	}
	return &f, nil
}

// ReadFile reads and parses the auth file at path.
func ReadFile(path string) (*File, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("read auth file: %w", err)
	}
	f, err := ParseFile(data)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	return f, nil
}

// Validate checks names, credentials and scopes.
func (f *File) Validate() error {
	if _, err := parseScopes(f.Anonymous); err != nil {
		return fmt.Errorf("anonymous: %w", err)
	}
	for _, s := range f.Anonymous {
		if s == ScopeAdmin {
			return errors.New("anonymous: the admin scope cannot be granted to anonymous requests")
		}
	}
	names, ids, subjects := map[string]bool{}, map[string]bool{}, map[string]bool{}
	for i, id := range f.Identities {
		where := fmt.Sprintf("identity %d (%q)", i+1, id.Name)
		if err := ValidName(id.Name); err != nil {
			return fmt.Errorf("%s: %w", where, err)
		}
		if names[id.Name] {
			return fmt.Errorf("%s: duplicate name", where)
		}
		names[id.Name] = true
		hasToken := id.TokenID != "" || id.TokenHash != ""
		switch {
		case hasToken && id.Subject != "":
			return fmt.Errorf("%s: has both a token and a subject; use two identities", where)
		case hasToken:
			if !validID(id.TokenID) {
				return fmt.Errorf("%s: token_id must be %d lower-case hex digits", where, 2*idBytes)
			}
			if ids[id.TokenID] {
				return fmt.Errorf("%s: duplicate token_id", where)
			}
			ids[id.TokenID] = true
			if _, err := bcrypt.Cost([]byte(id.TokenHash)); err != nil {
				return fmt.Errorf("%s: token_hash is not a bcrypt hash (store hashes, never tokens; use modproxy auth add)", where)
			}
		case id.Subject != "":
			if subjects[id.Subject] {
				return fmt.Errorf("%s: duplicate subject", where)
			}
			subjects[id.Subject] = true
		default:
			return fmt.Errorf("%s: needs token_id and token_hash, or subject", where)
		}
		if len(id.Scopes) == 0 {
			return fmt.Errorf("%s: no scopes", where)
		}
		if _, err := parseScopes(id.Scopes); err != nil {
			return fmt.Errorf("%s: %w", where, err)
		}
	}
	return nil
}

// ValidName checks an identity name: it is the Basic user name and appears
// in logs, so it is short and plain.
func ValidName(name string) error {
	if name == "" || len(name) > 64 {
		return errors.New("name must be 1 to 64 characters")
	}
	for _, c := range name {
		if !('a' <= c && c <= 'z' || 'A' <= c && c <= 'Z' || '0' <= c && c <= '9' || strings.ContainsRune("._@-", c)) {
			return fmt.Errorf("name %q: only letters, digits and . _ @ - are allowed", name)
		}
	}
	return nil
}

// Marshal encodes f as YAML.
func (f *File) Marshal() ([]byte, error) {
	var b bytes.Buffer
	b.WriteString("# modproxy auth file: manage with modproxy auth add|remove|list.\n# Tokens are stored as bcrypt hashes only.\n")
	out, err := yaml.Marshal(f)
	if err != nil {
		return nil, fmt.Errorf("encode auth file: %w", err)
	}
	b.Write(out)
	return b.Bytes(), nil
}

// WriteFile writes f to path atomically (a temp file renamed over it), so
// that a server watching path never reads half a file. It is readable by
// its owner only: it holds hashes, not tokens, but hashes are for no one
// else to attack offline.
func (f *File) WriteFile(path string) error {
	if err := f.Validate(); err != nil {
		return err
	}
	data, err := f.Marshal()
	if err != nil {
		return err
	}
	tmp, err := os.CreateTemp(filepath.Dir(path), ".auth-*.tmp")
	if err != nil {
		return fmt.Errorf("write auth file: %w", err)
	}
	defer os.Remove(tmp.Name())
	if _, err := tmp.Write(data); err != nil {
		tmp.Close()
		return fmt.Errorf("write auth file: %w", err)
	}
	if err := tmp.Chmod(0o600); err != nil {
		tmp.Close()
		return fmt.Errorf("write auth file: %w", err)
	}
	if err := tmp.Sync(); err != nil {
		tmp.Close()
		return fmt.Errorf("write auth file: %w", err)
	}
	if err := tmp.Close(); err != nil {
		return fmt.Errorf("write auth file: %w", err)
	}
	if err := os.Rename(tmp.Name(), path); err != nil {
		return fmt.Errorf("write auth file: %w", err)
	}
	return nil
}

// Scopes is a parsed scope list.
type Scopes struct {
	Public   bool
	Admin    bool
	patterns string // comma-joined module path patterns
}

func parseScopes(list []string) (Scopes, error) {
	var s Scopes
	var pats []string
	for _, sc := range list {
		switch sc {
		case ScopePublic:
			s.Public = true
		case ScopeAdmin:
			s.Admin = true
		default:
			if err := validPattern(sc); err != nil {
				return Scopes{}, err
			}
			pats = append(pats, sc)
		}
	}
	s.patterns = strings.Join(pats, ",")
	return s, nil
}

// ParseScope checks one scope as "auth add --scope" takes it.
func ParseScope(s string) error {
	_, err := parseScopes([]string{s})
	return err
}

func validPattern(p string) error {
	switch {
	case p == "":
		return errors.New("empty scope")
	case strings.EqualFold(p, ScopePublic) || strings.EqualFold(p, ScopeAdmin):
		return fmt.Errorf("scope %q: scope names are lower case (%s, %s)", p, ScopePublic, ScopeAdmin)
	case strings.ContainsAny(p, ", \t\n"):
		return fmt.Errorf("scope %q: a module path pattern has no commas or spaces (give one --scope per pattern)", p)
	case strings.HasPrefix(p, "/") || strings.HasSuffix(p, "/"):
		return fmt.Errorf("scope %q: a module path pattern has no leading or trailing slash", p)
	}
	if _, err := pathpkg.Match(p, ""); err != nil {
		return fmt.Errorf("scope %q: bad pattern: %w", p, err)
	}
	return nil
}

// CanRead reports whether the scopes allow reading module path, which
// the server's --private patterns classify as private or not.
func (s Scopes) CanRead(path string, private bool) bool {
	if s.Admin || (s.Public && !private) {
		return true
	}
	return s.patterns != "" && module.MatchPrefixPatterns(s.patterns, path)
}

// AddToken adds an identity name with a new token and scopes, and returns
// the token: the file keeps only its hash, so this is the one time it is
// seen.
func (f *File) AddToken(name string, scopes []string, cost int) (string, error) {
	if err := f.checkNew(name, scopes); err != nil {
		return "", err
	}
	token, id, err := NewToken()
	if err != nil {
		return "", err
	}
	h, err := HashToken(token, cost)
	if err != nil {
		return "", err
	}
	f.Identities = append(f.Identities, Entry{Name: name, TokenID: id, TokenHash: h, Scopes: scopes})
	return token, nil
}

// AddSubject adds an identity name for TLS client certificates with the
// given subject (as crypto/x509's pkix.Name.String writes it).
func (f *File) AddSubject(name, subject string, scopes []string) error {
	if err := f.checkNew(name, scopes); err != nil {
		return err
	}
	f.Identities = append(f.Identities, Entry{Name: name, Subject: subject, Scopes: scopes})
	return f.Validate()
}

func (f *File) checkNew(name string, scopes []string) error {
	if err := ValidName(name); err != nil {
		return err
	}
	for _, e := range f.Identities {
		if e.Name == name {
			return fmt.Errorf("identity %q exists (remove it first to replace its token)", name)
		}
	}
	if len(scopes) == 0 {
		return errors.New("no scopes: give at least one (public, admin or a module path pattern)")
	}
	_, err := parseScopes(scopes)
	return err
}

// Remove deletes identity name.
func (f *File) Remove(name string) error {
	for i, e := range f.Identities {
		if e.Name == name {
			f.Identities = append(f.Identities[:i], f.Identities[i+1:]...)
			return nil
		}
	}
	return fmt.Errorf("no identity %q", name)
}
