package auth

import (
	"crypto/rand"
	"encoding/base64"
	"encoding/hex"
	"fmt"
	"strings"

	"golang.org/x/crypto/bcrypt"
)

// tokenPrefix marks modproxy tokens, so that secret scanners can find a
// leaked one and a wrong string is told apart from a wrong token.
const tokenPrefix = "mpx_"

// A token is "mpx_<id>_<secret>": the id (8 random bytes, hex) is not
// secret and names the auth file entry, so that checking a token costs one
// bcrypt comparison, never one per identity; the secret is 32 random bytes
// (base64url), far more entropy than any guessing can cover.
const (
	idBytes     = 8
	secretBytes = 32
)

// DefaultCost is the bcrypt cost of new token hashes.
const DefaultCost = bcrypt.DefaultCost

// NewToken returns a fresh token and its id.
func NewToken() (token, id string, err error) {
	b := make([]byte, idBytes+secretBytes)
	if _, err := rand.Read(b); err != nil {
		return "", "", fmt.Errorf("generate token: %w", err)
	}
	id = hex.EncodeToString(b[:idBytes])
	return tokenPrefix + id + "_" + base64.RawURLEncoding.EncodeToString(b[idBytes:]), id, nil
}

// HashToken returns the bcrypt hash of token to store in the auth file.
func HashToken(token string, cost int) (string, error) {
	h, err := bcrypt.GenerateFromPassword([]byte(token), cost)
	if err != nil {
		return "", fmt.Errorf("hash token: %w", err)
	}
	return string(h), nil
}

// tokenID returns the id part of a token, or false when s does not have a
// token's shape.
func tokenID(s string) (string, bool) {
	rest, ok := strings.CutPrefix(s, tokenPrefix)
	if !ok {
		return "", false
	}
	id, secret, ok := strings.Cut(rest, "_")
	if !ok || !validID(id) || len(secret) != base64.RawURLEncoding.EncodedLen(secretBytes) {
		return "", false
	}
	return id, true
}

func validID(id string) bool {
	if len(id) != 2*idBytes {
		return false
	}
	_, err := hex.DecodeString(id)
	return err == nil && strings.ToLower(id) == id
}
