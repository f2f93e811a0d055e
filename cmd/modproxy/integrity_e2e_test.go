package main

import (
	"errors"
	"path/filepath"
	"strings"
	"testing"

	"github.com/modproxy/modproxy/cache"
	"github.com/modproxy/modproxy/internal/testupstream"
	"github.com/modproxy/modproxy/sumdb"
)

// Configuration cannot switch verification off by accident: an empty
// MODPROXY_SUMDB (or --sumdb "") means the default, as an empty GOSUMDB
// does for the go command; only "off" disables it, loudly.
func TestEmptySumDBKeepsVerificationOn(t *testing.T) {
	if testing.Short() {
		t.Skip("end-to-end test")
	}
	mods := e2eModules[:4]
	bad, db := startUniverse(t, mods)
	bad.SetFaults(testupstream.Fault{Tamper: true})
	defaultName, _, _ := strings.Cut(sumdb.DefaultVerifierKey, "+")

	tests := []struct {
		name    string
		env     []string
		args    []string
		wantDB  string // database named in the start-up log
		enabled string // modproxy_sumdb_enabled
		warn    bool   // a Warn line says verification is off
	}{
		// GOSUMDB (read through go env) names the test database.
		{"empty MODPROXY_SUMDB", []string{"MODPROXY_SUMDB=", "GOSUMDB=" + db.GOSUMDB()}, nil, db.Name(), "1", false},
		{"blank MODPROXY_SUMDB", []string{"MODPROXY_SUMDB=  ", "GOSUMDB=" + db.GOSUMDB()}, nil, db.Name(), "1", false},
		{"empty --sumdb", []string{"GOSUMDB=" + db.GOSUMDB()}, []string{"--sumdb", ""}, db.Name(), "1", false},
		// Both empty: the go command's default database.
		{"empty MODPROXY_SUMDB and GOSUMDB", []string{"MODPROXY_SUMDB=", "GOSUMDB="}, nil, defaultName, "1", false},
		{"--sumdb off", []string{"GOSUMDB=" + db.GOSUMDB()}, []string{"--sumdb", "off"}, "off", "0", true},
		{"MODPROXY_SUMDB=off", []string{"MODPROXY_SUMDB=off"}, nil, "off", "0", true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			args := append([]string{"--db", filepath.Join(t.TempDir(), "m.db"), "--upstream", bad.URL(), "--log-format", "json"}, tt.args...)
			mp := startModproxyEnv(t, append([]string{"GOENV=off"}, tt.env...), args...)
			logs := mp.logs.String()
			if !strings.Contains(logs, `"sumdb":"`+tt.wantDB+`"`) {
				t.Errorf("start-up log does not name checksum database %q:\n%s", tt.wantDB, logs)
			}
			warned := strings.Contains(logs, `"level":"WARN","msg":"checksum database verification is OFF`)
			if warned != tt.warn {
				t.Errorf("Warn about verification off = %v, want %v:\n%s", warned, tt.warn, logs)
			}
			_, metrics := mp.get(t, "/metrics")
			if !strings.Contains(metrics, "\nmodproxy_sumdb_enabled "+tt.enabled+"\n") {
				t.Errorf("metrics lack modproxy_sumdb_enabled %s", tt.enabled)
			}
			if tt.wantDB != db.Name() {
				return
			}
			// Verification is really on: the tampered go.mod is refused.
			resp, body := mp.get(t, "/example.com/lib/v2/@v/v2.1.0.mod")
			if resp.StatusCode != 502 || !strings.Contains(body, "checksum mismatch") {
				t.Errorf("tampered go.mod: %d %q, want 502 checksum mismatch", resp.StatusCode, body)
			}
		})
	}
}

// A passthrough upstream that tampers with the checksum database's tiles
// poisons nothing: the go command, verifying through modproxy, still
// verifies with the good upstream's tiles, and the bad tiles are counted
// as security errors.
func TestTamperedTilesFromPassthroughEndToEnd(t *testing.T) {
	if testing.Short() {
		t.Skip("end-to-end test")
	}
	bad, db := startUniverse(t, e2eModules)
	good, err := testupstream.New(e2eModules...)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(good.Close)
	bad.PassThroughSumDB(db.Name(), db.URL())
	good.PassThroughSumDB(db.Name(), db.URL())
	bad.SetFaults(testupstream.Fault{Match: func(p string) bool { return strings.Contains(p, "/sumdb/") && strings.Contains(p, "/tile/") }, Tamper: true})

	store := filepath.Join(t.TempDir(), "modproxy.db")
	// GOSUMDB without a URL: the database is reached through the
	// upstreams' passthrough, the bad one first.
	mp := startModproxy(t, "--db", store, "--upstream", bad.URL()+","+good.URL(), "--sumdb", db.VerifierKey())
	g := newGoEnv(t, mp.URL, db)
	project := writeProject(t)
	g.run(project, "mod", "download")
	g.run(project, "build", "./...")

	if bad.Count("/tile/") == 0 {
		t.Fatal("the tampering upstream was never asked for a tile: the test proves nothing")
	}
	_, metrics := mp.get(t, "/metrics")
	if !hasNonZero(metrics, `modproxy_sumdb_security_errors_total{db="`+db.Name()+`"}`) {
		t.Error("tampered tiles not counted as security errors")
	}
	if !strings.Contains(mp.logs.String(), "SECURITY ERROR") {
		t.Errorf("no security error logged:\n%s", mp.logs)
	}
	// A second user, with an empty go module cache, gets only good tiles
	// from modproxy's store, even with the good upstream gone.
	good.Close()
	g2 := newGoEnv(t, mp.URL, db)
	g2.run(writeProject(t), "mod", "download")
}

