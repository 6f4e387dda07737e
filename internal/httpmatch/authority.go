package httpmatch

import (
	"errors"
	"net/netip"
	"strconv"
	"strings"
)

// CanonicalAuthority checks a request's authority (a Host field, an
// absolute-form target's host, or :authority) and returns it in the one
// form the proxy forwards, with the host alone, which is what host rules
// match: the name in lowercase without a trailing dot, and the port
// without leading zeros (an empty port is dropped). An empty authority
// gives "", "".
//
// Refused: anything but a DNS-style name (letters, digits, '-', '_', '.'
// with no empty label), an IPv4 address or a bracketed IPv6 address
// without zone; userinfo, percent-encoding and other characters an app
// might decode into another name; a port that is not a number up to
// 65535.
func CanonicalAuthority(authority string) (canon, host string, err error) {
	if authority == "" {
		return "", "", nil
	}
	if len(authority) > 262 { // 253 for the name, ':' and a port, brackets
		return "", "", errors.New("the host is too long")
	}
	var port string
	var hasPort bool
	if strings.HasPrefix(authority, "[") {
		end := strings.IndexByte(authority, ']')
		if end < 0 {
			return "", "", errors.New("unclosed '[' in the host")
		}
		ip, perr := netip.ParseAddr(authority[1:end])
		if perr != nil || !ip.Is6() || ip.Zone() != "" {
			return "", "", errors.New("the host is not an IPv6 address in brackets")
		}
		host = "[" + ip.String() + "]"
		rest := authority[end+1:]
		if rest != "" {
			if rest[0] != ':' {
				return "", "", errors.New("unexpected characters after the IPv6 address")
			}
			port, hasPort = rest[1:], true
		}
	} else {
		host, port, hasPort = strings.Cut(authority, ":")
		if host, err = canonicalName(host); err != nil {
			return "", "", err
		}
	}
	canon = host
	if hasPort && port != "" {
		if len(port) > 5 || strings.Trim(port, "0123456789") != "" {
			return "", "", errors.New("the port is not a number")
		}
		n, _ := strconv.Atoi(port)
		if n > 65535 {
			return "", "", errors.New("the port is over 65535")
		}
		if port[0] != '0' && len(host)+1+len(port) == len(authority) && authority[:len(host)] == host {
			// Already canonical, as nearly every authority is: no copy.
			canon = authority
		} else {
			canon += ":" + strconv.Itoa(n)
		}
	}
	return canon, host, nil
}

// canonicalName checks a host name or IPv4 address and returns it in
// lowercase without its trailing dot.
func canonicalName(h string) (string, error) {
	h = strings.TrimSuffix(h, ".")
	if h == "" {
		return "", errors.New("the host is empty")
	}
	if strings.HasSuffix(h, ".") {
		return "", errors.New("an empty label in the host")
	}
	if len(h) > 253 {
		return "", errors.New("the host is longer than 253 characters")
	}
	lower := true
	for i := 0; i < len(h); i++ {
		switch c := h[i]; {
		case 'a' <= c && c <= 'z', '0' <= c && c <= '9', c == '-', c == '_':
		case 'A' <= c && c <= 'Z':
			lower = false
		case c == '.':
			if i == 0 || h[i-1] == '.' {
				return "", errors.New("an empty label in the host")
			}
		default:
			return "", errors.New("a character not allowed in a host name: " + strconv.QuoteRune(rune(c)))
		}
	}
	if !lower {
		h = strings.ToLower(h)
	}
	return h, nil
}
