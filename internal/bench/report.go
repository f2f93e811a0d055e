package main

import (
	"encoding/json"
	"fmt"
	"io"
	"os"
	"runtime"
	"strconv"
	"strings"
	"text/tabwriter"
	"time"
)

// report is the whole run, as printed and as written by --json.
type report struct {
	Started time.Time     `json:"started"`
	Elapsed time.Duration `json:"elapsed_ns"`
	Host    string        `json:"host"`
	Results []Result      `json:"results"`
	Errors  []string      `json:"errors,omitempty"`
}

func hostInfo() string {
	load := "?"
	if b, err := os.ReadFile("/proc/loadavg"); err == nil {
		if f := strings.Fields(string(b)); len(f) >= 3 {
			load = strings.Join(f[:3], " ")
		}
	}
	return fmt.Sprintf("%s %s/%s, %d CPUs, load average %s at start", runtime.Version(), runtime.GOOS, runtime.GOARCH, runtime.NumCPU(), load)
}

func formatValue(v float64) string {
	switch a := max(v, -v); {
	case a >= 100:
		return strconv.FormatFloat(v, 'f', 0, 64)
	case a >= 10:
		return strconv.FormatFloat(v, 'f', 1, 64)
	case a >= 1:
		return strconv.FormatFloat(v, 'f', 2, 64)
	default:
		return strconv.FormatFloat(v, 'f', 3, 64)
	}
}

func (r *report) print(w io.Writer) {
	fmt.Fprintf(w, "\nmodproxy bench — %s; took %s\n", r.Host, r.Elapsed.Round(100*time.Millisecond))
	fmt.Fprintln(w, "One run per figure on a shared machine: expect noise. MB = 10^6 bytes, GB = 10^9.")
	fmt.Fprintln(w)
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	fmt.Fprintln(tw, "SCENARIO\tMETRIC\tVALUE\tUNIT\tTARGET\tSTATUS\tNOTE")
	met, total := 0, 0
	for _, res := range r.Results {
		target, status := "", ""
		if ok, has := res.Met(); has {
			total++
			op := ">="
			if res.Target.Max {
				op = "<="
			}
			target = op + " " + formatValue(res.Target.Limit)
			status = "MISSED"
			if ok {
				status, met = "met", met+1
			}
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\t%s\n", res.Scenario, res.Metric, formatValue(res.Value), res.Unit, target, status, res.Note)
	}
	tw.Flush()
	fmt.Fprintf(w, "\ntargets met: %d of %d\n", met, total)
	for _, e := range r.Errors {
		fmt.Fprintf(w, "ERROR %s\n", e)
	}
}

func (r *report) writeJSON(path string) error {
	b, err := json.MarshalIndent(r, "", "  ")
	if err != nil {
		return fmt.Errorf("encode results: %w", err)
	}
	if err := os.WriteFile(path, append(b, '\n'), 0o644); err != nil {
		return fmt.Errorf("write results: %w", err)
	}
	return nil
}
