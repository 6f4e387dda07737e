package sidecar

import (
	"context"
	"encoding/json"
	"io"
	"log/slog"
	"net"
	"net/http"
	"reflect"
	"slices"
	"strings"
	"testing"
	"time"
	"unicode"
	"unicode/utf8"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/trellis-mesh/trellis/internal/topology"
	"github.com/trellis-mesh/trellis/internal/xds"
)

// The profiler is off unless asked for: any local user reaches the admin
// port, and a profile shows what the proxy holds.
func TestPprofOnlyWithTheFlag(t *testing.T) {
	for _, tc := range []struct {
		pprof bool
		want  int
	}{{false, http.StatusNotFound}, {true, http.StatusOK}} {
		p := &Proxy{cfg: Config{Pprof: tc.pprof, Registry: prometheus.NewRegistry()}, log: slog.New(slog.DiscardHandler), ready: make(chan struct{})}
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		ctx, cancel := context.WithCancel(context.Background())
		done := make(chan struct{})
		go func() { defer close(done); p.serveAdmin(ctx, l) }()
		for _, path := range []string{"/debug/pprof/", "/debug/pprof/goroutine?debug=1"} {
			resp, err := http.Get("http://" + l.Addr().String() + path)
			if err != nil {
				t.Fatal(err)
			}
			io.Copy(io.Discard, resp.Body)
			resp.Body.Close()
			if resp.StatusCode != tc.want {
				t.Errorf("pprof=%v: GET %s = %d, want %d", tc.pprof, path, resp.StatusCode, tc.want)
			}
		}
		cancel()
		<-done
	}
}

// fill sets every settable field under v to a non-zero value (one element
// in each slice and map), so that omitempty hides nothing from a test of
// what the JSON holds.
func fill(v reflect.Value, depth int) {
	if depth > 12 || !v.CanSet() {
		return
	}
	switch v.Kind() {
	case reflect.Pointer:
		v.Set(reflect.New(v.Type().Elem()))
		fill(v.Elem(), depth+1)
	case reflect.Struct:
		if v.Type() == reflect.TypeFor[time.Time]() {
			v.Set(reflect.ValueOf(time.Unix(1, 0)))
			return
		}
		for i := range v.NumField() {
			fill(v.Field(i), depth+1)
		}
	case reflect.Slice:
		v.Set(reflect.MakeSlice(v.Type(), 1, 1))
		fill(v.Index(0), depth+1)
	case reflect.Map:
		m := reflect.MakeMap(v.Type())
		k, e := reflect.New(v.Type().Key()).Elem(), reflect.New(v.Type().Elem()).Elem()
		fill(k, depth+1)
		fill(e, depth+1)
		m.SetMapIndex(k, e)
		v.Set(m)
	case reflect.String:
		v.SetString("x")
	case reflect.Bool:
		v.SetBool(true)
	case reflect.Int, reflect.Int8, reflect.Int16, reflect.Int32, reflect.Int64:
		v.SetInt(1)
	case reflect.Uint, reflect.Uint8, reflect.Uint16, reflect.Uint32, reflect.Uint64:
		v.SetUint(1)
	case reflect.Float32, reflect.Float64:
		v.SetFloat(1)
	}
}

// upperKeys returns the path of every key under v (decoded JSON) that
// starts with an upper-case letter: a Go field name with no json tag.
func upperKeys(v any, path string) []string {
	var out []string
	switch v := v.(type) {
	case map[string]any:
		for k, e := range v {
			if r, _ := utf8.DecodeRuneInString(k); unicode.IsUpper(r) {
				out = append(out, path+"."+k)
			}
			out = append(out, upperKeys(e, path+"."+k)...)
		}
	case []any:
		for _, e := range v {
			out = append(out, upperKeys(e, path+"[]")...)
		}
	}
	return out
}

// adminGet serves p's admin endpoints and returns the body of GET path.
func adminGet(t *testing.T, p *Proxy, path string) (int, string) {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { defer close(done); p.serveAdmin(ctx, l) }()
	defer func() { cancel(); <-done }()
	resp, err := http.Get("http://" + l.Addr().String() + path)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b)
}

// /config is JSON with camelCase keys only, as the rest of the API is: no
// Go field names such as "Instance" (issue 23 item 4). Every field of
// the registration and the snapshot is filled, so that a new field
// without a json tag fails here.
func TestConfigKeysAreCamelCase(t *testing.T) {
	var reg xds.Registration
	fill(reflect.ValueOf(&reg).Elem(), 0)
	var snap topology.Snapshot
	fill(reflect.ValueOf(&snap).Elem(), 0)
	p := &Proxy{cfg: Config{Registry: prometheus.NewRegistry()}, log: slog.New(slog.DiscardHandler), ready: make(chan struct{})}
	p.reg.Store(&reg)
	p.cur.Store(&applied{snap: &snap})
	code, body := adminGet(t, p, "/config")
	if code != http.StatusOK {
		t.Fatalf("GET /config: %d %s", code, body)
	}
	var v any
	if err := json.Unmarshal([]byte(body), &v); err != nil {
		t.Fatalf("/config is not JSON: %v", err)
	}
	for _, want := range []string{`"instance"`, `"svidExpiresAt"`, `"upstreams"`} {
		if !strings.Contains(body, want) {
			t.Errorf("/config lacks %s", want)
		}
	}
	if bad := upperKeys(v, ""); len(bad) > 0 {
		slices.Sort(bad)
		t.Errorf("/config has keys that are Go field names: %v", bad)
	}
}

// The admin root lists the endpoints, so that a person who opens it learns
// what there is (issue 23 item 4).
func TestAdminIndexListsEndpoints(t *testing.T) {
	p := &Proxy{cfg: Config{Registry: prometheus.NewRegistry()}, log: slog.New(slog.DiscardHandler), ready: make(chan struct{})}
	code, body := adminGet(t, p, "/")
	if code != http.StatusOK {
		t.Fatalf("GET /: %d %s", code, body)
	}
	for _, want := range []string{"/ready", "/config", "/certs", "/metrics"} {
		if !strings.Contains(body, want) {
			t.Errorf("GET / = %q; lacks %s", body, want)
		}
	}
	if strings.Contains(body, "/debug/pprof") {
		t.Errorf("GET / lists the profiler, which is off: %q", body)
	}
	if code, _ := adminGet(t, p, "/nothing"); code != http.StatusNotFound {
		t.Errorf("GET /nothing: %d, want 404", code)
	}
}
