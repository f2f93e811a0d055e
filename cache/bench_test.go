package cache

import (
	"bytes"
	"fmt"
	"io"
	"testing"
)

// Benchmarks use the default options (512 KiB chunks, fsync on), as a
// server would.

// BenchmarkGetSmall is the warm path of a .info or .mod request.
func BenchmarkGetSmall(b *testing.B) {
	s := openBench(b)
	info := []byte(`{"Version":"v1.2.3","Time":"2024-05-06T07:08:09Z","Origin":{"VCS":"git","URL":"https://example.com/m","Ref":"refs/tags/v1.2.3","Hash":"0123456789abcdef0123456789abcdef01234567"}}`)
	if _, err := s.put(keyInfo, bytes.NewReader(info), Meta{Hash: "h1:abc=", Upstream: "https://mirror.example.com/go"}); err != nil {
		b.Fatal(err)
	}
	b.SetBytes(int64(len(info)))
	b.ReportAllocs()
	for b.Loop() {
		data, _, err := s.Get(keyInfo)
		if err != nil || len(data) != len(info) {
			b.Fatal(err)
		}
	}
}

// BenchmarkStatSmall is the conditional-request path (ETag, Last-Modified).
func BenchmarkStatSmall(b *testing.B) {
	s := openBench(b)
	if _, err := s.put(keyInfo, bytes.NewReader([]byte(`{"Version":"v1.2.3"}`)), Meta{}); err != nil {
		b.Fatal(err)
	}
	b.ReportAllocs()
	for b.Loop() {
		if _, err := s.Stat(keyInfo); err != nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkReaderZip streams an 8 MiB zip: "Read32K" as net/http's copy
// loop does, "WriteTo" as io.Copy does.
func BenchmarkReaderZip(b *testing.B) {
	s := openBench(b)
	data := content(8<<20, 1)
	if _, err := s.put(keyZip, bytes.NewReader(data), Meta{}); err != nil {
		b.Fatal(err)
	}
	b.Run("Read32K", func(b *testing.B) {
		buf := make([]byte, 32<<10)
		b.SetBytes(int64(len(data)))
		b.ReportAllocs()
		for b.Loop() {
			r, err := s.Open(keyZip)
			if err != nil {
				b.Fatal(err)
			}
			if n, err := io.CopyBuffer(onlyWriter{io.Discard}, onlyReader{r}, buf); err != nil || n != int64(len(data)) {
				b.Fatal(n, err)
			}
		}
	})
	b.Run("WriteTo", func(b *testing.B) {
		b.SetBytes(int64(len(data)))
		b.ReportAllocs()
		for b.Loop() {
			r, err := s.Open(keyZip)
			if err != nil {
				b.Fatal(err)
			}
			if n, err := r.WriteTo(io.Discard); err != nil || n != int64(len(data)) {
				b.Fatal(n, err)
			}
		}
	})
}

// BenchmarkPutZip stores 8 MiB zips (two staging transactions and a
// publishing one, each fsynced).
func BenchmarkPutZip(b *testing.B) {
	s := openBench(b)
	data := content(8<<20, 2)
	b.SetBytes(int64(len(data)))
	b.ReportAllocs()
	i := 0
	for b.Loop() {
		k := Key{Path: "example.com/bench", Version: fmt.Sprintf("v1.0.%d", i), Kind: KindZip}
		i++
		if _, err := s.put(k, bytes.NewReader(data), Meta{}); err != nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkPutSmall stores .mod files: one transaction each.
func BenchmarkPutSmall(b *testing.B) {
	s := openBench(b)
	mod := []byte("module example.com/bench\n\ngo 1.22\n\nrequire golang.org/x/mod v0.20.0\n")
	b.ReportAllocs()
	i := 0
	for b.Loop() {
		k := Key{Path: "example.com/bench", Version: fmt.Sprintf("v1.0.%d", i), Kind: KindMod}
		i++
		if _, err := s.put(k, bytes.NewReader(mod), Meta{}); err != nil {
			b.Fatal(err)
		}
	}
}

func openBench(b *testing.B) *Store {
	b.Helper()
	s, err := Open(b.TempDir()+"/store.db", Options{})
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() {
		if err := s.Close(); err != nil {
			b.Error(err)
		}
	})
	return s
}

// onlyReader and onlyWriter hide WriteTo and ReadFrom, forcing the
// buffered copy loop.
type onlyReader struct{ io.Reader }
type onlyWriter struct{ io.Writer }
