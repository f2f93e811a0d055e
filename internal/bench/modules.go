package main

import (
	"fmt"
	"math/rand/v2"
	"strings"

	"github.com/modproxy/modproxy/internal/testupstream"
)

// smallModules returns n one-file modules <prefix>/mNNN v1.0.0.
func smallModules(prefix string, n int) []testupstream.Module {
	mods := make([]testupstream.Module, n)
	for i := range mods {
		name := fmt.Sprintf("m%03d", i)
		mods[i] = testupstream.Module{
			Path:    prefix + "/" + name,
			Version: "v1.0.0",
			Files: map[string]string{
				name + ".go": fmt.Sprintf("// Package %s is a generated benchmark module.\npackage %s\n\n// N identifies the module.\nconst N = %d\n", name, name, i),
			},
		}
	}
	return mods
}

// bigModule returns a module whose zip is about size bytes: files of
// fileSize random bytes (incompressible, so the zip is as large as its
// content), plus a Go file. Content depends only on seed.
func bigModule(path string, size, fileSize int, seed uint64) testupstream.Module {
	r := rand.New(rand.NewPCG(seed, 0x6d6f6470726f7879))
	files := map[string]string{
		"big.go": "// Package big carries benchmark data.\npackage big\n",
	}
	for i := 0; size > 0; i++ {
		n := min(size, fileSize)
		files[fmt.Sprintf("data/blob%03d.bin", i)] = randomString(r, n)
		size -= n
	}
	return testupstream.Module{Path: path, Version: "v1.0.0", Files: files}
}

func randomString(r *rand.Rand, n int) string {
	var b strings.Builder
	b.Grow(n + 8)
	var w [8]byte
	for b.Len() < n {
		v := r.Uint64()
		for j := range w {
			w[j] = byte(v >> (8 * j))
		}
		b.Write(w[:min(8, n-b.Len())])
	}
	return b.String()
}

// artifactURLs returns base/<path>/@v/<version>.<ext> for every module and ext.
func artifactURLs(base string, mods []testupstream.Module, exts ...string) []string {
	var urls []string
	for _, m := range mods {
		for _, ext := range exts {
			// The generated paths and versions need no case escaping.
			urls = append(urls, fmt.Sprintf("%s/%s/@v/%s.%s", base, m.Path, m.Version, ext))
		}
	}
	return urls
}
