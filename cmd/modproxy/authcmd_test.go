package main

import (
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func TestAuthCommands(t *testing.T) {
	if testing.Short() {
		t.Skip("builds the binary")
	}
	file := filepath.Join(t.TempDir(), "auth.yaml")
	tok := authAdd(t, file, "ci", "public", "git.corp.example/*")
	if fi, err := os.Stat(file); err != nil || fi.Mode().Perm() != 0o600 {
		t.Fatalf("auth file mode: %v, %v", fi.Mode(), err)
	}
	if out, code := runBin(t, nil, "auth", "add", "--file", file, "--name", "bot", "--subject", "CN=bot,O=Corp", "--scope", "admin"); code != 0 {
		t.Fatalf("add --subject: %d %s", code, out)
	}
	for name, args := range map[string][]string{
		"duplicate name": {"auth", "add", "--file", file, "--name", "ci", "--scope", "public"},
		"no scope":       {"auth", "add", "--file", file, "--name", "x"},
		"bad scope":      {"auth", "add", "--file", file, "--name", "x", "--scope", "a.example,b.example"},
		"case scope":     {"auth", "add", "--file", file, "--name", "x", "--scope", "Admin"},
		"bad name":       {"auth", "add", "--file", file, "--name", "a b", "--scope", "public"},
		"no file":        {"auth", "add", "--name", "x", "--scope", "public"},
		"remove unknown": {"auth", "remove", "--file", file, "--name", "nobody"},
		"list missing":   {"auth", "list", "--file", filepath.Join(t.TempDir(), "none.yaml")},
		"no subcommand":  {"auth"},
	} {
		out, code := runBin(t, nil, args...)
		if code == 0 {
			t.Errorf("%s: succeeded: %s", name, out)
		}
		if strings.Contains(out, tok) {
			t.Errorf("%s: output shows the token", name)
		}
	}
	out, code := runBin(t, nil, "auth", "list", "--file", file, "--json")
	if code != 0 {
		t.Fatalf("list: %d %s", code, out)
	}
	var l struct {
		Identities []authListEntry `json:"identities"`
	}
	if err := json.Unmarshal([]byte(out), &l); err != nil {
		t.Fatalf("list --json: %v\n%s", err, out)
	}
	if len(l.Identities) != 2 || l.Identities[0].Name != "ci" || l.Identities[0].Kind != "token" || l.Identities[1].Kind != "mtls" ||
		strings.Join(l.Identities[0].Scopes, " ") != "public git.corp.example/*" {
		t.Fatalf("list: %+v", l)
	}
	if strings.Contains(out, "$2a$") || strings.Contains(out, tok) {
		t.Fatalf("list shows a hash or token:\n%s", out)
	}
	if out, code := runBin(t, nil, "auth", "remove", "--file", file, "--name", "ci"); code != 0 {
		t.Fatalf("remove: %d %s", code, out)
	}
	out, _ = runBin(t, nil, "auth", "list", "--file", file)
	if strings.Contains(out, "ci ") || !strings.Contains(out, "bot") {
		t.Fatalf("list after remove:\n%s", out)
	}
}
