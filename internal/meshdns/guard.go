package meshdns

import (
	"context"
	"log/slog"

	"github.com/miekg/dns"
)

// UDPSize is the EDNS0 UDP payload size advertised and answered within:
// the DNS Flag Day 2020 value, which fits the common path MTU unfragmented.
const UDPSize = 1232

// TTL of every answer, and of negative answers (the SOA's minimum): a
// changed instance set reaches callers within it.
const TTL = 5

// answerer fills in the answer to one checked query: req has one question
// of class IN and opcode QUERY, and reply is its header and question. It
// returns the result to count, or "" when reply is to be dropped.
type answerer func(ctx context.Context, req, reply *dns.Msg, tcp bool) string

// guard is the front both servers share: the checks every query passes
// before answer sees it, the rate limit, EDNS0 and truncation.
type guard struct {
	answer  answerer
	limits  *clientLimits
	metrics *Metrics
	log     *slog.Logger
}

// ServeDNS implements dns.Handler.
func (g *guard) ServeDNS(w dns.ResponseWriter, req *dns.Msg) {
	tcp := w.LocalAddr() != nil && w.LocalAddr().Network() == "tcp"
	if !g.limits.allow(w.RemoteAddr()) {
		g.metrics.count(resultRateLimited)
		if tcp {
			// A TCP client proved its address: tell it, rather than
			// leave it to time out. Over UDP, silence, so that a forged
			// source address gets nothing.
			r := replyTo(req)
			r.Rcode = dns.RcodeRefused
			w.WriteMsg(r)
		}
		return
	}
	reply, result := g.respond(context.Background(), req, tcp)
	if result == "" {
		return
	}
	g.metrics.count(result)
	fit(reply, req, tcp)
	if err := w.WriteMsg(reply); err != nil {
		g.log.Debug("write DNS answer", "err", err, "client", w.RemoteAddr().String())
	}
}

// respond returns the reply to req and the result to count; "" drops it.
func (g *guard) respond(ctx context.Context, req *dns.Msg, tcp bool) (*dns.Msg, string) {
	if req.Response {
		return nil, "" // never answer an answer: that is how loops start
	}
	reply := replyTo(req)
	switch {
	case req.Opcode != dns.OpcodeQuery:
		reply.Rcode = dns.RcodeNotImplemented
		return reply, resultNotImp
	case len(req.Question) != 1:
		reply.Rcode = dns.RcodeFormatError
		return reply, resultFormErr
	case countOPT(req) > 1:
		reply.Rcode = dns.RcodeFormatError // RFC 6891 6.1.1
		return reply, resultFormErr
	}
	if opt := req.IsEdns0(); opt != nil && opt.Version() != 0 {
		reply.SetEdns0(UDPSize, false)
		reply.Rcode = dns.RcodeBadVers
		return reply, resultBadVers
	}
	switch q := req.Question[0]; {
	case q.Qclass != dns.ClassINET:
		reply.Rcode = dns.RcodeRefused
		return reply, resultRefused
	case q.Qtype == dns.TypeAXFR || q.Qtype == dns.TypeIXFR || q.Qtype == dns.TypeMAILA || q.Qtype == dns.TypeMAILB:
		reply.Rcode = dns.RcodeNotImplemented
		return reply, resultNotImp
	}
	result := g.answer(ctx, req, reply, tcp)
	return reply, result
}

// replyTo is the reply header for req: its ID, opcode, RD and CD, and its
// question when it has exactly one. RA is never set: neither server
// offers recursion (the resolver forwards only what is not the mesh's).
func replyTo(req *dns.Msg) *dns.Msg {
	r := new(dns.Msg)
	r.Id = req.Id
	r.Response = true
	r.Opcode = req.Opcode
	r.RecursionDesired = req.RecursionDesired
	r.CheckingDisabled = req.CheckingDisabled
	if len(req.Question) == 1 {
		r.Question = []dns.Question{req.Question[0]}
	}
	return r
}

func countOPT(m *dns.Msg) int {
	n := 0
	for _, rr := range m.Extra {
		if rr.Header().Rrtype == dns.TypeOPT {
			n++
		}
	}
	return n
}

// fit adds an OPT record when the client sent one and cuts the reply to
// what the client can take: 512 bytes over UDP without EDNS0, the smaller
// of its size and ours with it, 64 KiB over TCP. A reply cut short says
// so (TC), and the client asks again over TCP.
func fit(reply, req *dns.Msg, tcp bool) {
	size := dns.MinMsgSize
	if opt := req.IsEdns0(); opt != nil {
		if reply.IsEdns0() == nil {
			reply.SetEdns0(UDPSize, false)
		} else {
			reply.IsEdns0().SetUDPSize(UDPSize)
		}
		size = min(max(int(opt.UDPSize()), dns.MinMsgSize), UDPSize)
	} else if o := reply.IsEdns0(); o != nil {
		// A forwarded answer may carry the host resolver's OPT; a client
		// that sent none must not get one (RFC 6891 7).
		reply.Extra = dropOPT(reply.Extra)
	}
	if tcp {
		size = dns.MaxMsgSize
	}
	reply.Truncate(size)
}

func dropOPT(rrs []dns.RR) []dns.RR {
	out := rrs[:0]
	for _, rr := range rrs {
		if rr.Header().Rrtype != dns.TypeOPT {
			out = append(out, rr)
		}
	}
	return out
}

// invalid counts a query the library could not unpack (it answers
// FORMERR itself).
func (g *guard) invalid() { g.metrics.count(resultFormErr) }
