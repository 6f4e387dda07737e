package tracing

import (
	"net/url"
	"strings"
	"testing"
)

func TestParseEndpoint(t *testing.T) {
	for _, tc := range []struct {
		raw, protocol string
		want          Endpoint
		err           string
	}{
		{raw: "grpc://127.0.0.1:4317", want: Endpoint{Protocol: ProtocolGRPC, Host: "127.0.0.1:4317"}},
		{raw: "grpcs://collector.example.com", want: Endpoint{Protocol: ProtocolGRPC, Host: "collector.example.com:4317", TLS: true}},
		{raw: "http://127.0.0.1:4318", want: Endpoint{Protocol: ProtocolHTTP, Host: "127.0.0.1:4318", Path: "/v1/traces"}},
		{raw: "https://otel.example.com/otlp/v1/traces", want: Endpoint{Protocol: ProtocolHTTP, Host: "otel.example.com:4318", Path: "/otlp/v1/traces", TLS: true}},
		{raw: "http://[::1]:4317", protocol: ProtocolGRPC, want: Endpoint{Protocol: ProtocolGRPC, Host: "[::1]:4317"}},
		{raw: "HTTP://localhost/", want: Endpoint{Protocol: ProtocolHTTP, Host: "localhost:4318", Path: "/v1/traces"}},
		{raw: "grpc://127.0.0.1:4317", protocol: ProtocolHTTP, err: "is gRPC, not http/protobuf"},
		{raw: "grpc://127.0.0.1:4317/v1/traces", err: "a gRPC endpoint has no path"},
		{raw: "http://127.0.0.1:4318", protocol: "http", err: `otlp protocol "http": want grpc or http/protobuf`},
		{raw: "127.0.0.1:4317", err: "want a URL"},
		{raw: "collector:4317", err: "want a URL"},
		{raw: "://x", err: "missing protocol scheme"},
		{raw: "", err: "want a URL"},
		{raw: "tcp://127.0.0.1:4317", err: `scheme "tcp"`},
		{raw: "http://user:secret@127.0.0.1:4318", err: "credentials in the URL"},
		{raw: "http://127.0.0.1:4318/?token=x", err: "no query or fragment"},
		{raw: "http://127.0.0.1:4318/#x", err: "no query or fragment"},
		{raw: "grpc://:4317", err: "no host"},
		{raw: "grpc://127.0.0.1:", err: "empty port"},
		{raw: "grpc://127.0.0.1:0", err: "want 1-65535"},
		{raw: "grpc://127.0.0.1:70000", err: "want 1-65535"},
	} {
		t.Run(tc.raw+" "+tc.protocol, func(t *testing.T) {
			got, err := ParseEndpoint(tc.raw, tc.protocol)
			if tc.err != "" {
				if err == nil || !strings.Contains(err.Error(), tc.err) {
					t.Fatalf("got %+v, %v; want an error with %q", got, err, tc.err)
				}
				if strings.Contains(err.Error(), "secret") {
					t.Errorf("error %q shows the URL's password", err)
				}
				return
			}
			if err != nil || got != tc.want {
				t.Fatalf("got %+v, %v; want %+v", got, err, tc.want)
			}
		})
	}
}

// An endpoint that parses prints as a URL that parses to the same
// endpoint, whatever the input.
func FuzzParseEndpoint(f *testing.F) {
	for _, s := range []string{"grpc://127.0.0.1:4317", "https://otel.example.com/otlp/v1/traces", "http://[::1]:4317",
		"http://u:p@h:1", "grpc://h:", "http://h/%2e%2e/x", "grpcs://h?x#y", ""} {
		f.Add(s, "")
		f.Add(s, ProtocolGRPC)
	}
	f.Fuzz(func(t *testing.T, raw, protocol string) {
		e, err := ParseEndpoint(raw, protocol)
		if err != nil {
			// A password (long enough not to be found by chance) is
			// never in the error.
			if u, perr := url.Parse(raw); perr == nil {
				if pw, ok := u.User.Password(); ok && len(pw) >= 6 && strings.Contains(err.Error(), pw) {
					t.Fatalf("ParseEndpoint(%q): error %q shows the password", raw, err)
				}
			}
			return
		}
		if e.Host == "" || (e.Protocol == ProtocolHTTP) != (e.Path != "") {
			t.Fatalf("ParseEndpoint(%q, %q) = %+v: no host, or a path that does not go with the protocol", raw, protocol, e)
		}
		again, err := ParseEndpoint(e.String(), "")
		if err != nil || again != e {
			t.Fatalf("ParseEndpoint(%q) = %+v; its String %q parses to %+v, %v", raw, e, e.String(), again, err)
		}
	})
}

// An endpoint that is refused for any reason is named in the error (which
// is logged) without what could be a secret: the URL's user and password,
// its query and its fragment.
func TestParseEndpointErrorsHideSecrets(t *testing.T) {
	for _, tc := range []struct{ raw, protocol string }{
		{raw: "grpc://user:s3cret@127.0.0.1:4317", protocol: ProtocolHTTP},
		{raw: "tcp://user:s3cret@127.0.0.1:4317"},
		{raw: "http://127.0.0.1:4318/v1/traces?api_key=s3cret"},
		{raw: "http://127.0.0.1:4318/v1/traces#s3cret"},
		{raw: "grpc://user:s3cret@:4317"},
		{raw: "grpc://user:s3cret@127.0.0.1:"},
		{raw: "grpc://user:s3cret@127.0.0.1:99999"},
		{raw: "grpc://user:s3cret@127.0.0.1:4317/x"},
		{raw: "grpc://user:s3cret@::1:4317"},
		{raw: "http://user:s3cret@127.0.0.1:4318/%zz"},
		{raw: "http://user:s3cret@127.0.0.1:4318", protocol: "http"},
		{raw: "user:s3cret@127.0.0.1:4318"},
	} {
		t.Run(tc.raw, func(t *testing.T) {
			_, err := ParseEndpoint(tc.raw, tc.protocol)
			if err == nil {
				t.Fatal("accepted")
			}
			if strings.Contains(err.Error(), "s3cret") {
				t.Errorf("error %q shows a secret of the URL", err)
			}
		})
	}
}
