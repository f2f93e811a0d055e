package fallback

import (
	"context"
	"errors"
	"strings"
	"testing"
	"time"
)

type alarmKey struct{}

// alarmCfg raises reason on the attempt to upstream "a" after d.
func alarmCfg(hedge bool, reason string, d time.Duration) Config {
	return Config{
		Hedge:    hedge,
		Classify: classify,
		Alarm: func(ctx context.Context, alarm func(string)) context.Context {
			return context.WithValue(ctx, alarmKey{}, func() {
				go func() {
					select {
					case <-time.After(d):
						alarm(reason)
					case <-ctx.Done():
					}
				}()
			})
		},
	}
}

// stuck is an attempt function: "a" hangs (a connect in SYN retries) after
// arming its alarm; every other entry answers its name.
func stuck(ctx context.Context, e Entry) (string, error) {
	if arm, ok := ctx.Value(alarmKey{}).(func()); ok && e.Name == "a" {
		arm()
		<-ctx.Done()
		return "", ctx.Err()
	}
	if e.Name == "a" {
		<-ctx.Done()
		return "", ctx.Err()
	}
	return e.Name, nil
}

func TestAlarmHedgesOrAbandons(t *testing.T) {
	tests := []struct {
		name, list   string
		hedge        bool
		want, reason string
		decision     string // on a
	}{
		{"hedged within |", "a|b", true, "b", ReasonKernelSynRetrans, "a hedged kernel_syn_retrans"},
		{"abandoned when not hedgeable", "a|b", false, "b", ReasonKernelSynRetrans, "a abandoned kernel_syn_retrans"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			h := newHealth()
			cfg := alarmCfg(tt.hedge, ReasonKernelSynRetrans, 10*time.Millisecond)
			cfg.Health = h
			ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
			defer cancel()
			v, res, errs := Run(ctx, cfg, parse(tt.list), stuck)
			if v != tt.want || res.Reason != tt.reason {
				t.Fatalf("got %q (%s), errs %v; want %q (%s)", v, res.Reason, errs, tt.want, tt.reason)
			}
			if !h.has(tt.decision) {
				t.Errorf("decisions %v, want %q", h.decisions, tt.decision)
			}
			if !tt.hedge && !h.has("a fallthrough kernel_syn_retrans") {
				t.Errorf("decisions %v: the abandoned attempt's fallthrough must name the alarm", h.decisions)
			}
		})
	}
}

// An alarm never crosses a ',' and never touches a finished attempt.
func TestAlarmRespectsList(t *testing.T) {
	h := newHealth()
	cfg := alarmCfg(true, ReasonKernelSynRetrans, 10*time.Millisecond)
	cfg.Health = h
	ctx, cancel := context.WithTimeout(context.Background(), 200*time.Millisecond)
	defer cancel()
	_, res, errs := Run(ctx, cfg, parse("a,b"), stuck)
	if res.Upstream != "" || len(errs) == 0 || !errors.Is(errs[len(errs)-1], context.DeadlineExceeded) {
		t.Errorf("a,b with an alarm on a: %+v %v; want a's timeout, b never asked", res, errs)
	}
	for _, d := range h.decisions {
		if strings.HasPrefix(d, "b ") {
			t.Errorf("b was involved past a ',': %v", h.decisions)
		}
	}

	h = newHealth()
	cfg = alarmCfg(true, ReasonKernelSynRetrans, 0)
	cfg.Health = h
	v, res, _ := Run(context.Background(), cfg, parse("b|c"), stuck)
	if v != "b" || res.Reason != ReasonListOrder {
		t.Errorf("no alarm armed: %q %s", v, res.Reason)
	}
}

// A demoted entry is named, and its reason is the answer's.
func TestDemotedByNamesReason(t *testing.T) {
	h := newHealth()
	h.score["a"] = 0.4
	cfg := Config{Health: h, Classify: classify, DemotedBy: func(u string) string {
		if u == "a" {
			return "kernel_loss"
		}
		return ""
	}}
	v, res, _ := Run(context.Background(), cfg, parse("a|b"), func(_ context.Context, e Entry) (string, error) { return e.Name, nil })
	if v != "b" || res.Reason != "kernel_loss" {
		t.Errorf("got %q (%s), want b for kernel_loss", v, res.Reason)
	}
	if !h.has("a demoted kernel_loss") || !h.has("b chosen kernel_loss") || h.has("b demoted kernel_loss") {
		t.Errorf("decisions %v", h.decisions)
	}
}
