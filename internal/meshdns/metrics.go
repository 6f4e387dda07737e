package meshdns

import "github.com/prometheus/client_golang/prometheus"

// Results of a query, the label of trellis_dns_queries_total.
const (
	resultAnswer       = "answer"        // records for a mesh name
	resultNoData       = "nodata"        // a mesh name with no record of the type asked
	resultNXDomain     = "nxdomain"      // a name under a mesh domain that is none of ours
	resultForwarded    = "forwarded"     // answered by the host's resolver
	resultForwardError = "forward_error" // the host's resolver failed or was too slow (SERVFAIL)
	resultBusy         = "busy"          // too many forwards in flight (SERVFAIL)
	resultRefused      = "refused"       // outside the mesh's domains, or a class other than IN
	resultFormErr      = "formerr"       // malformed
	resultNotImp       = "notimp"        // not a QUERY, or a zone transfer
	resultBadVers      = "badvers"       // an EDNS version other than 0
	resultRateLimited  = "ratelimited"   // over the client's rate
)

// Metrics counts queries by result.
type Metrics struct {
	queries *prometheus.CounterVec
}

// NewMetrics registers trellis_dns_queries_total with reg.
func NewMetrics(reg prometheus.Registerer) *Metrics {
	m := &Metrics{queries: prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "trellis_dns_queries_total",
		Help: "DNS queries by result: answer, nodata, nxdomain, forwarded, forward_error, busy, refused, formerr, notimp, badvers, ratelimited.",
	}, []string{"result"})}
	reg.MustRegister(m.queries)
	return m
}

func (m *Metrics) count(result string) {
	if m != nil {
		m.queries.WithLabelValues(result).Inc()
	}
}
