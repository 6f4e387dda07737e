package tracing

import (
	"errors"
	"fmt"
	"math"
	"net"
	"net/url"
	"strconv"
	"strings"
)

// Protocols of the OTLP exporter, spelled as OTEL_EXPORTER_OTLP_PROTOCOL.
const (
	ProtocolGRPC = "grpc"
	ProtocolHTTP = "http/protobuf"
)

// Defaults.
const (
	// DefaultSampling is the share of the traces a proxy starts itself
	// that it records: 1 %.
	DefaultSampling = 0.01
	// DefaultQueueSize bounds the ended spans waiting for the exporter.
	DefaultQueueSize = 2048
	defaultGRPCPort  = "4317"
	defaultHTTPPort  = "4318"
	defaultHTTPPath  = "/v1/traces"
)

// Endpoint is where spans go, parsed and checked (ParseEndpoint).
type Endpoint struct {
	// Protocol is ProtocolGRPC or ProtocolHTTP.
	Protocol string
	// Host is host:port.
	Host string
	// Path is the HTTP path spans are POSTed to (ProtocolHTTP only).
	Path string
	// TLS: the collector's certificate is checked against the system's
	// roots; else the spans travel in the clear.
	TLS bool
}

// String is the endpoint as a URL.
func (e Endpoint) String() string {
	scheme := "http"
	switch {
	case e.Protocol == ProtocolGRPC && e.TLS:
		scheme = "grpcs"
	case e.Protocol == ProtocolGRPC:
		scheme = "grpc"
	case e.TLS:
		scheme = "https"
	}
	return scheme + "://" + e.Host + e.Path
}

// Loopback reports whether the endpoint's host is a loopback address or
// localhost.
func (e Endpoint) Loopback() bool {
	h, _, _ := net.SplitHostPort(e.Host)
	if h == "localhost" {
		return true
	}
	ip := net.ParseIP(h)
	return ip != nil && ip.IsLoopback()
}

// ParseEndpoint parses an OTLP endpoint URL: grpc://HOST[:PORT] or
// grpcs://HOST[:PORT] for gRPC (default port 4317), http://HOST[:PORT][/PATH]
// or https://... for OTLP/HTTP (default port 4318, path /v1/traces).
// protocol, when not empty, says which of the two an http or https URL
// is (ProtocolGRPC makes http://HOST:4317 a gRPC endpoint in the clear);
// it cannot contradict a grpc or grpcs scheme. A URL with credentials, a
// query or a fragment is refused: the exporter would not use them, and
// the URL is logged.
func ParseEndpoint(raw, protocol string) (Endpoint, error) {
	switch protocol {
	case "", ProtocolGRPC, ProtocolHTTP:
	default:
		return Endpoint{}, fmt.Errorf("otlp protocol %q: want %s or %s", protocol, ProtocolGRPC, ProtocolHTTP)
	}
	// Errors name the endpoint as shown, never raw: a URL's user,
	// password, query or fragment may hold a token, and errors are logged.
	shown := redactRaw(raw)
	if !strings.Contains(raw, "://") {
		return Endpoint{}, fmt.Errorf("otlp endpoint %q: want a URL such as grpc://127.0.0.1:4317 or http://127.0.0.1:4318", shown)
	}
	u, err := url.Parse(raw)
	if err != nil {
		// url.Error repeats the whole URL: keep only its reason.
		if ue := (*url.Error)(nil); errors.As(err, &ue) {
			err = ue.Err
		}
		return Endpoint{}, fmt.Errorf("otlp endpoint %q: %w", shown, err)
	}
	var e Endpoint
	switch strings.ToLower(u.Scheme) {
	case "grpc", "grpcs":
		if protocol == ProtocolHTTP {
			return Endpoint{}, fmt.Errorf("otlp endpoint %q: a %s URL is gRPC, not %s", shown, u.Scheme, protocol)
		}
		e = Endpoint{Protocol: ProtocolGRPC, TLS: strings.EqualFold(u.Scheme, "grpcs")}
	case "http", "https":
		e = Endpoint{Protocol: ProtocolHTTP, TLS: strings.EqualFold(u.Scheme, "https")}
		if protocol != "" {
			e.Protocol = protocol
		}
	default:
		return Endpoint{}, fmt.Errorf("otlp endpoint %q: scheme %q: want grpc, grpcs, http or https", shown, u.Scheme)
	}
	if u.User != nil {
		return Endpoint{}, fmt.Errorf("otlp endpoint %q: credentials in the URL are not supported", shown)
	}
	if u.Opaque != "" || u.RawQuery != "" || u.ForceQuery || u.Fragment != "" {
		return Endpoint{}, fmt.Errorf("otlp endpoint %q: want no query or fragment", shown)
	}
	host, port := u.Hostname(), u.Port()
	if host == "" {
		return Endpoint{}, fmt.Errorf("otlp endpoint %q: no host", shown)
	}
	if strings.HasSuffix(u.Host, ":") {
		return Endpoint{}, fmt.Errorf("otlp endpoint %q: empty port", shown)
	}
	// url.Parse takes "grpc://::1" as host ":" and port "1": a host with a
	// colon must be an IPv6 address in brackets.
	if strings.Contains(host, ":") && (!strings.HasPrefix(u.Host, "[") || net.ParseIP(host) == nil) {
		return Endpoint{}, fmt.Errorf("otlp endpoint %q: an IPv6 address goes in brackets, such as grpc://[::1]:4317", shown)
	}
	if port == "" {
		port = defaultHTTPPort
		if e.Protocol == ProtocolGRPC {
			port = defaultGRPCPort
		}
	}
	if p, err := strconv.Atoi(port); err != nil || p < 1 || p > 65535 {
		return Endpoint{}, fmt.Errorf("otlp endpoint %q: port %q: want 1-65535", shown, port)
	}
	e.Host = net.JoinHostPort(host, port)
	switch {
	case e.Protocol == ProtocolGRPC && u.Path != "" && u.Path != "/":
		return Endpoint{}, fmt.Errorf("otlp endpoint %q: a gRPC endpoint has no path", shown)
	case e.Protocol == ProtocolHTTP && (u.Path == "" || u.Path == "/"):
		e.Path = defaultHTTPPath
	case e.Protocol == ProtocolHTTP:
		e.Path = u.EscapedPath()
	}
	return e, nil
}

