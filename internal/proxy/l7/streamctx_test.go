package l7

import (
	"context"
	"errors"
	"net/http"
	"testing"
	"time"

	v1 "github.com/trellis-mesh/trellis/api/v1"
	"github.com/trellis-mesh/trellis/internal/proxy/balance"
	"github.com/trellis-mesh/trellis/internal/trellistest"
)

// A stream's request context behaves as context.WithCancel of the
// background does, for itself, for context.AfterFunc (which it serves
// itself) and for contexts derived from it.
func TestStreamContextLikeWithCancel(t *testing.T) {
	for _, tc := range []struct {
		name string
		run  func(t *testing.T, ctx context.Context, cancel func())
	}{
		{"open, then ended", func(t *testing.T, ctx context.Context, cancel func()) {
			if ctx.Err() != nil {
				t.Fatalf("Err before the end: %v", ctx.Err())
			}
			done := ctx.Done()
			select {
			case <-done:
				t.Fatal("done before the end")
			default:
			}
			cancel()
			<-done
			if !errors.Is(ctx.Err(), context.Canceled) || !errors.Is(context.Cause(ctx), context.Canceled) {
				t.Fatalf("Err %v, Cause %v after the end", ctx.Err(), context.Cause(ctx))
			}
			cancel() // again: nothing
		}},
		{"Done asked for after the end", func(t *testing.T, ctx context.Context, cancel func()) {
			cancel()
			<-ctx.Done()
		}},
		{"AfterFunc runs after the end", func(t *testing.T, ctx context.Context, cancel func()) {
			ran := make(chan struct{})
			stop := context.AfterFunc(ctx, func() { close(ran) })
			cancel()
			<-ran
			if stop() {
				t.Fatal("stop after the function ran reported that it stopped it")
			}
		}},
		{"AfterFunc stopped before the end", func(t *testing.T, ctx context.Context, cancel func()) {
			ran := make(chan struct{}, 1)
			stop := context.AfterFunc(ctx, func() { ran <- struct{}{} })
			other := make(chan struct{})
			context.AfterFunc(ctx, func() { close(other) })
			if !stop() {
				t.Fatal("stop before the end did not report stopping")
			}
			cancel()
			<-other // ran after the end, and the stopped one, had it run, before it
			context.AfterFunc(ctx, func() {})()
			select {
			case <-ran:
				t.Fatal("a stopped function ran")
			default:
			}
		}},
		{"AfterFunc after the end runs at once", func(t *testing.T, ctx context.Context, cancel func()) {
			cancel()
			ran := make(chan struct{})
			context.AfterFunc(ctx, func() { close(ran) })
			<-ran
		}},
		{"a derived context ends with it", func(t *testing.T, ctx context.Context, cancel func()) {
			child, childCancel := context.WithCancel(context.WithValue(ctx, malformedKey{}, 1))
			defer childCancel()
			cancel()
			<-child.Done()
			if !errors.Is(child.Err(), context.Canceled) {
				t.Fatalf("child Err %v", child.Err())
			}
		}},
		{"a derived context ended first leaves it open", func(t *testing.T, ctx context.Context, cancel func()) {
			child, childCancel := context.WithCancel(ctx)
			childCancel()
			<-child.Done()
			if ctx.Err() != nil {
				t.Fatalf("parent Err %v after the child's end", ctx.Err())
			}
			cancel()
		}},
	} {
		t.Run(tc.name+"/WithCancel", func(t *testing.T) {
			ctx, cancel := context.WithCancel(context.Background())
			tc.run(t, ctx, cancel)
		})
		t.Run(tc.name+"/streamContext", func(t *testing.T) {
			var c streamContext
			tc.run(t, &c, c.cancel)
		})
	}
}

// Waiting on a stream's context as the app client does (its AfterFunc,
// stopped when the answer came) costs one allocation, the stop function.
func TestStreamContextAfterFuncAllocations(t *testing.T) {
	var c streamContext
	f := func() {}
	if n := testing.AllocsPerRun(100, func() { c.AfterFunc(f)() }); n > 1 {
		t.Errorf("streamContext.AfterFunc and stop: %v allocations, want at most 1", n)
	}
}

// When the caller's request ends (here the route timeout resets its
// stream), the inbound's call to the app is cut: the app sees its
// request's context end, through the stream's context and the app
// client's wait on it.
func TestEndedStreamInterruptsAppCall(t *testing.T) {
	ca := trellistest.NewCA(t, "trellis.local")
	a := startApp(t, "web")
	gone := make(chan struct{})
	release := make(chan struct{})
	t.Cleanup(func() { close(release) })
	a.serve = func(w http.ResponseWriter, r *http.Request) {
		select {
		case <-r.Context().Done():
			close(gone)
		case <-release:
		}
	}
	in := startInbound(t, ca, a, allowAll)
	rt := mustCompile(t, &v1.RouteSpec{Rules: []v1.RouteRule{{Name: "slow", Timeout: "200ms"}}})
	url, _ := startOutbound(t, ca, static(rt, balance.Endpoint{Addr: in}))
	if code, body, _ := get(t, url+"/"); code != http.StatusGatewayTimeout {
		t.Fatalf("%d %q, want 504", code, body)
	}
	select {
	case <-gone:
	case <-time.After(10 * time.Second):
		t.Fatal("the app's call went on after its caller's stream ended")
	}
}
