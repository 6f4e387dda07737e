package l4

import "github.com/prometheus/client_golang/prometheus"

// Metrics are the L4 data plane's Prometheus metrics. Names are a public
// API: keep them stable.
type Metrics struct {
	Connections *prometheus.CounterVec // direction, service, result
	Active      *prometheus.GaugeVec   // direction
	Bytes       *prometheus.CounterVec // direction, service, flow (sent|received)
	Handshakes  *prometheus.CounterVec // side, result
	Rejections  *prometheus.CounterVec // side, reason
	// Denied counts inbound connections refused by authorization, by
	// peer service and reason (an authz decision code, such as
	// no_intention).
	Denied *prometheus.CounterVec
	// Retired counts mTLS connections retired, by direction, peer
	// service and reason (trust|expiry).
	Retired *prometheus.CounterVec

	// flows are the open connections whose bytes Bytes gets as they move
	// (flow.go).
	flows flows
}

// NewMetrics creates the metrics and registers them with reg (if not nil).
func NewMetrics(reg prometheus.Registerer) *Metrics {
	m := &Metrics{
		Connections: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "trellis_tcp_connections_total",
			Help: "TCP connections proxied, by direction (inbound|outbound|passthrough|network), peer service (for network, the service the SNI names) and result (ok|denied|error).",
		}, []string{"direction", "service", "result"}),
		Active: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "trellis_tcp_connections_active",
			Help: "TCP connections open now, by direction.",
		}, []string{"direction"}),
		Bytes: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "trellis_tcp_bytes_total",
			Help: "Bytes proxied, by direction, peer service and flow (sent to or received from the peer side).",
		}, []string{"direction", "service", "flow"}),
		Handshakes: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "trellis_tls_handshakes_total",
			Help: "mTLS handshakes between sidecars, by side (client|server) and result (ok|resumed|error; guarded connections are never resumed).",
		}, []string{"side", "result"}),
		Rejections: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "trellis_tls_peer_rejections_total",
			Help: "mTLS peers refused during the handshake because their certificate is not an acceptable X509-SVID or not the expected identity, by side (client|server) and reason (no_certificate|not_svid|trust_domain|signing_certificate|untrusted|unauthorized).",
		}, []string{"side", "reason"}),
		Denied: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "trellis_tcp_connections_denied_total",
			Help: "Inbound TCP connections refused by authorization, by peer service and reason (no_intention, intention, permissions_http, ...).",
		}, []string{"service", "reason"}),
		Retired: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "trellis_tls_connections_retired_total",
			Help: "mTLS connections between proxies retired (no new stream, then closed), by direction (inbound|outbound), peer service and reason (trust: the trust bundle no longer verifies the peer; expiry: a leaf of the handshake is about to expire).",
		}, []string{"direction", "service", "reason"}),
	}
	if reg != nil {
		reg.MustRegister(m.Connections, m.Active, bytesCollector{m}, m.Handshakes, m.Rejections, m.Denied, m.Retired)
	}
	return m
}
