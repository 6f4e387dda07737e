package store_test

import (
	"context"
	"syscall"
	"testing"
	"time"

	"github.com/trellis-mesh/trellis/internal/store"
)

// A lease etcd still holds is not lost because etcd was slow to answer
// its first keep-alive: the etcd client gives up on a new lease after its
// dial timeout plus 1 s without an answer, which a busy etcd with
// thousands of leases exceeded, and KeepAlive took that for a lost lease.
// Here etcd stalls (SIGSTOP) for 3 s, past the client's 2 s, and within
// the lease's 6 s TTL; KeepAlive must keep the lease for well past its
// TTL after etcd resumes.
func TestKeepAliveOutlastsSlowFirstAnswer(t *testing.T) {
	url, proc := startExternalProc(t, "http")
	pid := proc.Pid
	s, err := store.NewEtcd(context.Background(), store.EtcdConfig{Endpoints: []string{url}, DialTimeout: time.Second, Prefix: "/keepalive"})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	ctx, cancel := context.WithCancel(t.Context())
	defer cancel()
	lease, err := s.Grant(ctx, 6*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	if err := s.Commit(ctx, []store.Op{{Key: "/k", Value: []byte("v"), Lease: lease}}); err != nil {
		t.Fatal(err)
	}

	if err := syscall.Kill(pid, syscall.SIGSTOP); err != nil {
		t.Fatal(err)
	}
	stopped := true
	defer func() {
		if stopped {
			syscall.Kill(pid, syscall.SIGCONT)
		}
	}()
	done := make(chan error, 1)
	go func() { done <- s.KeepAlive(ctx, lease) }()
	// The stall is the fault under test, not a synchronization: it must
	// outlast the client's first-answer deadline (2 s).
	select {
	case err := <-done:
		t.Fatalf("KeepAlive returned while etcd stalled: %v", err)
	case <-time.After(3 * time.Second):
	}
	if err := syscall.Kill(pid, syscall.SIGCONT); err != nil {
		t.Fatal(err)
	}
	stopped = false

	// Past twice the TTL: a lease not kept alive would be gone.
	select {
	case err := <-done:
		t.Fatalf("KeepAlive returned after etcd resumed: %v", err)
	case <-time.After(12 * time.Second):
	}
	if _, err := s.Get(ctx, "/k"); err != nil {
		t.Fatalf("the lease's key after 12 s: %v", err)
	}
	cancel()
	if err := <-done; err == nil {
		t.Errorf("KeepAlive after cancel: got nil, want the context's error")
	}
}
