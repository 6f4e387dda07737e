package control

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/trellis-mesh/trellis/internal/store"
	"github.com/trellis-mesh/trellis/internal/trellistest"
)

// At most the limit of registrations run at once; the others wait, are
// counted as waiting, and run as slots free up; one whose stream ends
// while it waits leaves without running.
func TestAdmissionLimitsConcurrentRegistrations(t *testing.T) {
	a := newAdmission(2, prometheus.NewRegistry())
	release := make(chan struct{})
	started := make(chan int, 10)
	var mu sync.Mutex
	running, most := 0, 0
	var wg sync.WaitGroup
	for i := range 5 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			err := a.run(context.Background(), func() error {
				mu.Lock()
				running++
				most = max(most, running)
				mu.Unlock()
				started <- i
				<-release
				mu.Lock()
				running--
				mu.Unlock()
				return nil
			})
			if err != nil {
				t.Errorf("registration %d: %v", i, err)
			}
		}()
	}
	<-started
	<-started
	// Three wait: the gauge says so once they are queued (no event marks
	// a goroutine blocking on the channel).
	waitGauge(t, a.waiting, 3)
	if got := testutil.ToFloat64(a.active); got != 2 {
		t.Errorf("active: got %v, want 2", got)
	}

	// One more that gives up while it waits: it never runs.
	ctx, cancel := context.WithCancelCause(context.Background())
	gaveUp := make(chan error, 1)
	go func() {
		gaveUp <- a.run(ctx, func() error {
			t.Error("a registration whose stream ended ran")
			return nil
		})
	}()
	waitGauge(t, a.waiting, 4)
	cancel(errors.New("proxy gone"))
	if err := <-gaveUp; err == nil || !errors.Is(err, context.Cause(ctx)) {
		t.Errorf("cancelled wait: got %v, want the stream's cause", err)
	}

	close(release)
	wg.Wait()
	if most != 2 {
		t.Errorf("registrations at once: got %d, want 2", most)
	}
	if w, act := testutil.ToFloat64(a.waiting), testutil.ToFloat64(a.active); w != 0 || act != 0 {
		t.Errorf("after all: waiting %v, active %v; want 0, 0", w, act)
	}
}

// A registration the store refused for overload is tried again, up to
// the limit; other errors, a lost lease and success end it at once.
func TestAdmissionRetriesRefusedRegistrations(t *testing.T) {
	refused := fmt.Errorf("commit: %w: etcdserver: too many requests", store.ErrNotApplied)
	lost := fmt.Errorf("commit: %w: %w", store.ErrNotApplied, store.ErrLeaseNotFound)
	other := errors.New("connection reset")
	for _, tc := range []struct {
		name      string
		errs      []error // returned by successive tries; then nil
		wantTries int
		wantErr   error
	}{
		{"success", nil, 1, nil},
		{"refused twice, then registered", []error{refused, refused}, 3, nil},
		{"refused every time", []error{refused, refused, refused, refused, refused, refused}, 4, refused},
		{"another error", []error{other, nil}, 1, other},
		{"lease lost", []error{lost, nil}, 1, lost},
	} {
		t.Run(tc.name, func(t *testing.T) {
			a := newAdmission(1, prometheus.NewRegistry())
			a.retry = backoff{tries: 4, min: time.Millisecond, max: 4 * time.Millisecond}
			tries := 0
			err := a.run(context.Background(), func() error {
				tries++
				if tries <= len(tc.errs) {
					return tc.errs[tries-1]
				}
				return nil
			})
			if tries != tc.wantTries {
				t.Errorf("tries: got %d, want %d", tries, tc.wantTries)
			}
			if !errors.Is(err, tc.wantErr) || (err == nil) != (tc.wantErr == nil) {
				t.Errorf("error: got %v, want %v", err, tc.wantErr)
			}
		})
	}
}

// A stream that ends during the backoff ends its registration then.
func TestAdmissionRetryEndsWithStream(t *testing.T) {
	a := newAdmission(1, prometheus.NewRegistry())
	a.retry = backoff{tries: 100, min: time.Hour, max: time.Hour}
	ctx, cancel := context.WithCancel(context.Background())
	refused := fmt.Errorf("%w: too many requests", store.ErrNotApplied)
	err := a.run(ctx, func() error {
		cancel()
		return refused
	})
	if !errors.Is(err, refused) {
		t.Errorf("got %v, want the refusal", err)
	}
}

// waitGauge waits until g is want: a goroutine blocking on a channel
// sends no event.
func waitGauge(t *testing.T, g prometheus.Gauge, want float64) {
	t.Helper()
	trellistest.Eventually(t, 5*time.Second, "gauge", func() error {
		if got := testutil.ToFloat64(g); got != want {
			return fmt.Errorf("got %v, want %v", got, want)
		}
		return nil
	})
}
