package direct

import (
	"net/url"
	"regexp"
)

// redactURL removes userinfo from a URL.
func redactURL(s string) string {
	u, err := url.Parse(s)
	if err != nil || u.User == nil {
		return redactText(s)
	}
	u.User = nil
	return u.String()
}

var (
	userinfoRE = regexp.MustCompile(`([a-zA-Z][a-zA-Z0-9+.\-]*://)[^/@\s]*@`)
	authHdrRE  = regexp.MustCompile(`(?i)(authorization|private-token|x-api-key|cookie)(\s*[:=]\s*)[^\r\n]*`)
)

// redactText strips URL userinfo and credential header values from text
// that may be shown to a client or written to a log (git's stderr, say).
func redactText(s string) string {
	s = userinfoRE.ReplaceAllString(s, "${1}")
	return authHdrRE.ReplaceAllString(s, "${1}${2}[redacted]")
}
