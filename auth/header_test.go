package auth

import (
	"encoding/base64"
	"strings"
	"testing"
)

func TestParseAuthorization(t *testing.T) {
	b64 := func(s string) string { return base64.StdEncoding.EncodeToString([]byte(s)) }
	for _, tc := range []struct {
		in   string
		want Credentials
		ok   bool
	}{
		{"Bearer abc.DEF-1_2~3+4/5==", Credentials{Scheme: "bearer", Secret: "abc.DEF-1_2~3+4/5=="}, true},
		{"bearer  tok", Credentials{Scheme: "bearer", Secret: "tok"}, true},
		{"Basic " + b64("ci:s3cret"), Credentials{Scheme: "basic", User: "ci", Secret: "s3cret"}, true},
		{"BASIC " + b64("ci:pa:ss"), Credentials{Scheme: "basic", User: "ci", Secret: "pa:ss"}, true},
		{"Basic " + b64(":tok"), Credentials{Scheme: "basic", Secret: "tok"}, true},
		{"", Credentials{}, false},
		{"Bearer", Credentials{}, false},
		{"Bearer ", Credentials{}, false},
		{"Bearer a b", Credentials{}, false},
		{"Bearer a\tb", Credentials{}, false},
		{"Bearer =", Credentials{}, false},
		{"Bearer tok\x00", Credentials{}, false},
		{"Bearer t@k", Credentials{}, false},
		{"Basic " + b64("ci"), Credentials{}, false},                       // no colon
		{"Basic " + b64("ci:"), Credentials{}, false},                      // empty password
		{"Basic " + b64("c\ni:tok"), Credentials{}, false},                 // control character in the user
		{"Basic " + b64("ci:to\x7fk"), Credentials{}, false},               // DEL in the password
		{"Basic !!!", Credentials{}, false},                                // not base64
		{"Basic " + b64("ci:tok")[1:], Credentials{}, false},               // damaged base64
		{"Digest username=x", Credentials{}, false},                        // other scheme
		{"Bearer " + strings.Repeat("a", maxHeader), Credentials{}, false}, // oversized
	} {
		got, err := ParseAuthorization(tc.in)
		if (err == nil) != tc.ok || got != tc.want {
			t.Errorf("ParseAuthorization(%.40q) = %+v, %v; want %+v, ok=%v", tc.in, got, err, tc.want, tc.ok)
		}
		if err != nil && len(tc.in) > 7 && strings.Contains(err.Error(), tc.in[7:]) {
			t.Errorf("error %q quotes the header", err)
		}
	}
}

// FuzzParseAuthorization: the parser never panics, accepts only what it
// documents, and its results never show the secret when printed.
func FuzzParseAuthorization(f *testing.F) {
	for _, s := range []string{
		"Bearer mpx_0123456789abcdef_AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA",
		"Basic " + base64.StdEncoding.EncodeToString([]byte("ci:secret")),
		"Basic Og==", "Bearer ", "basic", "Bearer a=b", "Basic " + base64.StdEncoding.EncodeToString([]byte("a:\x00")),
	} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, in string) {
		c, err := ParseAuthorization(in)
		if err != nil {
			if c != (Credentials{}) {
				t.Fatalf("error with credentials %+v", c)
			}
			// One fixed message, which cannot quote the input. (Checking
			// that the input is not in the message misfired on inputs
			// that are pieces of the message itself, such as "\"Bearer ".)
			if err.Error() != errMalformed.Error() {
				t.Fatalf("error %q is not the fixed message: it may quote the input", err)
			}
			return
		}
		if c.Secret == "" || hasControl(c.Secret) || hasControl(c.User) {
			t.Fatalf("accepted %q as %+v", in, c)
		}
		if c.Scheme != "bearer" && c.Scheme != "basic" {
			t.Fatalf("scheme %q", c.Scheme)
		}
		if c.Scheme == "bearer" && (c.User != "" || !isToken68(c.Secret)) {
			t.Fatalf("bearer %+v", c)
		}
		want := c.Scheme + " <redacted>"
		if c.Scheme == "basic" {
			want = "basic user=" + c.User + " <redacted>"
		}
		if c.String() != want {
			t.Fatalf("String() = %q, want %q (no secret)", c.String(), want)
		}
		if len(in) > maxHeader {
			t.Fatalf("accepted an oversized header")
		}
	})
}
