package sidecar

import (
	"strings"
	"testing"
)

func TestTracingValidate(t *testing.T) {
	ratio := func(f float64) *float64 { return &f }
	for _, tc := range []struct {
		name string
		tr   Tracing
		err  string
	}{
		{"grpc", Tracing{Endpoint: "grpc://127.0.0.1:4317"}, ""},
		{"http with a ratio", Tracing{Endpoint: "http://127.0.0.1:4318", Sampling: ratio(1)}, ""},
		{"http as grpc", Tracing{Endpoint: "http://127.0.0.1:4317", Protocol: "grpc", Sampling: ratio(0)}, ""},
		{"no scheme", Tracing{Endpoint: "127.0.0.1:4317"}, "want a URL"},
		{"empty", Tracing{}, "want a URL"},
		{"ratio over 1", Tracing{Endpoint: "grpc://127.0.0.1:4317", Sampling: ratio(1.5)}, "trace sampling 1.5: want a ratio from 0 to 1"},
		{"protocol", Tracing{Endpoint: "grpc://127.0.0.1:4317", Protocol: "udp"}, `otlp protocol "udp"`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			cfg := Config{Service: "web", AppAddr: "127.0.0.1:8080", Server: "127.0.0.1:7700", Token: "x", Tracing: &tc.tr}
			err := cfg.Validate()
			if tc.err == "" && err != nil || tc.err != "" && (err == nil || !strings.Contains(err.Error(), tc.err)) {
				t.Fatalf("Validate: %v, want an error with %q", err, tc.err)
			}
		})
	}
}
