package tracing

import (
	"bytes"
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"net/http"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/encoding/protowire"
)

// The encoder below writes an ExportTraceServiceRequest by hand, with
// the field numbers of the published OTLP protos
// (opentelemetry/proto/collector/trace/v1/trace_service.proto and the
// trace, resource and common protos it imports). The message types of
// go.opentelemetry.io/proto/otlp would do the same, but linking them
// registers their descriptors at start in every proxy, tracing or not;
// the tests decode what this writes with those types.
const (
	fExportResourceSpans = 1 // ExportTraceServiceRequest.resource_spans
	fRSResource          = 1 // ResourceSpans.resource
	fRSScopeSpans        = 2 // ResourceSpans.scope_spans
	fResourceAttributes  = 1 // Resource.attributes
	fSSScope             = 1 // ScopeSpans.scope
	fSSSpans             = 2 // ScopeSpans.spans
	fScopeName           = 1 // InstrumentationScope.name
	fSpanTraceID         = 1
	fSpanSpanID          = 2
	fSpanTraceState      = 3
	fSpanParentSpanID    = 4
	fSpanName            = 5
	fSpanKind            = 6
	fSpanStart           = 7 // fixed64 start_time_unix_nano
	fSpanEnd             = 8 // fixed64 end_time_unix_nano
	fSpanAttributes      = 9
	fSpanStatus          = 15
	fSpanFlags           = 16 // fixed32
	fStatusMessage       = 2
	fStatusCode          = 3
	fKVKey               = 1
	fKVValue             = 2
	fAnyString           = 1
	fAnyInt              = 3

	kindServer      = 2 // SPAN_KIND_SERVER
	kindClient      = 3 // SPAN_KIND_CLIENT
	statusCodeError = 2 // STATUS_CODE_ERROR
	// flagHasIsRemote and flagIsRemote: bits 8 and 9 of Span.flags say
	// whether the parent came from another process.
	flagHasIsRemote = 0x100
	flagIsRemote    = 0x200
	scopeName       = "github.com/trellis-mesh/trellis/internal/tracing"
)

// message appends field num holding the message that fill appends.
func message(b []byte, num protowire.Number, fill func([]byte) []byte) []byte {
	b = protowire.AppendTag(b, num, protowire.BytesType)
	at := len(b)
	b = append(b, 0, 0, 0, 0, 0) // room for the length, up to 2^35
	b = fill(b)
	n := len(b) - at - 5
	// Rewrite the length in as few bytes as it takes.
	l := protowire.AppendVarint(nil, uint64(n))
	copy(b[at:], l)
	copy(b[at+len(l):], b[at+5:])
	return b[:at+len(l)+n]
}

func appendString(b []byte, num protowire.Number, s string) []byte {
	b = protowire.AppendTag(b, num, protowire.BytesType)
	return protowire.AppendString(b, s)
}

func appendKV(b []byte, num protowire.Number, a attr) []byte {
	return message(b, num, func(b []byte) []byte {
		b = appendString(b, fKVKey, a.key)
		return message(b, fKVValue, func(b []byte) []byte {
			if a.isInt {
				b = protowire.AppendTag(b, fAnyInt, protowire.VarintType)
				return protowire.AppendVarint(b, uint64(a.i))
			}
			return appendString(b, fAnyString, a.s)
		})
	})
}

// encodeRequest is the ExportTraceServiceRequest of spans from the
// proxy resource describes.
func encodeRequest(resource []attr, spans []*span) []byte {
	b := make([]byte, 0, 256*len(spans)+128)
	return message(b, fExportResourceSpans, func(b []byte) []byte {
		b = message(b, fRSResource, func(b []byte) []byte {
			for _, a := range resource {
				b = appendKV(b, fResourceAttributes, a)
			}
			return b
		})
		return message(b, fRSScopeSpans, func(b []byte) []byte {
			b = message(b, fSSScope, func(b []byte) []byte { return appendString(b, fScopeName, scopeName) })
			for _, s := range spans {
				b = message(b, fSSSpans, s.appendProto)
			}
			return b
		})
	})
}

func (s *span) appendProto(b []byte) []byte {
	b = protowire.AppendTag(b, fSpanTraceID, protowire.BytesType)
	b = protowire.AppendBytes(b, s.sc.traceID[:])
	b = protowire.AppendTag(b, fSpanSpanID, protowire.BytesType)
	b = protowire.AppendBytes(b, s.sc.spanID[:])
	if s.tracestate != "" {
		b = appendString(b, fSpanTraceState, s.tracestate)
	}
	flags := uint32(0x01) // sampled: only sampled spans are exported
	if s.parent != ([8]byte{}) {
		b = protowire.AppendTag(b, fSpanParentSpanID, protowire.BytesType)
		b = protowire.AppendBytes(b, s.parent[:])
		flags |= flagHasIsRemote
		if s.remoteParent {
			flags |= flagIsRemote
		}
	}
	b = appendString(b, fSpanName, s.name)
	b = protowire.AppendTag(b, fSpanKind, protowire.VarintType)
	b = protowire.AppendVarint(b, uint64(s.kind))
	b = protowire.AppendTag(b, fSpanStart, protowire.Fixed64Type)
	b = protowire.AppendFixed64(b, uint64(s.start.UnixNano()))
	b = protowire.AppendTag(b, fSpanEnd, protowire.Fixed64Type)
	b = protowire.AppendFixed64(b, uint64(s.end.UnixNano()))
	for _, a := range s.attrs {
		b = appendKV(b, fSpanAttributes, a)
	}
	if s.errorMsg != "" {
		b = message(b, fSpanStatus, func(b []byte) []byte {
			b = appendString(b, fStatusMessage, s.errorMsg)
			b = protowire.AppendTag(b, fStatusCode, protowire.VarintType)
			return protowire.AppendVarint(b, statusCodeError)
		})
	}
	b = protowire.AppendTag(b, fSpanFlags, protowire.Fixed32Type)
	return protowire.AppendFixed32(b, flags)
}

