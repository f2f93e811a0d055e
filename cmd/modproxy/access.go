package main

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"os/signal"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/spf13/pflag"

	"github.com/modproxy/modproxy/access"
	"github.com/modproxy/modproxy/auth"
	"github.com/modproxy/modproxy/certreload"
	"github.com/modproxy/modproxy/filewatch"
	"github.com/modproxy/modproxy/policy"
)

// accessConfig is serve's TLS, authentication, policy, admin-listener and
// audit configuration.
type accessConfig struct {
	tlsCert, tlsKey, tlsClientCA string
	authFile, policyFile         string
	adminListen                  string
	auditLog                     string
	reloadInterval               time.Duration
}

func addAccessFlags(f *pflag.FlagSet, c *accessConfig) {
	f.StringVar(&c.tlsCert, "tls-cert", "", "serve HTTPS with this PEM certificate (chain); reloaded on change and on SIGHUP")
	f.StringVar(&c.tlsKey, "tls-key", "", "PEM private key of --tls-cert")
	f.StringVar(&c.tlsClientCA, "tls-client-ca", "", "PEM bundle of CAs whose client certificates identify clients (mutual TLS)")
	f.StringVar(&c.authFile, "auth-file", "", "client authentication: identities and scopes (see modproxy auth); reloaded on change")
	f.StringVar(&c.policyFile, "policy-file", "", "module policy: allow and deny rules by path and version; reloaded on change")
	f.StringVar(&c.adminListen, "admin-listen", "", "serve /metrics, /debug/, /healthz and /readyz on this address only, without authentication")
	f.StringVar(&c.auditLog, "audit-log", "", "write one JSON line per artifact request to this file (- for stdout), reopened on SIGHUP; off when empty")
	f.DurationVar(&c.reloadInterval, "reload-interval", 2*time.Second, "how often the TLS, auth and policy files are checked for changes")
}

// validate checks the combination of flags. changed, when not nil, tells
// which flags were given: one given empty, on the command line or as an
// empty MODPROXY_AUTH_FILE (which bindEnv takes as unset), is an error
// rather than a silent "off", since each of these flags only ever adds
// protection.
func (c accessConfig) validate(changed func(string) bool) error {
	if changed != nil {
		for flag, v := range map[string]string{
			"tls-cert": c.tlsCert, "tls-key": c.tlsKey, "tls-client-ca": c.tlsClientCA,
			"auth-file": c.authFile, "policy-file": c.policyFile, "audit-log": c.auditLog,
		} {
			env := envName(flag)
			ev, inEnv := os.LookupEnv(env)
			if strings.TrimSpace(v) == "" && (changed(flag) || inEnv && strings.TrimSpace(ev) == "") {
				return usagef("--%s (or %s) is set but empty: unset it to run without it", flag, env)
			}
		}
	}
	switch {
	case (c.tlsCert == "") != (c.tlsKey == ""):
		return usagef("--tls-cert and --tls-key go together")
	case c.tlsClientCA != "" && c.tlsCert == "":
		return usagef("--tls-client-ca needs --tls-cert and --tls-key (mutual TLS is TLS)")
	case c.reloadInterval <= 0:
		return usagef("invalid --reload-interval %s: must be positive", c.reloadInterval)
	}
	return nil
}

// accessLayer is what serve runs through: the access-controlled handler,
// the TLS material, the admin listener and the reloaders.
type accessLayer struct {
	handler http.Handler
	tls     *certreload.Reloader // nil: plain HTTP
	admin   *http.Server         // nil: no admin listener
	adminLn net.Listener
	audit   io.Closer
	logger  *slog.Logger
	// policy is the module policy in force (nil without --policy-file).
	policy *access.PolicyHolder

	cancel context.CancelFunc
	wg     sync.WaitGroup
}

