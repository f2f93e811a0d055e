package proxy

import (
	"context"
	"io"
	"log/slog"
	"path/filepath"
	"testing"

	"github.com/modproxy/modproxy/cache"
	"github.com/modproxy/modproxy/cache/gate"
)

// walkCountingStore counts Walks and runs during, if set, inside each.
type walkCountingStore struct {
	*cache.Store
	walks  int
	during func()
}

func (s *walkCountingStore) Walk(fn func(cache.Key, cache.Meta) error) error {
	s.walks++
	if s.during != nil {
		s.during()
	}
	return s.Store.Walk(fn)
}

func markerValue(t *testing.T, st Store) string {
	t.Helper()
	e, err := st.GetEntry(gate.UnverifiedMarker)
	if err != nil {
		return "<none>"
	}
	return string(e.Value)
}

// The start of the background verification walks the store only when its
// marker says it may hold unverified artifacts (or, written by an older
// build, has no marker); a pass that leaves nothing to verify marks it
// clean, unless an unverified commit changed the marker meanwhile.
func TestReverifyMarker(t *testing.T) {
	cases := []struct {
		name      string
		marker    string // "" none
		during    string // marker written during the walk, "" none
		wantStart bool
		wantAfter string
	}{
		{"older store, no marker", "", "", true, gate.MarkerClean},
		{"pending", "pending 1", "", true, gate.MarkerClean},
		{"clean", gate.MarkerClean, "", false, gate.MarkerClean},
		{"unverified commit during the pass", "pending 1", "pending 2", true, "pending 2"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			cs, err := cache.Open(filepath.Join(t.TempDir(), "store.db"), cache.Options{})
			if err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() { cs.Close() })
			st := &walkCountingStore{Store: cs}
			if c.marker != "" {
				if err := st.PutEntry(gate.UnverifiedMarker, []byte(c.marker)); err != nil {
					t.Fatal(err)
				}
			}
			if c.during != "" {
				st.during = func() {
					if err := st.PutEntry(gate.UnverifiedMarker, []byte(c.during)); err != nil {
						t.Error(err)
					}
				}
			}
			r := &reverifier{store: st, log: slog.New(slog.NewTextHandler(io.Discard, nil)), m: NewMetrics(nil)}
			if got := r.startPending(); got != c.wantStart {
				t.Fatalf("start pass wanted = %v, want %v", got, c.wantStart)
			}
			if !c.wantStart {
				return
			}
			done, err := r.pass(context.Background())
			if !done || err != nil || st.walks != 1 {
				t.Fatalf("pass: done %v, err %v, %d walks", done, err, st.walks)
			}
			if got := markerValue(t, st); got != c.wantAfter {
				t.Errorf("marker after the pass = %q, want %q", got, c.wantAfter)
			}
			if got := r.startPending(); got != (c.wantAfter != gate.MarkerClean) {
				t.Errorf("next start walks = %v", got)
			}
		})
	}
}
