package main

import (
	"strings"
	"testing"
	"time"
)

func TestParseSize(t *testing.T) {
	for _, c := range []struct {
		in   string
		want int64
		ok   bool
	}{
		{"0", 0, true}, {"1", 1, true}, {"20GiB", 20 << 30, true}, {"20gib", 20 << 30, true},
		{"1.5GB", 1_500_000_000, true}, {"512MiB", 512 << 20, true}, {" 16GiB ", 16 << 30, true}, {"4G", 4 << 30, true},
		{"", 0, false}, {"-1", 0, false}, {"10XB", 0, false}, {"GiB", 0, false}, {"1e3", 0, false}, {"99999999TiB", 0, false},
	} {
		got, err := parseSize(c.in)
		if (err == nil) != c.ok || got != c.want {
			t.Errorf("parseSize(%q) = %d, %v; want %d ok=%v", c.in, got, err, c.want, c.ok)
		}
	}
}

func TestStorageConfigValidate(t *testing.T) {
	base := storageConfig{cacheSize: "0", s3LeaseTTL: 30 * time.Second}
	for _, c := range []struct {
		name    string
		edit    func(*storageConfig)
		changed []string
		want    string // "" for valid
	}{
		{"single store", func(*storageConfig) {}, nil, ""},
		{"bucket", func(c *storageConfig) { c.s3Bucket = "b" }, []string{"s3-bucket"}, ""},
		{"bucket given empty", func(c *storageConfig) {}, []string{"s3-bucket"}, "--s3-bucket is empty"},
		{"prefix without bucket", func(c *storageConfig) { c.s3Prefix = "p/" }, []string{"s3-prefix"}, "--s3-prefix needs --s3-bucket"},
		{"endpoint without bucket", func(c *storageConfig) { c.s3Endpoint = "http://x" }, []string{"s3-endpoint"}, "--s3-endpoint needs --s3-bucket"},
		{"bucket with spaces", func(c *storageConfig) { c.s3Bucket = " b" }, []string{"s3-bucket"}, "surrounding spaces"},
		{"bad cache size", func(c *storageConfig) { c.cacheSize = "lots" }, nil, "invalid --cache-size"},
		{"zero lease", func(c *storageConfig) { c.s3LeaseTTL = 0 }, nil, "invalid --s3-lease-ttl"},
	} {
		sc := base
		c.edit(&sc)
		changed := func(name string) bool {
			for _, n := range c.changed {
				if n == name {
					return true
				}
			}
			return false
		}
		err := sc.validate(changed)
		if c.want == "" && err != nil || c.want != "" && (err == nil || !strings.Contains(err.Error(), c.want)) {
			t.Errorf("%s: %v, want %q", c.name, err, c.want)
		}
	}
}