// newAccessLayer reads the configured files (failing on any bad one, so
// that a server never starts with less protection than asked for), wraps
// next and starts the reloaders.
func newAccessLayer(ctx context.Context, c accessConfig, next http.Handler, isPrivate func(string) bool, reg prometheus.Registerer, logger *slog.Logger) (_ *accessLayer, err error) {
	if err := c.validate(nil); err != nil {
		return nil, err
	}
	a := &accessLayer{logger: logger}
	defer func() {
		if err != nil {
			a.Close()
		}
	}()
	reloads := prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "modproxy_config_reloads_total",
		Help: "Reloads of the TLS, auth and policy files and reopenings of the audit log, by result (a failed reload keeps the previous configuration).",
	}, []string{"config", "result"})
	reg.MustRegister(reloads)

	type reloader struct {
		name  string
		paths []string
		load  func() error
	}
	var rls []reloader
	cfg := access.Config{IsPrivate: isPrivate, SeparateAdmin: c.adminListen != "", Logger: logger, Registerer: reg}
	if c.tlsCert != "" {
		a.tls, err = certreload.New(certreload.Files{
			Cert: c.tlsCert, Key: c.tlsKey, ClientCA: c.tlsClientCA,
			// Without an auth file a client certificate is the only
			// credential, so it is required.
			RequireClientCert: c.tlsClientCA != "" && c.authFile == "",
		})
		if err != nil {
			return nil, err
		}
		rls = append(rls, reloader{"tls", a.tls.Paths(), a.tls.Reload})
	}
	if c.authFile != "" {
		f, err := auth.ReadFile(c.authFile)
		if err != nil {
			return nil, err
		}
		if cfg.Auth, err = auth.New(f); err != nil {
			return nil, err
		}
		if a.tls == nil {
			logger.Warn("--auth-file without --tls-cert: tokens cross the network in clear text")
		}
		logger.Info("client authentication on", "identities", cfg.Auth.Identities(), "anonymous", cfg.Auth.AllowsAnonymous())
		rls = append(rls, reloader{"auth", []string{c.authFile}, func() error {
			f, err := auth.ReadFile(c.authFile)
			if err != nil {
				return err
			}
			return cfg.Auth.Load(f)
		}})
	}
	if c.policyFile != "" {
		p, err := policy.ReadFile(c.policyFile)
		if err != nil {
			return nil, err
		}
		cfg.Policy = &access.PolicyHolder{}
		cfg.Policy.Store(p)
		a.policy = cfg.Policy
		rls = append(rls, reloader{"policy", []string{c.policyFile}, func() error {
			p, err := policy.ReadFile(c.policyFile)
			if err != nil {
				return err
			}
			cfg.Policy.Store(p)
			return nil
		}})
	}
	if c.auditLog != "" {
		w, err := openAuditLog(c.auditLog)
		if err != nil {
			return nil, err
		}
		a.audit = w
		cfg.Audit = access.NewAudit(w)
		if w.f != os.Stdout {
			// Reopened on SIGHUP, so that logrotate can move it away.
			rls = append(rls, reloader{name: "audit", load: w.reopen})
		}
	}
	h := access.New(next, cfg)
	a.handler = h
	if c.adminListen != "" {
		a.adminLn, err = net.Listen("tcp", c.adminListen)
		if err != nil {
			return nil, fmt.Errorf("admin listen on %s: %w", c.adminListen, err)
		}
		a.admin = &http.Server{
			Handler:           h.Admin(),
			ReadHeaderTimeout: 10 * time.Second,
			IdleTimeout:       2 * time.Minute,
			ErrorLog:          slog.NewLogLogger(logger.Handler(), slog.LevelWarn),
		}
	}

	wctx, cancel := context.WithCancel(ctx)
	a.cancel = cancel
	reload := func(r reloader, why string) {
		if err := r.load(); err != nil {
			reloads.WithLabelValues(r.name, "error").Inc()
			logger.Error("reload failed; the previous configuration stays in force", "config", r.name, "trigger", why, "err", err)
			return
		}
		reloads.WithLabelValues(r.name, "ok").Inc()
		logger.Info("reloaded", "config", r.name, "trigger", why)
	}
	for _, r := range rls {
		if len(r.paths) == 0 {
			continue // reloaded on SIGHUP only
		}
		a.wg.Go(func() {
			filewatch.Watch(wctx, c.reloadInterval, r.paths, func() { reload(r, "file_changed") })
		})
	}
	// SIGHUP is always caught, so that a reload request ("systemctl
	// reload") never kills a server that has nothing to reload.
	hup := make(chan os.Signal, 1)
	signal.Notify(hup, syscall.SIGHUP)
	a.wg.Go(func() {
		defer signal.Stop(hup)
		for {
			select {
			case <-wctx.Done():
				return
			case <-hup:
				if len(rls) == 0 {
					logger.Info("SIGHUP: nothing to reload (no --tls-cert, --auth-file or --policy-file)")
				}
				for _, r := range rls {
					reload(r, "SIGHUP")
				}
			}
		}
	})
	return a, nil
}

