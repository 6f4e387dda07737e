package cli

import (
	"github.com/trellis-mesh/trellis/internal/sidecar"
	"github.com/trellis-mesh/trellis/internal/tracing"
)

// tracingFlags are the OTLP export flags of a proxy or gateway; apply
// sets cfg's Tracing from those given (a config file may set it too), and
// refuses the other two without --otlp-endpoint.
func tracingFlags(fs *flagSet) (apply func(cfg *sidecar.Config, set map[string]bool) error) {
	endpoint := fs.String("otlp-endpoint", "", "export a span per request and side by OTLP to this collector: grpc://HOST:PORT or grpcs:// (OTLP/gRPC), http://HOST:PORT[/PATH] or https:// (OTLP/HTTP, path /v1/traces by default); off when empty")
	protocol := fs.String("otlp-protocol", "", "OTLP protocol of an http(s):// endpoint: "+tracing.ProtocolGRPC+" or "+tracing.ProtocolHTTP+" (default by the URL's scheme)")
	sampling := fs.Float64("trace-sampling", tracing.DefaultSampling, "share (0 to 1) of the traces this proxy starts that it records; a request with a traceparent follows its caller's sampled flag")
	return func(cfg *sidecar.Config, set map[string]bool) error {
		if !set["otlp-endpoint"] {
			for _, name := range []string{"otlp-protocol", "trace-sampling"} {
				if set[name] && cfg.Tracing == nil {
					return usageErr("--%s needs --otlp-endpoint", name)
				}
			}
		}
		if set["otlp-endpoint"] {
			if *endpoint == "" {
				cfg.Tracing = nil
				return nil
			}
			if cfg.Tracing == nil {
				cfg.Tracing = &sidecar.Tracing{}
			}
			cfg.Tracing.Endpoint = *endpoint
		}
		if cfg.Tracing == nil {
			return nil
		}
		if set["otlp-protocol"] {
			cfg.Tracing.Protocol = *protocol
		}
		if set["trace-sampling"] {
			r := *sampling
			cfg.Tracing.Sampling = &r
		}
		return nil
	}
}
