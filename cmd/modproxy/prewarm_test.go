package main

import (
	"context"
	"encoding/json"
	"path/filepath"
	"strings"
	"testing"

	"github.com/modproxy/modproxy/cache"
	"github.com/modproxy/modproxy/cache/gate"
	"github.com/modproxy/modproxy/modgraph"
)

func TestPrintDryRun(t *testing.T) {
	plan := &modgraph.Plan{
		Needs: []modgraph.Need{
			{Path: "example.com/a", Version: "v1.0.0", Zip: true, ZipHash: "h1:zip"},
			{Path: "example.com/b", Version: "v1.0.0"},
		},
		Notes: []string{"graph walk"},
	}
	store, err := cache.Open(filepath.Join(t.TempDir(), "s.db"), cache.Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer store.Close()
	g, err := gate.New(gate.Config{Store: store, TempDir: t.TempDir()})
	if err != nil {
		t.Fatal(err)
	}
	tk, err := g.CheckSmall(context.Background(), cache.Key{Path: "example.com/b", Version: "v1.0.0", Kind: cache.KindMod}, []byte("module example.com/b\n"), gate.Origin{})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := g.Commit(tk); err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name     string
		store    *cache.Store // nil: --server mode, stored state unknown
		wantText []string
		stored   *int
	}{
		{"db", store, []string{"example.com/a@v1.0.0 info,mod,zip\n", "example.com/b@v1.0.0 info,mod (stored: mod)\n",
			"dry run (db x): 2 module versions, 5 files, 1 already stored, 4 to fetch;"}, ptr(1)},
		{"server", nil, []string{"example.com/b@v1.0.0 info,mod\n", "dry run (server x): 2 module versions, 5 files;"}, nil},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			sum := prewarmSummary{Mode: tt.name, Target: "x", Notes: plan.Notes}
			var text strings.Builder
			if err := printDryRun(&text, sum, plan, tt.store, false); err != nil {
				t.Fatal(err)
			}
			for _, w := range tt.wantText {
				if !strings.Contains(text.String(), w) {
					t.Errorf("text lacks %q:\n%s", w, text.String())
				}
			}
			var js strings.Builder
			if err := printDryRun(&js, sum, plan, tt.store, true); err != nil {
				t.Fatal(err)
			}
			var l dryRunList
			if err := json.Unmarshal([]byte(js.String()), &l); err != nil {
				t.Fatal(err)
			}
			if l.Files != 5 || len(l.Modules) != 2 || !l.Modules[0].GoSum || l.Modules[1].GoSum {
				t.Errorf("json: %+v", l)
			}
			if (l.Stored == nil) != (tt.stored == nil) || l.Stored != nil && *l.Stored != *tt.stored {
				t.Errorf("json already_stored = %v, want %v", l.Stored, tt.stored)
			}
		})
	}
}

func ptr[T any](v T) *T { return &v }
