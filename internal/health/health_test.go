package health

import (
	"context"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync/atomic"
	"testing"
	"time"
)

func TestRunReportsChanges(t *testing.T) {
	var status atomic.Int32
	status.Store(200)
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path != "/health" {
			w.WriteHeader(404)
			return
		}
		w.WriteHeader(int(status.Load()))
	}))
	defer srv.Close()
	c := &Checker{Addr: strings.TrimPrefix(srv.URL, "http://"), HTTPPath: "/health", Interval: 20 * time.Millisecond}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	reports := make(chan bool, 10)
	go c.Run(ctx, func(h bool, _ error) { reports <- h })
	want := func(v bool) {
		t.Helper()
		select {
		case got := <-reports:
			if got != v {
				t.Fatalf("report = %v, want %v", got, v)
			}
		case <-time.After(2 * time.Second):
			t.Fatalf("no report, want %v", v)
		}
	}
	want(true)
	status.Store(500)
	want(false)
	status.Store(204)
	want(true)
	srv.Close()
	want(false)
}

func TestTCPCheck(t *testing.T) {
	srv := httptest.NewServer(http.NotFoundHandler())
	c := &Checker{Addr: strings.TrimPrefix(srv.URL, "http://")}
	if err := c.Check(context.Background()); err != nil {
		t.Fatalf("TCP check of a listening port: %v", err)
	}
	srv.Close()
	if err := c.Check(context.Background()); err == nil {
		t.Fatal("TCP check of a closed port succeeded")
	}
}