// sender sends one encoded request; retryable errors say so.
type sender interface {
	send(ctx context.Context, body []byte) error
	close() error
}

// retryable marks an error worth another attempt.
type retryable struct{ error }

func (r retryable) Unwrap() error { return r.error }

// exportMethod is the OTLP trace service's one method.
const exportMethod = "/opentelemetry.proto.collector.trace.v1.TraceService/Export"

// grpcSender calls the OTLP trace service with the request already
// encoded: rawCodec passes bytes through as they are.
type grpcSender struct{ cc *grpc.ClientConn }

func newGRPCSender(e Endpoint) (*grpcSender, error) {
	creds := insecure.NewCredentials()
	if e.TLS {
		creds = credentials.NewTLS(&tls.Config{MinVersion: tls.VersionTLS12})
	}
	cc, err := grpc.NewClient(e.Host, grpc.WithTransportCredentials(creds)) // connects on first use
	if err != nil {
		return nil, err
	}
	return &grpcSender{cc: cc}, nil
}

func (g *grpcSender) send(ctx context.Context, body []byte) error {
	var resp []byte // an ExportTraceServiceResponse, not read
	err := g.cc.Invoke(ctx, exportMethod, body, &resp, grpc.ForceCodec(rawCodec{}))
	switch status.Code(err) {
	case codes.OK:
		return nil
	case codes.Unavailable, codes.ResourceExhausted, codes.Aborted:
		return retryable{err}
	}
	return err
}

func (g *grpcSender) close() error { return g.cc.Close() }

// rawCodec marshals a []byte and unmarshals into a *[]byte, as they
// are; its name keeps the content type application/grpc+proto.
type rawCodec struct{}

func (rawCodec) Marshal(v any) ([]byte, error) {
	b, ok := v.([]byte)
	if !ok {
		return nil, fmt.Errorf("raw codec: marshal %T", v)
	}
	return b, nil
}

func (rawCodec) Unmarshal(data []byte, v any) error {
	p, ok := v.(*[]byte)
	if !ok {
		return fmt.Errorf("raw codec: unmarshal into %T", v)
	}
	*p = append((*p)[:0], data...)
	return nil
}

func (rawCodec) Name() string { return "proto" }

// httpSender POSTs the request to the OTLP/HTTP endpoint.
type httpSender struct {
	url    string
	client *http.Client
}

func newHTTPSender(e Endpoint) *httpSender {
	scheme := "http://"
	if e.TLS {
		scheme = "https://"
	}
	t := &http.Transport{
		Proxy:               http.ProxyFromEnvironment,
		TLSClientConfig:     &tls.Config{MinVersion: tls.VersionTLS12},
		MaxIdleConnsPerHost: 1,
		IdleConnTimeout:     90 * time.Second,
	}
	return &httpSender{url: scheme + e.Host + e.Path, client: &http.Client{Transport: t}}
}

func (h *httpSender) send(ctx context.Context, body []byte) error {
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, h.url, bytes.NewReader(body))
	if err != nil {
		return err
	}
	req.Header.Set("Content-Type", "application/x-protobuf")
	resp, err := h.client.Do(req)
	if err != nil {
		return retryable{err}
	}
	defer resp.Body.Close()
	msg, _ := io.ReadAll(io.LimitReader(resp.Body, 512))
	switch {
	case resp.StatusCode >= 200 && resp.StatusCode < 300:
		return nil
	case resp.StatusCode == http.StatusTooManyRequests, resp.StatusCode == http.StatusBadGateway,
		resp.StatusCode == http.StatusServiceUnavailable, resp.StatusCode == http.StatusGatewayTimeout:
		return retryable{fmt.Errorf("collector answered %s", resp.Status)}
	}
	return fmt.Errorf("collector answered %s: %q", resp.Status, msg)
}

func (h *httpSender) close() error {
	h.client.CloseIdleConnections()
	return nil
}

// sendRetrying sends body, retrying what can be retried with a backoff
// from 500 ms to 2 s, until exportTimeout or ctx ends.
func sendRetrying(ctx context.Context, s sender, body []byte) error {
	ctx, cancel := context.WithTimeout(ctx, exportTimeout)
	defer cancel()
	wait := 500 * time.Millisecond
	for {
		err := s.send(ctx, body)
		var r retryable
		if err == nil || !errors.As(err, &r) {
			return err
		}
		t := time.NewTimer(wait)
		select {
		case <-t.C:
		case <-ctx.Done():
			t.Stop()
			return err
		}
		wait = min(2*wait, 2*time.Second)
	}
}
