package sidecar

import (
	"context"
	"errors"
	"fmt"
	mrand "math/rand/v2"
	"net"
	"net/netip"
	"sync"
	"sync/atomic"
	"time"

	discoveryv3 "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	"google.golang.org/grpc"
	"google.golang.org/grpc/connectivity"
)

// How a proxy moves between the servers of its --server list. One backoff
// only: each attempt dials a fresh gRPC connection and closes it after, so
// gRPC's own reconnection backoff (up to 120 s) never stacks on this one.
const (
	// reconnectBase and reconnectCap bound the wait after a round in
	// which no server took a stream: full jitter over a ceiling that
	// starts at reconnectBase and doubles up to reconnectCap, so a proxy
	// is back within about reconnectCap of any server returning, and
	// proxies that lost their server together do not return together.
	reconnectBase = 250 * time.Millisecond
	reconnectCap  = 5 * time.Second
	// stableStream is how long a stream must have lasted for its end to
	// count as a move rather than a failure: a server that accepts and
	// drops streams at once is not retried without backoff.
	stableStream = 5 * time.Second
	// connectTimeout bounds one dial (TCP and TLS) to one server.
	connectTimeout = 5 * time.Second
	// resolveTimeout bounds the DNS look-up of one name of the list.
	resolveTimeout = 2 * time.Second
)

// reconnectDelay is the wait after the round-th consecutive round (from 1)
// in which no server of the list took a stream.
func reconnectDelay(round int) time.Duration {
	ceiling := reconnectCap
	if round < 16 {
		ceiling = min(reconnectBase<<max(round-1, 0), reconnectCap)
	}
	return mrand.N(ceiling + 1)
}

// target is one server address a proxy may dial.
type target struct {
	// entry is the list's host:port: its host is the name the server's
	// certificate must carry, and what the API client is pointed at.
	entry string
	// addr is the IP:port dialed, one of entry's addresses.
	addr string
}

// lookupFunc resolves a host name to IP addresses (net.Resolver.LookupHost).
type lookupFunc func(ctx context.Context, host string) ([]string, error)

// resolveTargets expands the list's entries into the addresses to dial,
// every address of a DNS name included, in order and without repeats.
// Names that do not resolve are left out; their errors are returned
// joined, beside what did resolve.
func resolveTargets(ctx context.Context, entries []string, lookup lookupFunc) ([]target, error) {
	var out []target
	var errs []error
	seen := map[string]bool{}
	add := func(entry, addr string) {
		if !seen[addr] {
			seen[addr] = true
			out = append(out, target{entry: entry, addr: addr})
		}
	}
	for _, e := range entries {
		host, port, err := net.SplitHostPort(e)
		if err != nil {
			errs = append(errs, fmt.Errorf("server %s: %w", e, err))
			continue
		}
		if _, err := netip.ParseAddr(host); err == nil {
			add(e, e)
			continue
		}
		rctx, cancel := context.WithTimeout(ctx, resolveTimeout)
		ips, err := lookup(rctx, host)
		cancel()
		if err != nil {
			errs = append(errs, fmt.Errorf("server %s: %w", e, err))
			continue
		}
		for _, ip := range ips {
			add(e, net.JoinHostPort(ip, port))
		}
	}
	return out, errors.Join(errs...)
}

// pickTarget returns a random target whose address is not in tried: random,
// so that proxies spread over the servers, and a different one after each
// failure or move.
func pickTarget(ts []target, tried map[string]bool) (target, bool) {
	var left []target
	for _, t := range ts {
		if !tried[t.addr] {
			left = append(left, t)
		}
	}
	if len(left) == 0 {
		return target{}, false
	}
	return left[mrand.N(len(left))], true
}

// errServerGoingAway is the cause of a stream cancelled because its
// connection left the ready state while the stream was open: the server
// sent GOAWAY (it is shutting down, or it closes old connections), or the
// connection broke.
var errServerGoingAway = errors.New("server closed the connection (GOAWAY)")

// watchConn cancels the stream with errServerGoingAway when conn, once
// ready, leaves that state; it returns when ctx ends. A GOAWAY leaves the
// open stream running until the server ends it, possibly seconds later:
// watching the connection moves the proxy at once instead.
func watchConn(ctx context.Context, conn *grpc.ClientConn, cancel context.CancelCauseFunc) {
	ready := false
	for s := conn.GetState(); ; s = conn.GetState() {
		if s == connectivity.Ready {
			ready = true
		} else if ready {
			cancel(errServerGoingAway)
			return
		}
		if !conn.WaitForStateChange(ctx, s) {
			return
		}
	}
}

// observedADS notes in got whether a stream it opened received anything:
// whether the server took the stream, as opposed to refusing it.
type observedADS struct {
	discoveryv3.AggregatedDiscoveryServiceClient
	got *atomic.Bool
}

func (o observedADS) StreamAggregatedResources(ctx context.Context, opts ...grpc.CallOption) (discoveryv3.AggregatedDiscoveryService_StreamAggregatedResourcesClient, error) {
	st, err := o.AggregatedDiscoveryServiceClient.StreamAggregatedResources(ctx, opts...)
	if err != nil {
		return nil, err
	}
	return observedStream{st, o.got}, nil
}

type observedStream struct {
	discoveryv3.AggregatedDiscoveryService_StreamAggregatedResourcesClient
	got *atomic.Bool
}

func (s observedStream) Recv() (*discoveryv3.DiscoveryResponse, error) {
	r, err := s.AggregatedDiscoveryService_StreamAggregatedResourcesClient.Recv()
	if err == nil {
		s.got.Store(true)
	}
	return r, err
}

// logOnce logs a line only when its key differs from the last one logged,
// and at debug otherwise: a proxy whose servers are all down says so once,
// not once per attempt. One goroutine (runControl's) uses it.
type logOnce struct {
	mu   sync.Mutex
	last string
}

// changed reports whether key differs from the last one, and records it.
func (l *logOnce) changed(key string) bool {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.last == key {
		return false
	}
	l.last = key
	return true
}
