package store

import (
	"net"
	"net/url"
	"strings"
	"testing"
)

// FuzzEtcdConfigValidate: endpoint lists from flags never panic the check,
// and whatever it accepts is what the client can dial: http or https URLs
// of one scheme, each with a host and port.
func FuzzEtcdConfigValidate(f *testing.F) {
	for _, seed := range []string{
		"http://127.0.0.1:2379",
		"https://a:2379,https://b:2379",
		"http://a:1,https://b:2",
		"unix:///run/etcd.sock",
		"https://[::1]:2379",
		"http://a",
		"http://a:2379/path",
		"http://user:pw@a:2379",
		"%zz",
		"",
	} {
		f.Add(seed, false, "", "")
		f.Add(seed, true, "u", "p")
	}
	f.Fuzz(func(t *testing.T, endpoints string, withTLS bool, user, password string) {
		cfg := EtcdConfig{Username: user, Password: password}
		if endpoints != "" {
			cfg.Endpoints = strings.Split(endpoints, ",")
		}
		if withTLS {
			cfg.TLS, _ = ClientTLS("", "", "")
		}
		if err := cfg.validate(); err != nil {
			if password != "" && strings.Contains(err.Error(), ":"+password+"@") {
				t.Fatalf("error %q shows a password from a URL", err)
			}
			return
		}
		if (user == "") != (password == "") {
			t.Fatalf("accepted a username without a password or the reverse: %q/%q", user, password)
		}
		scheme := ""
		for _, ep := range cfg.Endpoints {
			u, err := url.Parse(ep)
			if err != nil {
				t.Fatalf("accepted %q: %v", ep, err)
			}
			if u.Scheme != "http" && u.Scheme != "https" || scheme != "" && u.Scheme != scheme {
				t.Fatalf("accepted %v: schemes must be one of http, https, and the same", cfg.Endpoints)
			}
			scheme = u.Scheme
			if _, _, err := net.SplitHostPort(u.Host); err != nil {
				t.Fatalf("accepted %q without host:port", ep)
			}
			if u.User != nil {
				t.Fatalf("accepted %q with user info", ep)
			}
		}
		if withTLS && scheme != "https" {
			t.Fatalf("accepted TLS with %v", cfg.Endpoints)
		}
	})
}
