package access

import (
	"context"
	"io"
	"log/slog"
	"net"
	"net/http"

	"github.com/modproxy/modproxy/auth"
	"github.com/modproxy/modproxy/proxy"
)

// Audit writes the audit log: one JSON line per artifact request served
// or refused, with who asked (identity name and how it was established),
// for what (module, version, kind) and the decision. It never writes
// credentials: identities are named, never shown.
//
//	{"time":"…","msg":"artifact","identity":"ci","via":"token","remote":"10.0.0.7",
//	 "module":"git.corp.example/lib","version":"v1.2.0","kind":"zip","decision":"served","status":200}
//
// Decisions: served, not_found, failed (the proxy answered an error),
// unauthenticated (401), forbidden (403, a missing scope), denied (403,
// by the module policy; "rule" names the rule).
type Audit struct {
	log *slog.Logger
}

// NewAudit returns an audit log writing to w, which must be safe for
// concurrent writes of whole lines (an *os.File is).
func NewAudit(w io.Writer) *Audit {
	return &Audit{log: slog.New(slog.NewJSONHandler(w, nil))}
}

func (a *Audit) record(r *http.Request, id *auth.Identity, req proxy.Request, decision string, status int, rule string) {
	name, via := "", ""
	if id != nil {
		name, via = id.Name, id.Via
	}
	remote := r.RemoteAddr
	if host, _, err := net.SplitHostPort(remote); err == nil {
		remote = host
	}
	attrs := []slog.Attr{
		slog.String("identity", name), slog.String("via", via), slog.String("remote", remote),
		slog.String("module", req.Module), slog.String("version", req.Version), slog.String("kind", string(req.Kind)),
		slog.String("decision", decision), slog.Int("status", status),
	}
	if rule != "" {
		attrs = append(attrs, slog.String("rule", rule))
	}
	a.log.LogAttrs(context.Background(), slog.LevelInfo, "artifact", attrs...)
}
