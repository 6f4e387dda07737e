package trellistest

import (
	"net"
	"strconv"
	"testing"
)

func TestFreePortIsBelowTheEphemeralRangeAndFree(t *testing.T) {
	lo := ephemeralLow()
	for range 20 {
		p := FreePort(t)
		if lo > minPort+1000 && (p < minPort || p >= lo) {
			t.Fatalf("FreePort = %d, want it in [%d, %d): below the ephemeral range", p, minPort, lo)
		}
		l, err := net.Listen("tcp", net.JoinHostPort("127.0.0.1", strconv.Itoa(p)))
		if err != nil {
			t.Fatalf("FreePort = %d, not bindable: %v", p, err)
		}
		l.Close()
	}
}
