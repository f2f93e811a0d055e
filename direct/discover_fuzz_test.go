package direct

import (
	"strings"
	"testing"
)

// FuzzParseGoImports: a ?go-get=1 page is untrusted input from any host a
// module path names. The parser never panics; what it returns is the go
// command's module-mode list (three or four fields each, "mod" entries
// first and superseding other entries of the same prefix); and matching an
// import path against it never panics and only ever picks an entry whose
// prefix is a path prefix of the import path.
func FuzzParseGoImports(f *testing.F) {
	for _, s := range []string{
		`<html><head><meta name="go-import" content="example.com/lib git https://example.com/lib.git"></head></html>`,
		`<meta name="go-import" content="example.com/lib mod https://proxy.example"><meta name="go-import" content="example.com/lib git https://example.com/lib">`,
		`<meta name="go-import" content="example.com/lib git https://example.com/lib.git sub/dir">`,
		`<?xml version="1.0" encoding="latin1"?><meta name="go-import" content="a b c">`,
		`<html><body><meta name="go-import" content="late git https://x"></body>`,
		`<meta name=go-import content='example.com/x git https://e/x'>`,
		`<meta name="GO-IMPORT" content="a  git   https://a  ">`,
		`<meta name="go-import" content="one two">`,
		"<meta\x00 name=\"go-import\" content=\"a git b\">",
		`<!-- <meta name="go-import" content="c git d"> -->`,
	} {
		f.Add(s, "example.com/lib/pkg")
	}
	f.Fuzz(func(t *testing.T, page, importPath string) {
		imports, err := parseMetaGoImports(strings.NewReader(page))
		if err != nil {
			if len(imports) != 0 {
				t.Fatalf("error %v with %d imports", err, len(imports))
			}
			return
		}
		modPrefix := map[string]bool{}
		seenOther := false
		for _, im := range imports {
			for _, field := range []string{im.Prefix, im.VCS, im.RepoRoot} {
				if field == "" || strings.ContainsAny(field, " \t\n\r") {
					t.Fatalf("entry %+v: empty or spaced field %q", im, field)
				}
			}
			if strings.ContainsAny(im.SubDir, " \t\n\r") {
				t.Fatalf("entry %+v: spaced subdirectory", im)
			}
			if im.VCS == "mod" {
				if seenOther {
					t.Fatalf("mod entry %+v after a non-mod one: %+v", im, imports)
				}
				modPrefix[im.Prefix] = true
				continue
			}
			seenOther = true
			if modPrefix[im.Prefix] {
				t.Fatalf("entry %+v not superseded by the mod entry of its prefix", im)
			}
		}
		m, err := matchGoImport(imports, importPath)
		if err == nil && !strHasPathPrefix(importPath, m.Prefix) {
			t.Fatalf("matched %+v for %q: not a path prefix", m, importPath)
		}
	})
}
