package client

import (
	"errors"
	"fmt"
	"net"
	"net/url"
	"strconv"
	"strings"
)

// maxServers bounds the entries of a server list: a list is typed by an
// operator, and each entry costs a connection attempt per round.
const maxServers = 64

// ParseServers splits a comma-separated list of control plane addresses,
// each host:port or an https:// URL (port 443 when it has none), as
// --server and TRELLIS_ADDR take them, and returns them as host:port, in
// order, without repeats. A host may be a DNS name; whoever dials it uses
// every address it resolves to. The error names the entry at fault.
func ParseServers(list string) ([]string, error) {
	var out []string
	seen := map[string]bool{}
	for i, raw := range strings.Split(list, ",") {
		entry := strings.TrimSpace(raw)
		if entry == "" {
			if strings.TrimSpace(list) == "" {
				return nil, errors.New("no server address (set TRELLIS_ADDR or --server)")
			}
			return nil, fmt.Errorf("server list %q: entry %d is empty", list, i+1)
		}
		hp, err := parseServer(entry)
		if err != nil {
			return nil, fmt.Errorf("server list entry %d %q: %w", i+1, entry, err)
		}
		if !seen[hp] {
			seen[hp] = true
			out = append(out, hp)
		}
	}
	if len(out) > maxServers {
		return nil, fmt.Errorf("server list: %d entries, at most %d", len(out), maxServers)
	}
	return out, nil
}

// parseServer returns one entry as host:port.
func parseServer(entry string) (string, error) {
	if strings.Contains(entry, "://") {
		u, err := url.Parse(entry)
		if err != nil {
			return "", err
		}
		if u.Scheme != "https" {
			return "", errors.New("the API is served over https only")
		}
		if u.User != nil || (u.Path != "" && u.Path != "/") || u.RawQuery != "" || u.Fragment != "" {
			return "", errors.New("want https://host[:port] with nothing after it")
		}
		entry = u.Host
		if u.Port() == "" {
			entry = net.JoinHostPort(u.Hostname(), "443")
		}
	}
	host, port, err := net.SplitHostPort(entry)
	if err != nil {
		// A bare host (no port) meant the API's https port before lists
		// existed; a colon in it (IPv6) needs brackets and a port.
		if strings.ContainsAny(entry, ":[]") {
			return "", errors.New("want host:port ([ipv6]:port)")
		}
		host, port = entry, "443"
	}
	if host == "" {
		return "", errors.New("no host")
	}
	if strings.ContainsAny(host, " /?#@%[]") || strings.ContainsFunc(host, func(r rune) bool { return r < 0x21 || r > 0x7e }) {
		return "", fmt.Errorf("host %q: not a DNS name or IP", host)
	}
	if strings.Contains(host, ":") && net.ParseIP(host) == nil {
		return "", fmt.Errorf("host %q: not an IP", host)
	}
	n, err := strconv.Atoi(port)
	if err != nil || n < 1 || n > 65535 || port != strconv.Itoa(n) {
		return "", fmt.Errorf("port %q: want 1-65535", port)
	}
	return net.JoinHostPort(host, port), nil
}
