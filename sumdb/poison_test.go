package sumdb

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"golang.org/x/mod/sumdb/tlog"

	"github.com/modproxy/modproxy/internal/testsumdb"
	"github.com/modproxy/modproxy/internal/testupstream"
)

// logBuffer collects a logger's output for tests.
type logBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (b *logBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

func (b *logBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}

// poisonWorld is a database with a few modules whose records and tiles a
// first verifier put in st.
type poisonWorld struct {
	db   *testsumdb.DB
	st   *memStore
	mods []mod
}

func newPoisonWorld(t *testing.T) *poisonWorld {
	t.Helper()
	w := &poisonWorld{db: testsumdb.New(t, "sum.example.test"), st: newMemStore()}
	for i := range 5 {
		m := makeMod(t, "example.com/m", fmt.Sprintf("v1.%d.0", i), fmt.Sprint(i))
		w.db.AddModule(m.path, m.version, m.gomod, m.zip)
		w.mods = append(w.mods, m)
	}
	v := newVerifier(t, testConfig(w.db), w.st)
	for _, m := range w.mods {
		if _, err := v.VerifyMod(context.Background(), m.path, m.version, m.gomod); err != nil {
			t.Fatal(err)
		}
	}
	return w
}

// verifier returns a new Verifier (a restarted proxy) over the world's
// store, with its logs and a registry to read its metrics from.
func (w *poisonWorld) verifier(t *testing.T, edit func(*Config)) (*Verifier, *logBuffer) {
	t.Helper()
	logs := &logBuffer{}
	cfg := testConfig(w.db)
	cfg.Logger = slog.New(slog.NewTextHandler(logs, nil))
	cfg.Registerer = prometheus.NewRegistry()
	if edit != nil {
		edit(&cfg)
	}
	return newVerifier(t, cfg, w.st), logs
}

func (w *poisonWorld) recordKey(m mod) string {
	return w.db.Name() + "/lookup/" + m.path + "@" + m.version
}

// storedTileKeys lists the hash tiles in bucket.
func (w *poisonWorld) storedTileKeys(bucket string) []string {
	var out []string
	for _, k := range w.st.keys(bucket) {
		if strings.Contains(k, "/tile/") && !strings.Contains(k, "/data/") {
			out = append(out, k)
		}
	}
	return out
}

// forgeRecordHash changes the go.mod hash in a stored lookup record,
// keeping the record well-formed and its signed tree note intact.
func forgeRecordHash(t *testing.T, rec []byte) []byte {
	t.Helper()
	i := bytes.Index(rec, []byte("/go.mod h1:"))
	if i < 0 {
		t.Fatalf("record has no go.mod line:\n%s", rec)
	}
	rec = bytes.Clone(rec)
	j := i + len("/go.mod h1:")
	if rec[j] == 'A' {
		rec[j] = 'B'
	} else {
		rec[j] = 'A'
	}
	return rec
}

func flipByte(data []byte) []byte {
	data = bytes.Clone(data)
	data[len(data)/2] ^= 0x55
	return data
}

// genuineTile fetches tile key ("<name>/tile/…") from the database itself.
func (w *poisonWorld) genuineTile(t *testing.T, key string) []byte {
	t.Helper()
	code, body := get(t, w.db.URL()+"/"+strings.TrimPrefix(key, w.db.Name()+"/"))
	if code != 200 {
		t.Fatalf("database tile %s: %d", key, code)
	}
	return []byte(body)
}

func TestPoisonedStoreIsSecurityEventNotUnavailable(t *testing.T) {
	ctx := context.Background()
	poisons := []struct {
		name   string
		poison func(t *testing.T, w *poisonWorld, m mod)
	}{
		{"forged record hash", func(t *testing.T, w *poisonWorld, m mod) {
			rec, err := w.st.GetKV(bucketVerified, w.recordKey(m))
			if err != nil {
				t.Fatal(err)
			}
			w.st.PutKV(bucketVerified, w.recordKey(m), forgeRecordHash(t, rec))
		}},
		{"garbage record", func(t *testing.T, w *poisonWorld, m mod) {
			w.st.PutKV(bucketVerified, w.recordKey(m), []byte("<html>login</html>"))
		}},
		{"flipped tiles", func(t *testing.T, w *poisonWorld, m mod) {
			for _, k := range w.storedTileKeys(bucketVerified) {
				data, _ := w.st.GetKV(bucketVerified, k)
				w.st.PutKV(bucketVerified, k, flipByte(data))
			}
		}},
		{"short tiles", func(t *testing.T, w *poisonWorld, m mod) {
			for _, k := range w.storedTileKeys(bucketVerified) {
				data, _ := w.st.GetKV(bucketVerified, k)
				w.st.PutKV(bucketVerified, k, data[:len(data)-1])
			}
		}},
	}
	for _, p := range poisons {
		t.Run(p.name+"/database up", func(t *testing.T) {
			w := newPoisonWorld(t)
			m := w.mods[2]
			p.poison(t, w, m)
			v, logs := w.verifier(t, nil)
			w.db.ResetRequests()
			if _, err := v.VerifyMod(ctx, m.path, m.version, m.gomod); err != nil {
				t.Fatalf("genuine go.mod with a poisoned store: %v", err)
			}
			if got := counterValue(t, v.metrics.security.WithLabelValues(w.db.Name())); got < 1 {
				t.Errorf("security errors = %v, want the poisoned data counted", got)
			}
			if !strings.Contains(logs.String(), "level=ERROR") {
				t.Errorf("no Error log for the poisoned store:\n%s", logs)
			}
			if n := w.db.RequestCount("/lookup/"); n != 1 {
				t.Errorf("database lookups = %d, want 1 (the refetch)", n)
			}
			// What is stored now is the database's own data.
			rec, err := w.st.GetKV(bucketVerified, w.recordKey(m))
			if err != nil {
				t.Fatal(err)
			}
			want, _ := testsumdb.HashMod(m.gomod)
			if !bytes.Contains(rec, []byte(m.version+"/go.mod "+want+"\n")) {
				t.Errorf("stored record after repair:\n%s", rec)
			}
			for _, k := range w.storedTileKeys(bucketVerified) {
				if data, _ := w.st.GetKV(bucketVerified, k); !bytes.Equal(data, w.genuineTile(t, k)) && strings.Contains(k, "/0/") {
					t.Errorf("stored tile %s still differs from the database's", k)
				}
			}
			// And the next verification is a plain store hit.
			v2, _ := w.verifier(t, nil)
			w.db.ResetRequests()
			if _, err := v2.VerifyMod(ctx, m.path, m.version, m.gomod); err != nil {
				t.Fatal(err)
			}
			if n := w.db.RequestCount("/lookup/"); n != 0 {
				t.Errorf("after repair: %d database lookups, want 0", n)
			}
		})
		for _, mode := range []string{"database down", "offline"} {
			t.Run(p.name+"/"+mode, func(t *testing.T) {
				w := newPoisonWorld(t)
				m := w.mods[2]
				p.poison(t, w, m)
				v, logs := w.verifier(t, func(c *Config) { c.Offline = mode == "offline" })
				w.db.SetDown(true)
				_, err := v.VerifyMod(ctx, m.path, m.version, m.gomod)
				if !errors.Is(err, ErrSecurity) || errors.Is(err, ErrUnavailable) {
					t.Fatalf("err = %v; want ErrSecurity and not ErrUnavailable (which --sumdb-fail-open would accept)", err)
				}
				if got := counterValue(t, v.metrics.verifications.WithLabelValues("mod", "security")); got != 1 {
					t.Errorf("verifications{mod,security} = %v, want 1", got)
				}
				if got := counterValue(t, v.metrics.security.WithLabelValues(w.db.Name())); got < 1 {
					t.Errorf("security errors = %v", got)
				}
				if !strings.Contains(logs.String(), "level=ERROR") {
					t.Errorf("no Error log:\n%s", logs)
				}
				// Bad data is not a sticky misbehavior: once the database
				// answers again, the store is repaired.
				if mode == "database down" {
					w.db.SetDown(false)
					if _, err := v.VerifyMod(ctx, m.path, m.version, m.gomod); err != nil {
						t.Fatalf("database back: %v", err)
					}
				}
			})
		}
	}
}

// A module that is simply not in an incomplete store, with the database
// down, is still "unavailable": fail-open keeps its meaning.
func TestMissingDataIsStillUnavailable(t *testing.T) {
	w := newPoisonWorld(t)
	other := makeMod(t, "example.com/other", "v1.0.0", "o")
	w.db.AddModule(other.path, other.version, other.gomod, other.zip)
	v, _ := w.verifier(t, nil)
	w.db.SetDown(true)
	_, err := v.VerifyMod(context.Background(), other.path, other.version, other.gomod)
	if !errors.Is(err, ErrUnavailable) || errors.Is(err, ErrSecurity) {
		t.Fatalf("err = %v, want ErrUnavailable", err)
	}
	if got := counterValue(t, v.metrics.security.WithLabelValues(w.db.Name())); got != 0 {
		t.Errorf("security errors = %v, want 0", got)
	}
}

func TestHandlerDropsStoredTileThatFailsAuthentication(t *testing.T) {
	for _, mode := range []string{"database up", "database down", "offline"} {
		t.Run(mode, func(t *testing.T) {
			w := newPoisonWorld(t)
			keys := w.storedTileKeys(bucketVerified)
			if len(keys) == 0 {
				t.Fatal("no stored tiles")
			}
			key := keys[0]
			genuine := w.genuineTile(t, key)
			// Poisoned both where verified tiles live and where older
			// versions kept passed-through ones.
			w.st.PutKV(bucketVerified, key, flipByte(genuine))
			w.st.PutKV(bucketUnverified, key, flipByte(genuine))
			v, logs := w.verifier(t, func(c *Config) { c.Offline = mode == "offline" })
			w.db.SetDown(mode == "database down")
			srv := httptest.NewServer(v.Handler())
			defer srv.Close()
			code, body := get(t, srv.URL+"/sumdb/"+key)
			switch {
			case mode == "database up" && (code != 200 || body != string(genuine)):
				t.Fatalf("tile: %d, genuine=%v; want 200 with the database's tile", code, body == string(genuine))
			case mode != "database up" && (code == 200 || strings.Contains(body, string(flipByte(genuine)))):
				t.Fatalf("tile with no good source: %d; want an error, never the poisoned tile", code)
			}
			if got := counterValue(t, v.metrics.security.WithLabelValues(w.db.Name())); got < 1 {
				t.Errorf("security errors = %v", got)
			}
			if !strings.Contains(logs.String(), "level=ERROR") {
				t.Errorf("no Error log:\n%s", logs)
			}
			for _, b := range []string{bucketVerified, bucketUnverified} {
				if data, err := w.st.GetKV(b, key); err == nil && !bytes.Equal(data, genuine) {
					t.Errorf("poisoned tile still in %s", b)
				}
			}
		})
	}
}

// passthroughUpstreams starts a module proxy passing the database through
// that tampers with every tile (bad) and one that passes it faithfully
// (good).
func passthroughUpstreams(t *testing.T, db *testsumdb.DB) (bad, good *testupstream.Server) {
	t.Helper()
	for _, p := range []**testupstream.Server{&bad, &good} {
		s, err := testupstream.New()
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(s.Close)
		s.PassThroughSumDB(db.Name(), db.URL())
		*p = s
	}
	bad.SetFaults(testupstream.Fault{Match: func(p string) bool { return strings.Contains(p, "/tile/") }, Tamper: true})
	return bad, good
}

func TestPassthroughTileFailingAuthenticationIsNeverStored(t *testing.T) {
	ctx := context.Background()
	for _, withGood := range []bool{true, false} {
		t.Run(fmt.Sprint("good source=", withGood), func(t *testing.T) {
			db := testsumdb.New(t, "sum.example.test")
			var mods []mod
			for i := range 3 {
				m := makeMod(t, "example.com/m", fmt.Sprintf("v1.%d.0", i), fmt.Sprint(i))
				db.AddModule(m.path, m.version, m.gomod, m.zip)
				mods = append(mods, m)
			}
			bad, good := passthroughUpstreams(t, db)
			st := newMemStore()
			logs := &logBuffer{}
			cfg := testConfig(db)
			cfg.URL = "http://127.0.0.1:1" // never asked directly
			cfg.Upstreams = []string{bad.URL()}
			if withGood {
				cfg.Upstreams = append(cfg.Upstreams, good.URL())
			}
			cfg.Logger = slog.New(slog.NewTextHandler(logs, nil))
			cfg.Registerer = prometheus.NewRegistry()
			v := newVerifier(t, cfg, st)

			// A verifier whose first contact is a verification fetches
			// the tiles through its x/mod client.
			st0 := newMemStore()
			cfg0 := cfg
			cfg0.Registerer = prometheus.NewRegistry()
			v0 := newVerifier(t, cfg0, st0)
			_, err := v0.VerifyMod(ctx, mods[0].path, mods[0].version, mods[0].gomod)
			checkTamperedVerify(t, "first VerifyMod", withGood, err)
			if got := counterValue(t, v0.metrics.security.WithLabelValues(db.Name())); got < 1 {
				t.Errorf("first verifier: security errors = %v", got)
			}
			for _, k := range st0.keys(bucketVerified) {
				if strings.Contains(k, "/tile/") {
					data, _ := st0.GetKV(bucketVerified, k)
					if want := get2(t, db.URL()+"/"+strings.TrimPrefix(k, db.Name()+"/")); !bytes.Equal(data, want) {
						t.Errorf("first verifier stored %s, which differs from the database's tile", k)
					}
				}
			}
			if bad.Count("/tile/") == 0 {
				t.Error("the tampering upstream was never asked for a tile by the verifier")
			}

			// The handler, asked for a tile first (as the go command does
			// after /latest), never stores or serves the tampered one.
			srv := httptest.NewServer(v.Handler())
			defer srv.Close()
			base := srv.URL + "/sumdb/" + db.Name()
			code, body := get(t, base+"/latest")
			if code != 200 {
				t.Fatalf("latest: %d %s", code, body)
			}
			tile := tlog.Tile{H: 8, L: 0, N: 0, W: 3}
			code, body = get(t, base+"/"+tile.Path())
			genuine := string(get2(t, db.URL()+"/"+tile.Path()))
			if withGood && (code != 200 || body != genuine) {
				t.Fatalf("tile with a good source: %d, genuine=%v", code, body == genuine)
			}
			if !withGood && (code != 502 || !strings.Contains(body, "fails authentication")) {
				t.Fatalf("tile from a tampering source only: %d %q, want 502 naming the failed authentication", code, body)
			}

			// Verification goes through the same sources.
			_, err = v.VerifyMod(ctx, mods[1].path, mods[1].version, mods[1].gomod)
			checkTamperedVerify(t, "VerifyMod", withGood, err)
			if got := counterValue(t, v.metrics.security.WithLabelValues(db.Name())); got < 1 {
				t.Errorf("security errors = %v", got)
			}
			if !strings.Contains(logs.String(), "level=ERROR") || !strings.Contains(logs.String(), bad.URL()) {
				t.Errorf("the Error log does not name the tampering upstream:\n%s", logs)
			}
			// Nothing stored differs from the database.
			for _, b := range []string{bucketVerified, bucketUnverified} {
				for _, k := range st.keys(b) {
					if !strings.Contains(k, "/tile/") {
						continue
					}
					data, _ := st.GetKV(b, k)
					if want := get2(t, db.URL()+"/"+strings.TrimPrefix(k, db.Name()+"/")); !bytes.Equal(data, want) {
						t.Errorf("stored %s/%s differs from the database's tile", b, k)
					}
				}
			}
			if bad.Count("/tile/") == 0 {
				t.Error("the tampering upstream was never asked: the test proves nothing")
			}
		})
	}
}

// get2 is get returning the body of a 200 answer.
func get2(t *testing.T, url string) []byte {
	t.Helper()
	code, body := get(t, url)
	if code != 200 {
		t.Fatalf("GET %s: %d %s", url, code, body)
	}
	return []byte(body)
}

func TestMatchPatterns(t *testing.T) {
	tests := []struct {
		patterns, path string
		want           bool
	}{
		{"example.com/private", "example.com/private/foo", true},
		{"example.com/private", "example.com/Private/foo", true},
		{"example.com/private", "example.com/PRIVATE", true},
		{"example.com/Private", "example.com/private/foo", true},
		{"example.com/private", "EXAMPLE.com/private/foo", true},
		{"*.corp.example", "git.Corp.Example/x", true},
		{"example.com/priv", "example.com/private/foo", false}, // prefixes match whole elements
		{"example.com/private", "example.com/privatex/foo", false},
		{"", "example.com/private", false},
		{"other.example,example.com/p[a-z]ivate", "example.com/PRIVATE/foo", true},
		{"example.com/[Z-a]x", "example.com/Zx", true}, // a range lower-casing breaks still matches exactly
	}
	for _, tt := range tests {
		if got := MatchPatterns(tt.patterns, tt.path); got != tt.want {
			t.Errorf("MatchPatterns(%q, %q) = %v, want %v", tt.patterns, tt.path, got, tt.want)
		}
	}
}

// The handler refuses a case variant of a private path without asking the
// database, and Exempt agrees.
func TestHandlerPrivateCaseVariant(t *testing.T) {
	db := testsumdb.New(t, "sum.example.test")
	cfg := testConfig(db)
	cfg.Private = "example.com/private"
	v := newVerifier(t, cfg, newMemStore())
	srv := httptest.NewServer(v.Handler())
	defer srv.Close()
	for _, p := range []string{"example.com/private/foo", "example.com/!private/foo", "example.com/!p!r!i!v!a!t!e/foo"} {
		code, body := get(t, srv.URL+"/sumdb/"+db.Name()+"/lookup/"+p+"@v1.0.0")
		if code != 404 || !strings.Contains(body, "private") {
			t.Errorf("lookup %s: %d %q, want 404 private", p, code, body)
		}
	}
	if _, err := v.VerifyMod(context.Background(), "example.com/Private/foo", "v1.0.0", []byte("module example.com/Private/foo\n")); !errors.Is(err, ErrExempt) {
		t.Errorf("VerifyMod of a case variant: %v, want ErrExempt", err)
	}
	if n := db.RequestCount(""); n != 0 {
		t.Errorf("database got %d requests: %v", n, db.Requests())
	}
}

// A stored tree head whose signature does not check is a security error,
// never "unavailable", and the handler does not serve it.
func TestStoredTreeHeadWithBadSignature(t *testing.T) {
	w := newPoisonWorld(t)
	for _, key := range []string{latestKey(w.db.Name() + "/latest")} {
		e, err := w.st.GetEntry(key)
		if err != nil {
			t.Fatal(err)
		}
		w.st.PutEntry(key, flipByte(e.Value))
	}
	v, logs := w.verifier(t, nil)
	w.db.SetDown(true)
	m := w.mods[0]
	_, err := v.VerifyMod(context.Background(), m.path, m.version, m.gomod)
	if !errors.Is(err, ErrSecurity) || errors.Is(err, ErrUnavailable) {
		t.Fatalf("err = %v, want ErrSecurity and not ErrUnavailable", err)
	}
	srv := httptest.NewServer(v.Handler())
	defer srv.Close()
	code, body := get(t, srv.URL+"/sumdb/"+w.db.Name()+"/latest")
	if code == 200 {
		t.Fatalf("latest with only a badly signed head stored: 200 %q", body)
	}
	if !strings.Contains(logs.String(), "level=ERROR") {
		t.Errorf("no Error log:\n%s", logs)
	}
}

// A passthrough serving a /latest that is not signed by the database is
// skipped for the next one; a stored served head that fails its signature
// is not served.
func TestLatestFailingSignature(t *testing.T) {
	db := testsumdb.New(t, "sum.example.test")
	m := makeMod(t, "example.com/m", "v1.0.0", "m")
	db.AddModule(m.path, m.version, m.gomod, m.zip)
	bad, good := passthroughUpstreams(t, db)
	bad.SetFaults(testupstream.Fault{Match: func(p string) bool { return strings.HasSuffix(p, "/latest") }, Garbage: true})
	st := newMemStore()
	cfg := testConfig(db)
	cfg.URL = "http://127.0.0.1:1"
	cfg.Upstreams = []string{bad.URL(), good.URL()}
	cfg.Registerer = prometheus.NewRegistry()
	v := newVerifier(t, cfg, st)
	srv := httptest.NewServer(v.Handler())
	defer srv.Close()
	want := string(get2(t, db.URL()+"/latest"))
	if code, body := get(t, srv.URL+"/sumdb/"+db.Name()+"/latest"); code != 200 || body != want {
		t.Fatalf("latest: %d %q, want the database's head", code, body)
	}
	if got := counterValue(t, v.metrics.security.WithLabelValues(db.Name())); got != 1 {
		t.Errorf("security errors = %v, want 1", got)
	}
	// Poison the stored served head: it is not served, the database is
	// asked again.
	e, _ := st.GetEntry(v.servedLatestKey())
	st.PutEntry(v.servedLatestKey(), flipByte(e.Value))
	bad.SetFaults()
	if code, body := get(t, srv.URL+"/sumdb/"+db.Name()+"/latest"); code != 200 || body != want {
		t.Fatalf("latest over a poisoned stored head: %d %q", code, body)
	}
}

// Data tiles (records) are authenticated too: record by record against the
// tree's record hashes.
func TestHandlerDataTile(t *testing.T) {
	db := testsumdb.New(t, "sum.example.test")
	for i := range 3 {
		m := makeMod(t, "example.com/m", fmt.Sprintf("v1.%d.0", i), fmt.Sprint(i))
		db.AddModule(m.path, m.version, m.gomod, m.zip)
	}
	bad, good := passthroughUpstreams(t, db)
	for _, withGood := range []bool{true, false} {
		cfg := testConfig(db)
		cfg.URL = "http://127.0.0.1:1"
		cfg.Upstreams = []string{bad.URL()}
		if withGood {
			cfg.Upstreams = append(cfg.Upstreams, good.URL())
		}
		st := newMemStore()
		v := newVerifier(t, cfg, st)
		srv := httptest.NewServer(v.Handler())
		path := "/sumdb/" + db.Name() + "/tile/8/data/000.p/3"
		code, body := get(t, srv.URL+path)
		want := string(get2(t, db.URL()+"/tile/8/data/000.p/3"))
		if withGood && (code != 200 || body != want) {
			t.Errorf("data tile with a good source: %d, genuine=%v: %s", code, body == want, body)
		}
		if !withGood && code != 502 {
			t.Errorf("data tile from a tampering source only: %d", code)
		}
		for _, k := range st.keys(bucketVerified) {
			if strings.Contains(k, "/data/") {
				if data, _ := st.GetKV(bucketVerified, k); string(data) != want {
					t.Errorf("stored data tile differs from the database's")
				}
			}
		}
		srv.Close()
	}
}

// A passthrough that tampers with lookup records is skipped for one that
// does not; with none, the lookup is a security error, never unavailable.
func TestPassthroughRecordFailingAuthentication(t *testing.T) {
	ctx := context.Background()
	for _, withGood := range []bool{true, false} {
		t.Run(fmt.Sprint("good source=", withGood), func(t *testing.T) {
			db := testsumdb.New(t, "sum.example.test")
			m := makeMod(t, "example.com/m", "v1.0.0", "m")
			db.AddModule(m.path, m.version, m.gomod, m.zip)
			bad, good := passthroughUpstreams(t, db)
			bad.SetFaults(testupstream.Fault{Match: func(p string) bool { return strings.Contains(p, "/lookup/") }, Tamper: true})
			st := newMemStore()
			cfg := testConfig(db)
			cfg.URL = "http://127.0.0.1:1"
			cfg.Upstreams = []string{bad.URL()}
			if withGood {
				cfg.Upstreams = append(cfg.Upstreams, good.URL())
			}
			cfg.Registerer = prometheus.NewRegistry()
			v := newVerifier(t, cfg, st)
			_, err := v.VerifyMod(ctx, m.path, m.version, m.gomod)
			checkTamperedVerify(t, "VerifyMod", withGood, err)
			if got := counterValue(t, v.metrics.security.WithLabelValues(db.Name())); got < 1 {
				t.Errorf("security errors = %v", got)
			}
			if bad.Count("/lookup/") == 0 {
				t.Error("the tampering upstream was never asked: the test proves nothing")
			}
			rec, err := st.GetKV(bucketVerified, db.Name()+"/lookup/"+m.path+"@"+m.version)
			want, _ := testsumdb.HashMod(m.gomod)
			if withGood && (err != nil || !bytes.Contains(rec, []byte("/go.mod "+want+"\n"))) {
				t.Errorf("stored record: %v\n%s", err, rec)
			}
			if !withGood && err == nil {
				t.Errorf("a record was stored from the tampering source:\n%s", rec)
			}
		})
	}
}

// openHealth is a Health with the breaker: every upstream in open has its
// circuit open.
type openHealth struct{ open map[string]bool }

func (h openHealth) Allow(u string) (bool, string) {
	if h.open[u] {
		return false, "circuit_open"
	}
	return true, "healthy"
}
func (openHealth) Score(string) float64                    { return 1 }
func (openHealth) HedgeAfter(string) (time.Duration, bool) { return 0, false }
func (openHealth) RecordDecision(string, string, string)   {}

// A source skipped by its open circuit says nothing. With the good
// source's circuit open and the other source tampering, the good one is
// tried as the last resort rather than the verification failing on a
// prediction; and when every source was open, the one tried answering bad
// data stays a security error, never "unavailable" (which fail-open would
// act on).
func TestSkippedSourceNeverExcusesBadData(t *testing.T) {
	db := testsumdb.New(t, "sum.example.test")
	m := makeMod(t, "example.com/m", "v1.0.0", "0")
	db.AddModule(m.path, m.version, m.gomod, m.zip)
	bad, good := passthroughUpstreams(t, db)
	cfg := testConfig(db)
	cfg.URL = "http://127.0.0.1:1" // never asked directly
	cfg.Upstreams = []string{bad.URL(), good.URL()}
	cfg.Registerer = prometheus.NewRegistry()
	cfg.Health = openHealth{open: map[string]bool{good.URL(): true}}
	v := newVerifier(t, cfg, newMemStore())
	if _, err := v.VerifyMod(context.Background(), m.path, m.version, m.gomod); err != nil {
		t.Fatalf("VerifyMod with the good source's circuit open: %v; want it verified through the last resort", err)
	}
	if bad.Count("/tile/") == 0 || good.Count("/tile/") == 0 {
		t.Errorf("tiles asked: bad %d, good %d; want both (the good one as the last resort)", bad.Count("/tile/"), good.Count("/tile/"))
	}

	cfg.Health = openHealth{open: map[string]bool{bad.URL(): true, good.URL(): true}}
	cfg.Registerer = prometheus.NewRegistry()
	v = newVerifier(t, cfg, newMemStore())
	reject := func(context.Context, string, []byte) error { return fmt.Errorf("tile: %w", errBadData) }
	_, err := v.readRemoteChecked("/"+tlog.Tile{H: 8, L: 0, N: 0, W: 1}.Path(), reject)
	if !errors.Is(err, errBadData) || errors.Is(err, ErrUnavailable) {
		t.Errorf("read with every circuit open: %v; want bad data, not ErrUnavailable", err)
	}
}

// A stored tile is authenticated once per process: serving it again reads
// the tile alone from the store. Changed bytes in the store miss that
// memory and are authenticated (and dropped) again.
func TestServedTileAuthenticatedOnce(t *testing.T) {
	w := newPoisonWorld(t)
	keys := w.storedTileKeys(bucketVerified)
	if len(keys) == 0 {
		t.Fatal("no stored tiles")
	}
	key := keys[0]
	v, _ := w.verifier(t, nil)
	srv := httptest.NewServer(v.Handler())
	defer srv.Close()
	url := srv.URL + "/sumdb/" + key
	genuine := string(w.genuineTile(t, key))
	puts := w.st.puts.Load()
	if code, body := get(t, url); code != 200 || body != genuine {
		t.Fatalf("first serve: %d, genuine=%v", code, body == genuine)
	}
	if n := w.st.puts.Load() - puts; n != 0 {
		t.Errorf("authenticating a stored tile wrote the store %d times; everything it read was stored already", n)
	}
	before := w.st.gets.Load()
	if code, body := get(t, url); code != 200 || body != genuine {
		t.Fatalf("second serve: %d, genuine=%v", code, body == genuine)
	}
	if n := w.st.gets.Load() - before; n > 1 {
		t.Errorf("second serve of an authenticated tile read the store %d times, want 1 (the tile)", n)
	}

	w.st.PutKV(bucketVerified, key, flipByte([]byte(genuine)))
	if code, body := get(t, url); code != 200 || body != genuine {
		t.Fatalf("serve after the stored tile changed: %d, genuine=%v", code, body == genuine)
	}
	if got, _ := w.st.GetKV(bucketVerified, key); string(got) != genuine {
		t.Error("the changed stored tile was not replaced by the genuine one")
	}
	if got := counterValue(t, v.metrics.security.WithLabelValues(w.db.Name())); got < 1 {
		t.Errorf("security errors = %v after a changed stored tile", got)
	}
}

// The fresh client of a recovery does not fetch again a tile it already
// authenticated in this run (as the proof of another tile): with the
// stored level-0 tiles damaged, the tile at the new tree's edge is
// fetched once.
func TestRecoveryFetchesEachAuthenticatedTileOnce(t *testing.T) {
	ctx := context.Background()
	db := testsumdb.New(t, "sum.example.test")
	for i := range 600 {
		db.Add(fmt.Sprintf("example.com/f%d", i), "v1.0.0", "h1:AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=", "")
	}
	m := makeMod(t, "example.com/m", "v1.0.0", "x")
	db.AddModule(m.path, m.version, m.gomod, m.zip)
	st := newMemStore()
	if _, err := newVerifier(t, testConfig(db), st).VerifyMod(ctx, m.path, m.version, m.gomod); err != nil {
		t.Fatal(err)
	}
	m2 := makeMod(t, "example.com/m2", "v1.0.0", "y")
	db.AddModule(m2.path, m2.version, m2.gomod, m2.zip)
	damaged := 0
	for _, k := range st.keys(bucketVerified) {
		if strings.Contains(k, "/tile/8/0/") {
			d, _ := st.GetKV(bucketVerified, k)
			st.PutKV(bucketVerified, k, flipByte(d))
			damaged++
		}
	}
	if damaged == 0 {
		t.Fatal("no level-0 tiles stored")
	}
	db.ResetRequests()
	if _, err := newVerifier(t, testConfig(db), st).VerifyMod(ctx, m2.path, m2.version, m2.gomod); err != nil {
		t.Fatalf("VerifyMod over a damaged store: %v", err)
	}
	edge := tlog.Tile{H: 8, L: 0, N: 2, W: db.Size() - 512}
	if n := db.Requests()["/"+edge.Path()]; n != 1 {
		t.Errorf("tile %s fetched %d times, want 1 (requests: %v)", edge.Path(), n, db.Requests())
	}
}

// checkTamperedVerify checks the outcome of a verification through a
// tampering source, with (withGood) or without a faithful one beside it:
// success with one, else a security error, never "unavailable" (which
// --sumdb-fail-open would act on).
func checkTamperedVerify(t *testing.T, what string, withGood bool, err error) {
	t.Helper()
	switch {
	case withGood && err != nil:
		t.Fatalf("%s with a good source: %v", what, err)
	case !withGood && (!errors.Is(err, ErrSecurity) || errors.Is(err, ErrUnavailable)):
		t.Fatalf("%s from a tampering source only: %v; want ErrSecurity, not ErrUnavailable", what, err)
	}
}

// noLookupStore cannot store lookup records (a full disk, say).
type noLookupStore struct{ *memStore }

func (s noLookupStore) PutKV(bucket, key string, value []byte) error {
	if strings.Contains(key, "/lookup/") {
		return errors.New("disk full")
	}
	return s.memStore.PutKV(bucket, key, value)
}

// A record the store could not keep is fetched again to be served, and
// that second answer is authenticated too: a source lying only the second
// time is not passed through.
func TestLookupNotStoredIsAuthenticatedAgain(t *testing.T) {
	db := testsumdb.New(t, "sum.example.test")
	m := makeMod(t, "example.com/m", "v1.0.0", "x")
	db.AddModule(m.path, m.version, m.gomod, m.zip)
	up, err := testupstream.New()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(up.Close)
	up.PassThroughSumDB(db.Name(), db.URL())
	var mu sync.Mutex
	lookups := 0
	up.SetFaults(testupstream.Fault{Tamper: true, Match: func(p string) bool {
		if !strings.Contains(p, "/lookup/") {
			return false
		}
		mu.Lock()
		defer mu.Unlock()
		lookups++
		return lookups > 1 // faithful the first time only
	}})
	cfg := testConfig(db)
	cfg.URL = "http://127.0.0.1:1" // never asked directly
	cfg.Upstreams = []string{up.URL()}
	cfg.Registerer = prometheus.NewRegistry()
	v := newVerifier(t, cfg, noLookupStore{newMemStore()})
	srv := httptest.NewServer(v.Handler())
	defer srv.Close()
	code, body := get(t, srv.URL+"/sumdb/"+db.Name()+"/lookup/"+m.path+"@"+m.version)
	mu.Lock()
	asked := lookups
	mu.Unlock()
	if asked < 2 {
		t.Fatalf("the upstream was asked for the record %d times; the test needs the handler's second read", asked)
	}
	genuine := string(get2(t, db.URL()+"/lookup/"+m.path+"@"+m.version))
	if code == 200 && body != genuine {
		t.Fatalf("served a record that differs from the database's:\n%s", body)
	}
	if code != 502 {
		t.Errorf("lookup whose second answer is forged: %d %q, want 502", code, body)
	}
	if got := counterValue(t, v.metrics.security.WithLabelValues(db.Name())); got < 1 {
		t.Errorf("security errors = %v", got)
	}
}
