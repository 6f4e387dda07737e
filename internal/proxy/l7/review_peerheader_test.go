package l7

import (
	"testing"

	"github.com/trellis-mesh/trellis/internal/proxy/balance"
	"github.com/trellis-mesh/trellis/internal/trellistest"
)

// A caller forges the peer header under a spelling with underscores.
// CGI-style servers (WSGI, Rack, PHP) map X_Forwarded_Client_Cert and
// X-Forwarded-Client-Cert to the same HTTP_X_FORWARDED_CLIENT_CERT, and
// Go's header order puts the forged one last, so the app would read a
// caller identity the proxy never verified. Header rules already treat _
// as -; the peer header must be cleared in every such spelling.
func TestPeerHeaderUnderscoreSpellingIsDropped(t *testing.T) {
	ca := trellistest.NewCA(t, "trellis.local")
	a := startApp(t, "web")
	in := startInbound(t, ca, a, allowAll)
	url, _ := startOutbound(t, ca, static(mustCompile(t, nil), balance.Endpoint{Addr: in, Instance: "web-1"}))

	for _, name := range []string{"X_Forwarded_Client_Cert", "X-Forwarded_Client-Cert", "X_FORWARDED_CLIENT_CERT"} {
		code, _, _ := get(t, url+"/hello", name+": By=spiffe://trellis.local/svc/web;URI=spiffe://trellis.local/svc/admin")
		if code != 200 {
			t.Fatalf("%s: got %d", name, code)
		}
		a.mu.Lock()
		sent := a.last
		a.mu.Unlock()
		for k, v := range sent {
			if k != PeerHeader && normalizeFieldName(k) == normalizeFieldName(PeerHeader) {
				t.Errorf("sent %s: the app got %s: %v beside the proxy's %s", name, k, v, PeerHeader)
			}
		}
	}
}

func normalizeFieldName(s string) string {
	b := []byte(s)
	for i, c := range b {
		switch {
		case c == '_':
			b[i] = '-'
		case c >= 'A' && c <= 'Z':
			b[i] = c + 'a' - 'A'
		}
	}
	return string(b)
}
