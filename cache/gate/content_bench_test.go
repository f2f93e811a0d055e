package gate

import (
	"archive/zip"
	"io/fs"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"testing"
)

// BenchmarkCheckZipFile measures the check every cold zip passes before it
// is served: inflating and hashing each entry for h1:. The content is the
// Go files of the local toolchain's source tree (GOROOT/src without
// testdata, about 88 MB in 6,500 files), deflated as the go command does,
// so that the inflate works on what module zips hold, not on random bytes.
//
//	go test -run X -bench CheckZipFile -cpuprofile cpu.out ./cache/gate/
func BenchmarkCheckZipFile(b *testing.B) {
	src := filepath.Join(runtime.GOROOT(), "src")
	file := filepath.Join(b.TempDir(), "src.zip")
	out, err := os.Create(file)
	if err != nil {
		b.Fatal(err)
	}
	zw := zip.NewWriter(out)
	var raw int64
	err = filepath.WalkDir(src, func(p string, d fs.DirEntry, err error) error {
		if err != nil || d.IsDir() || !d.Type().IsRegular() || strings.Contains(p, "testdata") || !strings.HasSuffix(p, ".go") {
			return err
		}
		data, err := os.ReadFile(p)
		if err != nil {
			return err
		}
		rel, _ := filepath.Rel(src, p)
		w, err := zw.CreateHeader(&zip.FileHeader{Name: modPath + "@" + modVersion + "/" + filepath.ToSlash(rel), Method: zip.Deflate})
		if err != nil {
			return err
		}
		raw += int64(len(data))
		_, err = w.Write(data)
		return err
	})
	if err == nil {
		err = zw.Close()
	}
	if err == nil {
		err = out.Close()
	}
	if err != nil {
		b.Fatal(err)
	}
	b.SetBytes(raw) // per inflated byte, which is what the work scales with
	for b.Loop() {
		if _, err := CheckZipFile(modPath, modVersion, file); err != nil {
			b.Fatal(err)
		}
	}
}
