package v1

import "time"

// Traffic statistics (GET /v1/stats and /v1/topology): figures computed
// by the control plane from the summaries proxies send, over a window of
// the last minutes.

// Traffic is what was measured for a service, an edge, a version or a
// route over a window.
type Traffic struct {
	// Requests counted in the window.
	Requests uint64 `json:"requests"`
	// RequestsPerSecond is Requests over the time measured (the window,
	// or less for traffic first seen within it).
	RequestsPerSecond float64 `json:"requestsPerSecond"`
	// SuccessRate is the share of requests (0 to 1) not answered with a
	// 5xx status; absent when there were no requests.
	SuccessRate *float64 `json:"successRate,omitempty"`
	// Codes counts requests by status class ("2xx", "5xx", ...); classes
	// without requests are left out.
	Codes map[string]uint64 `json:"codes,omitempty"`
	// P50Ms, P90Ms and P99Ms are latency quantiles in milliseconds,
	// interpolated within the histogram buckets (see the README); zero
	// without requests.
	P50Ms float64 `json:"p50Ms"`
	P90Ms float64 `json:"p90Ms"`
	P99Ms float64 `json:"p99Ms"`
	// BytesPerSecond is TCP bytes both ways over the time measured.
	BytesPerSecond float64 `json:"bytesPerSecond"`
	// Connections, Retries and Denied are counts in the window: TCP
	// connections opened, retried attempts, requests and connections
	// refused by authorization.
	Connections uint64 `json:"connections,omitempty"`
	Retries     uint64 `json:"retries,omitempty"`
	Denied      uint64 `json:"denied,omitempty"`
}

// ServiceStats is a service's traffic as its own proxies received it.
type ServiceStats struct {
	Name string `json:"name"`
	Traffic
	// Versions is the same per version of the service's instances.
	Versions []VersionStats `json:"versions,omitempty"`
}

// VersionStats is the traffic one version of a service received.
type VersionStats struct {
	Version string `json:"version"`
	Traffic
}

// EdgeStats is the traffic from one service to another, as the caller's
// proxies sent it. Source "*" or Destination "*" stand for peers a proxy
// folded to keep its summaries small; an empty Source is a caller outside
// the mesh.
type EdgeStats struct {
	Source      string `json:"source"`
	Destination string `json:"destination"`
	Traffic
	// Routes is the same per route rule and destination version.
	Routes []RouteStats `json:"routes,omitempty"`
}

// RouteStats is an edge's traffic through one route rule to one version.
type RouteStats struct {
	Route   string `json:"route"`
	Version string `json:"version"`
	Traffic
}

// Stats is the answer of GET /v1/stats.
type Stats struct {
	// Window is the window asked for ("1m" to "15m").
	Window string `json:"window"`
	// At is when the figures were computed; they cover the intervals
	// that ended before it.
	At time.Time `json:"at"`
	// IntervalSeconds is the server's aggregation interval.
	IntervalSeconds float64 `json:"intervalSeconds"`
	// Services are sorted by requests per second, busiest first.
	Services []ServiceStats `json:"services"`
	// Edges are sorted by requests per second, busiest first.
	Edges []EdgeStats `json:"edges"`
}

// TopologyNode is a service in the topology graph.
type TopologyNode struct {
	Name string `json:"name"`
	Traffic
}

// Topology is the answer of GET /v1/topology: every service the mesh
// knows or saw traffic for, and the edges with traffic in the window.
type Topology struct {
	Window string         `json:"window"`
	At     time.Time      `json:"at"`
	Nodes  []TopologyNode `json:"nodes"`
	Edges  []EdgeStats    `json:"edges"`
}
