package balance

import (
	"testing"
	"time"
)

func TestPick(t *testing.T) {
	eps := []Endpoint{{Addr: "a"}, {Addr: "b"}}
	b := New()
	now := time.Unix(1000, 0)
	b.now = func() time.Time { return now }

	// Two choices among two: the less loaded always wins.
	b.Start("a")
	b.Start("a")
	for range 50 {
		if e, _ := b.Pick(eps, nil); e.Addr != "b" {
			t.Fatalf("picked %s with a busier than b", e.Addr)
		}
	}
	b.Done("a")
	b.Done("a")

	// An ejected endpoint is skipped until its ejection ends.
	b.Failed("b")
	for range 50 {
		if e, _ := b.Pick(eps, nil); e.Addr != "a" {
			t.Fatalf("picked ejected %s", e.Addr)
		}
	}
	now = now.Add(ejectBase + time.Millisecond)
	seen := map[string]bool{}
	for range 100 {
		e, _ := b.Pick(eps, nil)
		seen[e.Addr] = true
	}
	if !seen["b"] {
		t.Fatal("b never picked after its ejection ended")
	}

	// Repeated failures eject for longer, up to the cap.
	for range 10 {
		b.Failed("b")
	}
	if d := b.eject["b"].until.Sub(now); d != ejectMax {
		t.Fatalf("ejection after 11 failures = %s, want the cap %s", d, ejectMax)
	}
	b.Succeeded("b")
	if _, ok := b.eject["b"]; ok {
		t.Fatal("success did not clear the ejection")
	}

	// Everything ejected: one is still tried; everything tried: none.
	b.Failed("a")
	b.Failed("b")
	if _, ok := b.Pick(eps, nil); !ok {
		t.Fatal("no pick with every endpoint ejected")
	}
	if _, ok := b.Pick(eps, map[string]bool{"a": true, "b": true}); ok {
		t.Fatal("picked an endpoint already tried")
	}
}

func TestErroredEjectsAfterConsecutiveErrors(t *testing.T) {
	b := New()
	now := time.Unix(1000, 0)
	b.now = func() time.Time { return now }
	eps := []Endpoint{{Addr: "a"}, {Addr: "b"}}
	for i := 1; i < ConsecutiveErrors; i++ {
		if b.Errored("b") {
			t.Fatalf("ejected after %d errors", i)
		}
	}
	b.Succeeded("b") // a success breaks the run
	for i := 1; i < ConsecutiveErrors; i++ {
		b.Errored("b")
	}
	if !b.Errored("b") {
		t.Fatalf("not ejected after %d errors in a row", ConsecutiveErrors)
	}
	for range 50 {
		if e, _ := b.Pick(eps, nil); e.Addr != "a" {
			t.Fatal("picked the ejected endpoint")
		}
	}
}