// An empty MODPROXY_<FLAG> is unset: the flag keeps its default, and the
// settings read it from go env as if it were not there.
func TestBindEnvEmptyIsUnset(t *testing.T) {
	t.Setenv("MODPROXY_SUMDB", "")
	t.Setenv("MODPROXY_NOSUMDB", " ")
	t.Setenv("MODPROXY_LIST_TTL", "")
	t.Setenv("MODPROXY_PRIVATE", "corp.example")
	cmd := newServeCmd()
	if err := bindEnv(cmd); err != nil {
		t.Fatal(err)
	}
	for name, wantChanged := range map[string]bool{"sumdb": false, "nosumdb": false, "list-ttl": false, "private": true} {
		if got := cmd.Flags().Changed(name); got != wantChanged {
			t.Errorf("--%s changed = %v, want %v", name, got, wantChanged)
		}
	}
	if v, _ := cmd.Flags().GetString("private"); v != "corp.example" {
		t.Errorf("--private = %q", v)
	}
}

// --sumdb-fail-open over a poisoned store: a stored lookup record that
// fails authentication, with the database down and an upstream serving a
// tampered go.mod, refuses the module (a security error) instead of storing
// it unverified. A module whose record is simply missing still fails open.
func TestFailOpenOverPoisonedStoreEndToEnd(t *testing.T) {
	if testing.Short() {
		t.Skip("end-to-end test")
	}
	up, db := startUniverse(t, e2eModules[:4])
	store := filepath.Join(t.TempDir(), "modproxy.db")
	mp := startModproxy(t, "--db", store, "--upstream", up.URL(), "--sumdb", db.GOSUMDB())
	// The record of lib/v2@v2.1.0 enters the store through the handler.
	if resp, body := mp.get(t, "/sumdb/"+db.Name()+"/lookup/example.com/lib/v2@v2.1.0"); resp.StatusCode != 200 {
		t.Fatalf("lookup: %d %s", resp.StatusCode, body)
	}
	mp.stop(t)

	st, err := cache.Open(store, cache.Options{})
	if err != nil {
		t.Fatal(err)
	}
	key := db.Name() + "/lookup/example.com/lib/v2@v2.1.0"
	rec, err := st.GetKV(sumdb.BucketVerified, key)
	if err != nil {
		t.Fatal(err)
	}
	i := strings.Index(string(rec), "/go.mod h1:")
	if i < 0 {
		t.Fatalf("record:\n%s", rec)
	}
	rec[i+len("/go.mod h1:")] ^= 0x01
	if err := st.PutKV(sumdb.BucketVerified, key, rec); err != nil {
		t.Fatal(err)
	}
	if err := st.Close(); err != nil {
		t.Fatal(err)
	}

	db.SetDown(true)
	up.SetFaults(testupstream.Fault{Match: func(p string) bool { return strings.HasSuffix(p, ".mod") }, Tamper: true})
	mp = startModproxy(t, "--db", store, "--upstream", up.URL(), "--sumdb", db.GOSUMDB(), "--sumdb-fail-open")
	resp, body := mp.get(t, "/example.com/lib/v2/@v/v2.1.0.mod")
	if resp.StatusCode == 200 || !strings.Contains(body, "security") {
		t.Errorf("go.mod over a poisoned record: %d %q; want refused as a security error", resp.StatusCode, body)
	}
	// The control: no record at all, database down: fail-open stores.
	if resp, body := mp.get(t, "/example.com/old/@v/v3.0.0+incompatible.mod"); resp.StatusCode != 200 {
		t.Errorf("control (record missing): %d %q, want 200 by fail-open", resp.StatusCode, body)
	}
	_, metrics := mp.get(t, "/metrics")
	if !strings.Contains(metrics, "\nmodproxy_stored_unverified_total{kind=\"mod\"} 1\n") {
		t.Errorf("want exactly the control stored unverified:\n%s", grepLines(metrics, "modproxy_stored_unverified_total"))
	}
	if !hasNonZero(metrics, `modproxy_sumdb_security_errors_total{db="`+db.Name()+`"}`) {
		t.Error("poisoned record not counted as a security error")
	}
	mp.stop(t)
	st, err = cache.Open(store, cache.Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	if _, err := st.Stat(cache.Key{Path: "example.com/lib/v2", Version: "v2.1.0", Kind: cache.KindMod}); !errors.Is(err, cache.ErrNotFound) {
		t.Errorf("tampered go.mod stored: %v", err)
	}
}
