// Package tracing exports the proxies' spans by OTLP (gRPC or HTTP): one
// span per hop on each side of a request (a client span where a proxy
// sends it on, a server span where a proxy hands it to its app),
// parented by the request's W3C traceparent, which then names the new
// span. Ended spans wait in a bounded queue for the exporter; when it is
// full they are dropped and counted (trellis_trace_spans_dropped_total),
// never waited for: a slow or absent collector costs traces, not
// requests. A nil *Tracer and a nil *Span do nothing, so that a proxy
// without tracing pays one nil check per request.
//
// It records spans and encodes them itself (otlp.go) rather than with the
// OpenTelemetry SDK: the SDK, its exporters and the OTLP message packages
// are linked and initialised in every proxy, tracing or not, and cost a
// sidecar 1.1 MB of idle RSS. What it does the same way: W3C traceparent
// parenting, parent-based sampling with the TraceIDRatioBased rule for
// the traces a proxy starts, a bounded queue in front of batched exports.
package tracing
