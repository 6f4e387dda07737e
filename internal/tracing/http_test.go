package tracing

import (
	"io"
	"net/http"
	"net/http/httptest"
	"sync"
	"testing"

	"github.com/prometheus/client_golang/prometheus/testutil"
	collectortrace "go.opentelemetry.io/proto/otlp/collector/trace/v1"
	"google.golang.org/protobuf/proto"
)

// OTLP/HTTP: spans are POSTed as protobuf to the endpoint's path; a
// collector's refusal counts the batch's spans as export_failed.
func TestHTTPExport(t *testing.T) {
	var (
		mu     sync.Mutex
		refuse = true
		paths  []string
		names  []string
	)
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		b, _ := io.ReadAll(r.Body)
		mu.Lock()
		defer mu.Unlock()
		paths = append(paths, r.URL.Path)
		if refuse {
			http.Error(w, "no", http.StatusBadRequest) // not retried
			return
		}
		var req collectortrace.ExportTraceServiceRequest
		if err := proto.Unmarshal(b, &req); err != nil || r.Header.Get("Content-Type") != "application/x-protobuf" {
			http.Error(w, "bad body", http.StatusBadRequest)
			return
		}
		for _, rs := range req.ResourceSpans {
			for _, ss := range rs.ScopeSpans {
				for _, s := range ss.Spans {
					names = append(names, s.Name)
				}
			}
		}
		w.Header().Set("Content-Type", "application/x-protobuf")
		out, _ := proto.Marshal(&collectortrace.ExportTraceServiceResponse{})
		w.Write(out)
	}))
	defer srv.Close()
	e, err := ParseEndpoint(srv.URL+"/otlp/v1/traces", "")
	if err != nil {
		t.Fatal(err)
	}
	m := NewMetrics(nil)
	tr, err := New(Config{Endpoint: e, Sampling: 1, Service: "web"}, Options{Metrics: m})
	if err != nil {
		t.Fatal(err)
	}
	defer tr.Shutdown(t.Context())

	tr.StartClient(http.Header{}, "GET", "refused").End("default", "v1", 200, 1)
	flush(t, tr)
	if got := testutil.ToFloat64(m.Dropped.WithLabelValues(DropExportFailed)); got != 1 {
		t.Errorf("export_failed = %v after a refused export of one span, want 1", got)
	}
	mu.Lock()
	refuse = false
	mu.Unlock()
	tr.StartClient(http.Header{}, "POST", "backend").End("default", "v1", 200, 1)
	flush(t, tr)
	mu.Lock()
	defer mu.Unlock()
	if len(names) != 1 || names[0] != "POST backend" {
		t.Errorf("collector got spans %q, want [POST backend]", names)
	}
	for _, p := range paths {
		if p != "/otlp/v1/traces" {
			t.Errorf("export to path %q, want /otlp/v1/traces", p)
		}
	}
}
