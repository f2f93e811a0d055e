package auth

import (
	"encoding/base64"
	"errors"
	"strings"
)

// maxHeader bounds the Authorization header this package parses: a token
// or a Basic pair is far shorter, and a larger value is an attack.
const maxHeader = 4096

// Credentials are what a client presented in its Authorization header.
type Credentials struct {
	Scheme string // "bearer" or "basic"
	User   string // the Basic user name; "" for Bearer
	Secret string // the token: the Bearer value or the Basic password
}

// String never shows the secret, so that Credentials are safe to log.
func (c Credentials) String() string {
	if c.Scheme == "basic" {
		return "basic user=" + c.User + " <redacted>"
	}
	return c.Scheme + " <redacted>"
}

// errMalformed is the one error a bad header gets: its message never
// quotes the header, which may hold a secret.
var errMalformed = errors.New("malformed Authorization header: want \"Bearer <token>\" or \"Basic <base64 user:password>\"")

// ParseAuthorization parses an Authorization header value of the Bearer
// (RFC 6750) or Basic (RFC 7617) scheme. Scheme names are case-insensitive;
// the credentials are returned as sent. Control characters, empty secrets
// and oversized values are refused.
func ParseAuthorization(v string) (Credentials, error) {
	if len(v) > maxHeader {
		return Credentials{}, errMalformed
	}
	scheme, rest, ok := strings.Cut(v, " ")
	if !ok {
		return Credentials{}, errMalformed
	}
	rest = strings.TrimLeft(rest, " ")
	if rest == "" || strings.ContainsAny(rest, " \t") {
		return Credentials{}, errMalformed
	}
	switch strings.ToLower(scheme) {
	case "bearer":
		if !isToken68(rest) {
			return Credentials{}, errMalformed
		}
		return Credentials{Scheme: "bearer", Secret: rest}, nil
	case "basic":
		raw, err := base64.StdEncoding.DecodeString(rest)
		if err != nil {
			return Credentials{}, errMalformed
		}
		user, pass, ok := strings.Cut(string(raw), ":")
		if !ok || pass == "" || hasControl(user) || hasControl(pass) {
			return Credentials{}, errMalformed
		}
		return Credentials{Scheme: "basic", User: user, Secret: pass}, nil
	}
	return Credentials{}, errMalformed
}

// isToken68 reports whether s has the token68 syntax of RFC 7235.
func isToken68(s string) bool {
	s = strings.TrimRight(s, "=")
	if s == "" {
		return false
	}
	for i := 0; i < len(s); i++ {
		c := s[i]
		switch {
		case 'a' <= c && c <= 'z', 'A' <= c && c <= 'Z', '0' <= c && c <= '9':
		case strings.IndexByte("-._~+/", c) >= 0:
		default:
			return false
		}
	}
	return true
}

func hasControl(s string) bool {
	for i := 0; i < len(s); i++ {
		if s[i] < 0x20 || s[i] == 0x7f {
			return true
		}
	}
	return false
}
