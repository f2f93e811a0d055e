package s3store

import (
	"bytes"
	"context"
	"errors"
	"net"
	"strings"
	"testing"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/service/s3"

	"github.com/modproxy/modproxy/cache"
	"github.com/modproxy/modproxy/cache/internal/grant"
)

// Objects that modproxy did not write, or that were changed behind its
// back, are errors, never served as artifacts.
func TestForeignAndDamagedObjects(t *testing.T) {
	s := leaseStores(t, 1, 0)[0]
	k := cache.Key{Path: "example.com/m", Version: "v1.0.0", Kind: cache.KindZip}
	raw := func(body string, md map[string]string) {
		t.Helper()
		_, err := s.c.PutObject(context.Background(), &s3.PutObjectInput{Bucket: &s.cfg.Bucket, Key: aws.String(s.artifactKey(k)),
			Body: strings.NewReader(body), ContentLength: aws.Int64(int64(len(body))), Metadata: md})
		if err != nil {
			t.Fatal(err)
		}
	}
	good, err := encodeMeta(cache.Meta{Size: 5, SHA256: [32]byte{1}})
	if err != nil {
		t.Fatal(err)
	}
	lying, _ := encodeMeta(cache.Meta{Size: 999})
	for _, c := range []struct {
		name string
		body string
		md   map[string]string
		want string
	}{
		{"no modproxy metadata", "hello", nil, "no modproxy metadata"},
		{"metadata not base64", "hello", map[string]string{metaHeader: "%%%"}, "modproxy metadata"},
		{"metadata not JSON", "hello", map[string]string{metaHeader: "bm90IGpzb24"}, "modproxy metadata"},
		{"lying size", "hello", map[string]string{metaHeader: lying}, "damaged object"},
		{"content changed (SHA-256)", "hello", map[string]string{metaHeader: good}, "does not match"},
	} {
		raw(c.body, c.md)
		_, _, err := s.Get(k)
		if err == nil || !strings.Contains(err.Error(), c.want) || errors.Is(err, cache.ErrNotFound) {
			t.Errorf("%s: get: %v, want an error with %q", c.name, err, c.want)
		}
	}
	// A put does not overwrite what is there (immutability): the damaged
	// object stays an error until it is deleted or quarantined.
	s.Put(k, bytes.NewReader([]byte("x")), cache.Meta{}, grant.Write{})
	if _, _, err := s.Get(k); err == nil {
		t.Error("a put replaced a stored object")
	}
	if err := s.Quarantine(k, "damaged"); err != nil {
		t.Fatal(err)
	}
	if _, err := s.Put(k, bytes.NewReader([]byte("x")), cache.Meta{}, grant.Write{}); err != nil {
		t.Fatal(err)
	}
	if data, _, err := s.Get(k); err != nil || string(data) != "x" {
		t.Errorf("after quarantine and put: %q %v", data, err)
	}
}

// A bucket endpoint that does not answer fails New within the op timeout.
func TestUnreachableEndpoint(t *testing.T) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close() // accepts (in the backlog) and never answers
	for _, kv := range [][2]string{{"AWS_ACCESS_KEY_ID", "x"}, {"AWS_SECRET_ACCESS_KEY", "x"}, {"AWS_REGION", "us-east-1"}, {"AWS_EC2_METADATA_DISABLED", "true"}} {
		t.Setenv(kv[0], kv[1])
	}
	start := time.Now()
	_, err = New(context.Background(), Config{Bucket: "b", Endpoint: "http://" + l.Addr().String(), PathStyle: true, OpTimeout: time.Second})
	if err == nil {
		t.Fatal("New on a silent endpoint succeeded")
	}
	if d := time.Since(start); d > 10*time.Second {
		t.Errorf("New took %v with a 1s op timeout", d)
	}
	if _, err := New(context.Background(), Config{}); err == nil {
		t.Error("New without a bucket succeeded")
	}
}
