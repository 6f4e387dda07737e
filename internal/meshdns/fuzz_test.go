package meshdns

import (
	"net"
	"testing"

	"github.com/miekg/dns"
)

// recorder is a dns.ResponseWriter that keeps what was written.
type recorder struct {
	tcp bool
	out *dns.Msg
}

func (r *recorder) LocalAddr() net.Addr {
	if r.tcp {
		return &net.TCPAddr{IP: net.IPv4(127, 0, 0, 1), Port: 53}
	}
	return &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1), Port: 53}
}
func (r *recorder) RemoteAddr() net.Addr {
	return &net.UDPAddr{IP: net.IPv4(127, 0, 0, 9), Port: 5353}
}
func (r *recorder) WriteMsg(m *dns.Msg) error { r.out = m; return nil }
func (r *recorder) Write([]byte) (int, error) { return 0, nil }
func (r *recorder) Close() error              { return nil }
func (r *recorder) TsigStatus() error         { return nil }
func (r *recorder) TsigTimersOnly(bool)       {}
func (r *recorder) Hijack()                   {}

// FuzzHandler feeds packed queries to both servers' handlers: none may
// panic, and every reply must pack, unpack and fit the client's size.
func FuzzHandler(f *testing.F) {
	for _, seed := range []func(m *dns.Msg){
		func(m *dns.Msg) { m.SetQuestion("crystal.demo.local.", dns.TypeA) },
		func(m *dns.Msg) { m.SetQuestion("CRYSTAL.demo.local.", dns.TypeSRV); m.SetEdns0(4096, true) },
		func(m *dns.Msg) { m.SetQuestion("nothing.demo.local.", dns.TypeAAAA) },
		func(m *dns.Msg) { m.SetQuestion("ip-10-0-0-1.crystal.demo.local.", dns.TypeANY) },
		func(m *dns.Msg) { m.SetQuestion("demo.local.", dns.TypeSOA); m.Opcode = dns.OpcodeNotify },
		func(m *dns.Msg) {
			m.SetQuestion("example.test.", dns.TypeA)
			m.Question = append(m.Question, m.Question[0])
		},
	} {
		m := new(dns.Msg)
		seed(m)
		b, err := m.Pack()
		if err != nil {
			f.Fatal(err)
		}
		f.Add(b, false)
	}
	auth := NewAuthority(AuthorityConfig{Rate: -1})
	auth.Update(testMesh())
	res, err := NewResolver(ResolverConfig{Upstream: "127.0.0.1:9", Rate: -1})
	if err != nil {
		f.Fatal(err)
	}
	res.upstream = "" // no forwards: the fuzzer stays off the network
	res.Update(testSnapshot())
	f.Fuzz(func(t *testing.T, b []byte, tcp bool) {
		req := new(dns.Msg)
		if req.Unpack(b) != nil {
			return // miekg/dns answers FORMERR before any handler
		}
		for _, h := range []dns.Handler{auth, res} {
			w := &recorder{tcp: tcp}
			h.ServeDNS(w, req.Copy())
			if w.out == nil {
				continue
			}
			packed, err := w.out.Pack()
			if err != nil {
				t.Fatalf("reply does not pack: %v\n%v", err, w.out)
			}
			if !tcp && len(packed) > UDPSize {
				t.Fatalf("UDP reply of %d bytes", len(packed))
			}
			if err := new(dns.Msg).Unpack(packed); err != nil {
				t.Fatalf("reply does not unpack: %v", err)
			}
		}
	})
}
