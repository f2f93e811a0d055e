// Package auth identifies modproxy's clients and says what they may read.
//
// Identities come from an auth file (File): tokens, presented as a Bearer
// token or as the password of HTTP Basic authentication and stored only as
// bcrypt hashes, and TLS client certificate subjects. Each identity has
// scopes: "public" (every module path outside the server's private
// patterns), module path patterns (the private paths they match), and
// "admin" (the admin endpoints and every module path).
//
// Checking a token costs one bcrypt comparison the first time it is seen;
// after that an Authenticator compares an HMAC of it (keyed with a random
// per-process key) with the one remembered for its token id, in constant
// time, so that a warm request costs microseconds. A reload (Load) starts
// with an empty cache, so that a removed token stops working at once.
package auth

import (
	"context"
	"crypto/hmac"
	"crypto/rand"
	"crypto/sha256"
	"crypto/subtle"
	"errors"
	"fmt"
	"net/http"
	"runtime"
	"sync"
	"sync/atomic"

	"golang.org/x/crypto/bcrypt"
)

// Identity is who a request was made by.
type Identity struct {
	Name   string // the auth file name; "anonymous" for anonymous requests
	Via    string // "token", "mtls" or "anonymous"
	Scopes Scopes
}

// Anonymous is the Via of an identity without credentials.
const Anonymous = "anonymous"

// Error is an authentication failure: Status is 401 (no or bad credentials).
// Its message never contains what the client sent.
type Error struct {
	Status int
	Msg    string
}

func (e *Error) Error() string { return e.Msg }

var (
	errNoCredentials  = &Error{Status: http.StatusUnauthorized, Msg: "authentication required: send a token (Bearer, or as the Basic password, e.g. from .netrc) or a client certificate"}
	errBadCredentials = &Error{Status: http.StatusUnauthorized, Msg: "invalid credentials"}
)

// compareHash is bcrypt's comparison; tests count its calls.
var compareHash = bcrypt.CompareHashAndPassword

// negativeCap bounds the remembered wrong secrets; past it the set is
// cleared (a flood of distinct wrong secrets gains nothing from it anyway).
const negativeCap = 4096

// Authenticator checks requests against the current auth file.
type Authenticator struct {
	key   []byte // HMAC key of the token cache; random per process
	state atomic.Pointer[state]
	// bcryptSem bounds concurrent bcrypt comparisons, so that a flood of
	// wrong tokens costs at most these cores.
	bcryptSem chan struct{}
}

type state struct {
	anonymous *Identity // nil: anonymous requests are refused
	byTokenID map[string]*tokenEntry
	bySubject map[string]*Identity
	count     int

	mu  sync.RWMutex
	bad map[[sha256.Size]byte]struct{} // HMACs of secrets that failed bcrypt
}

type tokenEntry struct {
	id   *Identity
	hash []byte
	// mac is the HMAC of the secret that passed bcrypt, or nil before one
	// has; guarded by state.mu.
	mac []byte
}

// New returns an Authenticator over f.
func New(f *File) (*Authenticator, error) {
	key := make([]byte, 32)
	if _, err := rand.Read(key); err != nil {
		return nil, fmt.Errorf("auth: cache key: %w", err)
	}
	n := max(1, runtime.NumCPU()/2)
	a := &Authenticator{key: key, bcryptSem: make(chan struct{}, n)}
	if err := a.Load(f); err != nil {
		return nil, err
	}
	return a, nil
}

// Load replaces the auth file in force. Requests in flight finish with the
// old one; the token cache starts empty.
func (a *Authenticator) Load(f *File) error {
	if err := f.Validate(); err != nil {
		return err
	}
	st := &state{
		byTokenID: map[string]*tokenEntry{},
		bySubject: map[string]*Identity{},
		bad:       map[[sha256.Size]byte]struct{}{},
		count:     len(f.Identities),
	}
	if len(f.Anonymous) > 0 {
		sc, _ := parseScopes(f.Anonymous)
		st.anonymous = &Identity{Name: Anonymous, Via: Anonymous, Scopes: sc}
	}
	for _, e := range f.Identities {
		sc, _ := parseScopes(e.Scopes)
		if e.Subject != "" {
			st.bySubject[e.Subject] = &Identity{Name: e.Name, Via: "mtls", Scopes: sc}
			continue
		}
		st.byTokenID[e.TokenID] = &tokenEntry{id: &Identity{Name: e.Name, Via: "token", Scopes: sc}, hash: []byte(e.TokenHash)}
	}
	a.state.Store(st)
	return nil
}

// Identities is the number of identities in force.
func (a *Authenticator) Identities() int { return a.state.Load().count }

// AllowsAnonymous reports whether requests without credentials have scopes.
func (a *Authenticator) AllowsAnonymous() bool { return a.state.Load().anonymous != nil }

// Authenticate identifies r: by its verified TLS client certificate when
// the auth file names its subject, else by its Authorization header, else
// as anonymous when the auth file allows that. It returns an *Error when
// the request has no identity.
func (a *Authenticator) Authenticate(r *http.Request) (*Identity, error) {
	st := a.state.Load()
	if r.TLS != nil && len(r.TLS.VerifiedChains) > 0 && len(r.TLS.PeerCertificates) > 0 {
		if id, ok := st.bySubject[r.TLS.PeerCertificates[0].Subject.String()]; ok {
			return id, nil
		}
	}
	h := r.Header.Get("Authorization")
	if h == "" {
		if st.anonymous != nil {
			return st.anonymous, nil
		}
		return nil, errNoCredentials
	}
	c, err := ParseAuthorization(h)
	if err != nil {
		return nil, &Error{Status: http.StatusUnauthorized, Msg: err.Error()}
	}
	return a.checkToken(r.Context(), st, c)
}

// checkToken finds the identity whose token c carries.
func (a *Authenticator) checkToken(ctx context.Context, st *state, c Credentials) (*Identity, error) {
	tid, ok := tokenID(c.Secret)
	if !ok {
		return nil, errBadCredentials
	}
	e, ok := st.byTokenID[tid]
	if !ok {
		return nil, errBadCredentials
	}
	// A Basic user name, when given, must be the identity's: a token
	// presented under another name is a mistake worth refusing.
	if c.Scheme == "basic" && c.User != e.id.Name {
		return nil, errBadCredentials
	}
	mac := a.mac(c.Secret)
	st.mu.RLock()
	good := e.mac != nil && subtle.ConstantTimeCompare(e.mac, mac) == 1
	_, bad := st.bad[[sha256.Size]byte(mac)]
	st.mu.RUnlock()
	if good {
		return e.id, nil
	}
	if bad {
		return nil, errBadCredentials
	}
	select {
	case a.bcryptSem <- struct{}{}:
	case <-ctx.Done():
		return nil, errBadCredentials
	}
	err := compareHash(e.hash, []byte(c.Secret))
	<-a.bcryptSem
	st.mu.Lock()
	defer st.mu.Unlock()
	if err != nil {
		if len(st.bad) >= negativeCap {
			clear(st.bad)
		}
		st.bad[[sha256.Size]byte(mac)] = struct{}{}
		if !errors.Is(err, bcrypt.ErrMismatchedHashAndPassword) {
			return nil, &Error{Status: http.StatusUnauthorized, Msg: "invalid credentials (the stored hash is unusable)"}
		}
		return nil, errBadCredentials
	}
	e.mac = mac
	return e.id, nil
}

func (a *Authenticator) mac(secret string) []byte {
	m := hmac.New(sha256.New, a.key)
	m.Write([]byte(secret))
	return m.Sum(nil)
}
