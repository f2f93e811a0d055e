// Package oneline renders error messages on one line, for one-line HTTP
// bodies, log values and reports.
package oneline

import "strings"

// Of returns err's message with every run of white space (newlines
// included) replaced by one space.
func Of(err error) string {
	if err == nil {
		return ""
	}
	return String(err.Error())
}

// String returns s with every run of white space replaced by one space.
func String(s string) string { return strings.Join(strings.Fields(s), " ") }
