package trellistest

import (
	"net"
	"testing"
	"time"
)

// A connect to a black hole neither succeeds nor fails: it times out.
func TestBlackHoleConnectHangs(t *testing.T) {
	addr := BlackHole(t)
	start := time.Now()
	c, err := net.DialTimeout("tcp", addr, 300*time.Millisecond)
	if err == nil {
		c.Close()
		t.Fatal("connected to the black hole")
	}
	if took := time.Since(start); took < 250*time.Millisecond {
		t.Fatalf("connect failed after %s (%v), want it to hang until its timeout", took, err)
	}
}
