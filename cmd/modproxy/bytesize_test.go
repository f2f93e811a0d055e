package main

import "testing"

func TestByteSize(t *testing.T) {
	tests := []struct {
		in   string
		want int64
		ok   bool
	}{
		{"0", 0, true},
		{"1048576", 1 << 20, true},
		{"64MiB", 64 << 20, true},
		{"64mib", 64 << 20, true},
		{"64M", 64 << 20, true},
		{"500MB", 500e6, true},
		{" 2 GiB ", 2 << 30, true},
		{"1.5GB", 1.5e9, true},
		{"4kB", 4000, true},
		{"10B", 10, true},
		{"", 0, false},
		{"GiB", 0, false},
		{"-1", 0, false},
		{"-64MiB", 0, false},
		{"NaN", 0, false},
		{"Inf", 0, false},
		{"1e30TiB", 0, false},
		{"12 parsecs", 0, false},
		{"0x10", 0, false},
		{"1e3", 0, false},
		{"+5MiB", 0, false},
	}
	for _, tt := range tests {
		var b byteSize
		err := b.Set(tt.in)
		if (err == nil) != tt.ok {
			t.Errorf("Set(%q) error = %v, want ok=%v", tt.in, err, tt.ok)
			continue
		}
		if tt.ok && int64(b) != tt.want {
			t.Errorf("Set(%q) = %d, want %d", tt.in, int64(b), tt.want)
		}
	}
	for in, want := range map[byteSize]string{4 << 30: "4GiB", 64 << 20: "64MiB", 1000: "1000", 0: "0"} {
		if got := in.String(); got != want {
			t.Errorf("String(%d) = %q, want %q", int64(in), got, want)
		}
	}
}