// auditFile is the audit log's file, reopened by name on SIGHUP.
type auditFile struct {
	name string
	mu   sync.Mutex
	f    *os.File
}

func openAuditLog(name string) (*auditFile, error) {
	if name == "-" {
		return &auditFile{name: name, f: os.Stdout}, nil
	}
	a := &auditFile{name: name}
	if err := a.reopen(); err != nil {
		return nil, err
	}
	return a, nil
}

func (a *auditFile) reopen() error {
	f, err := os.OpenFile(a.name, os.O_WRONLY|os.O_APPEND|os.O_CREATE, 0o600)
	if err != nil {
		return fmt.Errorf("open audit log: %w", err)
	}
	a.mu.Lock()
	old := a.f
	a.f = f
	a.mu.Unlock()
	if old != nil {
		return old.Close()
	}
	return nil
}

// Write writes one whole line (one call per record from slog).
func (a *auditFile) Write(p []byte) (int, error) {
	a.mu.Lock()
	defer a.mu.Unlock()
	return a.f.Write(p)
}

func (a *auditFile) Close() error {
	a.mu.Lock()
	defer a.mu.Unlock()
	if a.f == os.Stdout {
		return nil
	}
	return a.f.Close()
}

// serve runs srv on ln (over TLS when configured: srv.TLSConfig must be
// tlsConfig()) and the admin server until srv stops; the first error of
// either is returned.
func (a *accessLayer) serve(srv *http.Server, ln net.Listener) error {
	errc := make(chan error, 2)
	if a.admin != nil {
		go func() {
			if err := a.admin.Serve(a.adminLn); err != nil && !errors.Is(err, http.ErrServerClosed) {
				errc <- fmt.Errorf("admin listener: %w", err)
			}
		}()
	}
	go func() {
		if a.tls != nil {
			errc <- srv.ServeTLS(ln, "", "")
			return
		}
		errc <- srv.Serve(ln)
	}()
	return <-errc
}

// shutdown drains the admin server.
func (a *accessLayer) shutdown(ctx context.Context) {
	if a.admin != nil {
		if err := a.admin.Shutdown(ctx); err != nil {
			a.admin.Close()
		}
	}
}

// Close stops the reloaders and closes the audit log and admin listener.
func (a *accessLayer) Close() {
	if a.cancel != nil {
		a.cancel()
	}
	a.wg.Wait()
	if a.admin != nil {
		a.admin.Close()
	} else if a.adminLn != nil {
		a.adminLn.Close()
	}
	if a.audit != nil {
		if err := a.audit.Close(); err != nil {
			a.logger.Error("close audit log", "err", err)
		}
	}
}

// tlsConfig is the main server's TLS configuration, nil for plain HTTP.
func (a *accessLayer) tlsConfig() *tls.Config {
	if a.tls == nil {
		return nil
	}
	return a.tls.TLSConfig()
}

// scheme is the URL scheme the main listener serves.
func (a *accessLayer) scheme() string {
	if a.tls != nil {
		return "https"
	}
	return "http"
}
