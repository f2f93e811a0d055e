package netprobe

import (
	"archive/zip"
	"bytes"
	"context"
	"encoding/json"
	"net/http"
	"strings"
	"testing"
)

func fakeGoproxy(t *testing.T) http.Handler {
	var zbuf bytes.Buffer
	zw := zip.NewWriter(&zbuf)
	w, _ := zw.Create("example.org/m@v1.0.0/go.mod")
	w.Write([]byte("module example.org/m\n"))
	zw.Close()
	files := map[string]string{
		"/go/example.org/m/@v/list":        "v1.0.0\n",
		"/go/example.org/m/@v/v1.0.0.info": `{"Version":"v1.0.0","Time":"2026-01-01T00:00:00Z"}`,
		"/go/example.org/m/@v/v1.0.0.mod":  "module example.org/m\n",
		"/go/example.org/m/@v/v1.0.0.zip":  zbuf.String(),
	}
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		body, ok := files[r.URL.Path]
		if !ok {
			http.NotFound(w, r)
			return
		}
		w.Write([]byte(body))
	})
}

func TestRunProbe(t *testing.T) {
	e := newEnv(t, fakeGoproxy(t), "h1", nil)
	rep, err := RunProbe(context.Background(), e.p, ProbeOptions{Modules: []string{"example.org/m@v1.0.0", "example.org/missing@v1.0.0"}, Rounds: 2})
	if err != nil {
		t.Fatal(err)
	}
	if len(rep.Upstreams) != 1 || len(rep.Upstreams[0].Requests) != 16 {
		t.Fatalf("report: %+v", rep)
	}
	reqs := rep.Upstreams[0].Requests
	if reqs[0].Reused || reqs[0].Phases[PhaseTLS] == 0 || reqs[0].Phases[PhaseDNS] == 0 && reqs[0].Phases[PhaseConnect] == 0 {
		t.Errorf("first request: %+v, want a new connection with dns/connect/tls", reqs[0])
	}
	for i, q := range reqs[1:] {
		if !q.Reused {
			t.Errorf("request %d not reused: %+v", i+1, q)
		}
	}
	if reqs[3].Kind != KindZip || reqs[3].Status != 200 || reqs[3].Bytes == 0 || reqs[3].Outcome != OutcomeOK {
		t.Errorf("zip request: %+v", reqs[3])
	}
	if reqs[4].Status != 404 || reqs[4].Outcome != OutcomeNotFound {
		t.Errorf("missing module: %+v", reqs[4])
	}

	var text bytes.Buffer
	if err := rep.WriteText(&text); err != nil {
		t.Fatal(err)
	}
	out := text.String()
	for _, want := range []string{e.base, "heatmap", "D dns", "|", "median"} {
		if !strings.Contains(out, want) {
			t.Errorf("text report lacks %q:\n%s", want, out)
		}
	}
	if !strings.ContainsAny(out, "░▒▓█") {
		t.Errorf("no shade blocks in:\n%s", out)
	}
	t.Logf("\n%s", out)

	var js bytes.Buffer
	if err := rep.WriteJSON(&js); err != nil {
		t.Fatal(err)
	}
	var back ProbeReport
	if err := json.Unmarshal(js.Bytes(), &back); err != nil || len(back.Upstreams[0].Requests) != 16 {
		t.Fatalf("JSON round trip: %v", err)
	}

	if _, err := RunProbe(context.Background(), e.p, ProbeOptions{Modules: []string{"nope"}}); err == nil {
		t.Error("bad module accepted")
	}
}
