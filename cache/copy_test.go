package cache

import (
	"strings"
	"testing"
)

func TestCopyMetaAndKV(t *testing.T) {
	src, dst := openTest(t, Options{}), openTest(t, Options{})
	for k, v := range map[string]string{"sumdb/a/latest": "new-a", "sumdb/b/latest": "new-b", "list/x": "v1.0.0\n"} {
		if err := src.PutEntry(k, []byte(v)); err != nil {
			t.Fatal(err)
		}
	}
	if err := dst.PutEntry("sumdb/a/latest", []byte("old-a")); err != nil {
		t.Fatal(err)
	}
	for k, v := range map[string]string{"t1": "one", "t2": "two"} {
		if err := src.PutKV("tiles", k, []byte(v)); err != nil {
			t.Fatal(err)
		}
	}
	if err := src.PutKV("other", "k", []byte("v")); err != nil {
		t.Fatal(err)
	}
	if err := dst.PutKV("tiles", "t1", []byte("kept")); err != nil {
		t.Fatal(err)
	}

	onlySumDB := func(k string) bool { return strings.HasPrefix(k, "sumdb/") }
	for _, tt := range []struct {
		overwrite bool
		written   int
		wantA     string
	}{
		{overwrite: false, written: 1, wantA: "old-a"}, // b only
		{overwrite: true, written: 2, wantA: "new-a"},  // a and b
	} {
		n, err := src.CopyMetaTo(dst, onlySumDB, tt.overwrite)
		if err != nil || n != tt.written {
			t.Fatalf("CopyMetaTo(overwrite=%v) = %d, %v; want %d", tt.overwrite, n, err, tt.written)
		}
		if e, err := dst.GetEntry("sumdb/a/latest"); err != nil || string(e.Value) != tt.wantA {
			t.Errorf("overwrite=%v: sumdb/a/latest = %q, %v; want %q", tt.overwrite, e.Value, err, tt.wantA)
		}
	}
	if _, err := dst.GetEntry("list/x"); err == nil {
		t.Error("CopyMetaTo copied an entry keep refused")
	}

	n, err := src.CopyKVTo(dst, func(b string) bool { return b == "tiles" })
	if err != nil || n != 1 {
		t.Fatalf("CopyKVTo = %d, %v; want 1 (t2; t1 is immutable in dst)", n, err)
	}
	for k, want := range map[string]string{"t1": "kept", "t2": "two"} {
		if v, err := dst.GetKV("tiles", k); err != nil || string(v) != want {
			t.Errorf("tiles/%s = %q, %v; want %q", k, v, err, want)
		}
	}
	if _, err := dst.GetKV("other", "k"); err == nil {
		t.Error("CopyKVTo copied a bucket keep refused")
	}
}
