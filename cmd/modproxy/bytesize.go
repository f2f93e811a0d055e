package main

import (
	"fmt"
	"math"
	"strconv"
	"strings"
)

// byteSize is a flag value of bytes written as a plain number or with a
// unit: 500MB, 2GiB, 64MiB (kB, MB, GB, TB are powers of 1000; KiB, MiB,
// GiB, TiB of 1024).
type byteSize int64

var byteUnits = []struct {
	suffix string
	mult   float64
}{
	{"kib", 1 << 10}, {"mib", 1 << 20}, {"gib", 1 << 30}, {"tib", 1 << 40},
	{"kb", 1e3}, {"mb", 1e6}, {"gb", 1e9}, {"tb", 1e12},
	{"k", 1 << 10}, {"m", 1 << 20}, {"g", 1 << 30}, {"t", 1 << 40},
	{"b", 1},
}

func (b *byteSize) Set(s string) error {
	t := strings.ToLower(strings.TrimSpace(s))
	mult := 1.0
	for _, u := range byteUnits {
		if num, ok := strings.CutSuffix(t, u.suffix); ok {
			t, mult = strings.TrimSpace(num), u.mult
			break
		}
	}
	// Digits and a point only (and a sign, refused below): no exponent,
	// hex, NaN or Inf, which ParseFloat would take.
	v, err := strconv.ParseFloat(t, 64)
	if err != nil || strings.Trim(strings.TrimPrefix(t, "-"), "0123456789.") != "" {
		return fmt.Errorf("%q is not a size (want e.g. 500MB, 2GiB or a number of bytes)", s)
	}
	if v < 0 {
		return fmt.Errorf("%q: a size cannot be negative", s)
	}
	if v*mult > math.MaxInt64 {
		return fmt.Errorf("%q is too large", s)
	}
	*b = byteSize(v * mult)
	return nil
}

func (b *byteSize) String() string {
	v := int64(*b)
	for _, u := range []struct {
		suffix string
		mult   int64
	}{{"GiB", 1 << 30}, {"MiB", 1 << 20}, {"KiB", 1 << 10}} {
		if v != 0 && v%u.mult == 0 {
			return strconv.FormatInt(v/u.mult, 10) + u.suffix
		}
	}
	return strconv.FormatInt(v, 10)
}

func (b *byteSize) Type() string { return "size" }