// redactRaw is raw as errors may show it: without the user and password
// of its authority, its query and its fragment, each replaced by a
// marker. It works on the text, so that a URL that does not parse is
// shown safely too.
func redactRaw(raw string) string {
	s, cut := raw, false
	if i := strings.IndexAny(s, "?#"); i >= 0 {
		s, cut = s[:i], true
	}
	scheme, rest, ok := strings.Cut(s, "://")
	if !ok {
		scheme, rest = "", s
	}
	auth, path := rest, ""
	if i := strings.IndexByte(rest, '/'); i >= 0 {
		auth, path = rest[:i], rest[i:]
	}
	if i := strings.LastIndexByte(auth, '@'); i >= 0 {
		auth = "REDACTED@" + auth[i+1:]
	}
	out := auth + path
	if ok {
		out = scheme + "://" + out
	}
	if cut {
		out += "?REDACTED"
	}
	return out
}

// validSampling checks a sampling ratio.
func validSampling(r float64) error {
	if math.IsNaN(r) || r < 0 || r > 1 {
		return fmt.Errorf("trace sampling %v: want a ratio from 0 to 1", r)
	}
	return nil
}

// Config configures a Tracer.
type Config struct {
	// Endpoint is where spans go (ParseEndpoint).
	Endpoint Endpoint
	// Sampling is the share, 0 to 1, of the traces this proxy starts
	// (requests without a valid traceparent) that it records; a request
	// with a traceparent follows its caller's decision (the sampled
	// flag). Callers set DefaultSampling themselves: 0 here records only
	// what callers sampled.
	Sampling float64
	// QueueSize bounds the ended spans waiting for the exporter; 0 means
	// DefaultQueueSize.
	QueueSize int
	// Service, Version and Instance name the proxy in every span's
	// resource (service.name, service.version, service.instance.id).
	Service, Version, Instance string
}

// Validate reports every problem at once.
func (c *Config) Validate() error {
	var errs []error
	if c.Endpoint.Host == "" {
		errs = append(errs, errors.New("otlp endpoint: required"))
	}
	if err := validSampling(c.Sampling); err != nil {
		errs = append(errs, err)
	}
	if c.QueueSize < 0 {
		errs = append(errs, fmt.Errorf("trace queue size %d: must not be negative", c.QueueSize))
	}
	if c.Service == "" {
		errs = append(errs, errors.New("tracing: service required"))
	}
	return errors.Join(errs...)
}
