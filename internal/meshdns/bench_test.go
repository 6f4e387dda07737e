package meshdns

import (
	"testing"

	"github.com/miekg/dns"
)

// BenchmarkAuthority is one answer's work past the socket: the checks,
// the lookup, the fit.
func BenchmarkAuthority(b *testing.B) {
	a := NewAuthority(AuthorityConfig{Rate: -1})
	a.Update(testMesh())
	req := new(dns.Msg)
	req.SetQuestion("crystal.demo.local.", dns.TypeSRV)
	w := &recorder{}
	b.ReportAllocs()
	for b.Loop() {
		a.ServeDNS(w, req)
	}
}
