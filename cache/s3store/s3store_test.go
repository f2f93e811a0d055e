package s3store_test

import (
	"context"
	"testing"

	"github.com/modproxy/modproxy/cache/s3store"
	"github.com/modproxy/modproxy/cache/storetest"
	"github.com/modproxy/modproxy/internal/tests3"
)

func newStore(t *testing.T, srv *tests3.Server, bucket, prefix string) *s3store.Store {
	t.Helper()
	s, err := s3store.New(context.Background(), s3store.Config{
		Bucket: bucket, Prefix: prefix, Endpoint: srv.URL, PathStyle: true, TempDir: t.TempDir(),
	})
	if err != nil {
		t.Fatal(err)
	}
	return s
}

func TestCompliance(t *testing.T) {
	srv := tests3.Start(t)
	srv.SetEnv(t)
	storetest.Run(t, func(t *testing.T) storetest.Backend {
		return newStore(t, srv, srv.NewBucket(t), "modproxy")
	})
}
