package ratelog

import (
	"testing"
	"time"
)

func TestLimit(t *testing.T) {
	var l Limit
	t0 := time.Unix(1000, 0)
	written := 0
	for i := range 100 {
		if _, ok := l.Take(t0.Add(time.Duration(i)*time.Millisecond), 10); ok {
			written++
		}
	}
	if written != 10 {
		t.Errorf("%d lines in one second, want 10", written)
	}
	n, ok := l.Take(t0.Add(time.Second), 10)
	if !ok || n != 90 {
		t.Errorf("next second: ok=%v suppressed=%d, want true and 90", ok, n)
	}
	if n, ok := l.Take(t0.Add(time.Second+time.Millisecond), 10); !ok || n != 0 {
		t.Errorf("after the count was told: ok=%v suppressed=%d, want true and 0", ok, n)
	}
}
