// Package tracing exports the proxies' spans by OTLP (gRPC or HTTP) with
// the OpenTelemetry SDK: one span per hop on each side of a request (a
// client span where a proxy sends it on, a server span where a proxy hands
// it to its app), parented by the request's W3C traceparent, which then
// names the new span. Ended spans wait in a bounded queue for the
// exporter; when it is full they are dropped and counted
// (trellis_trace_spans_dropped_total), never waited for: a slow or absent
// collector costs traces, not requests. A nil *Tracer and a nil *Span do
// nothing, so that a proxy without tracing pays one nil check per request.
package tracing
