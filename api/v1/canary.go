package v1

import (
	"fmt"
	"time"
)

// CanaryPolicy is a metric-gated canary on a Route rule of exactly two
// targets: Version (the new one) and the stable one. The control plane
// sets Version's weight to each of Steps in turn (the stable target gets
// the rest of 100), moving on when Version's figures have held for an
// Interval, and sets it to 0 at once when they do not.
type CanaryPolicy struct {
	// Version is the target that is rolled out; the rule's other target
	// is the stable one.
	Version string `json:"version" yaml:"version"`
	// Steps are Version's weights in percent, increasing, 1 to 100, the
	// last 100 (at most 20 steps).
	Steps []int `json:"steps" yaml:"steps"`
	// Interval is how long each step's figures must hold (a Go duration,
	// at least 2s; the server also wants at least twice its stats
	// interval, 10s by default).
	Interval string `json:"interval" yaml:"interval"`
	// MinSuccessRate is the lowest success rate of Version (percent of
	// its requests not answered 5xx) over an interval, above 0, at most
	// 100.
	MinSuccessRate float64 `json:"minSuccessRate" yaml:"minSuccessRate"`
	// MaxP99 is the highest 99th-percentile latency of Version's
	// requests over an interval (a Go duration, such as 500ms).
	MaxP99 string `json:"maxP99" yaml:"maxP99"`
	// MinRequests is the fewest requests Version must have served in an
	// interval before its figures count (default 50): until then the
	// step waits, but not forever: a step that still lacks them after two
	// intervals while callers send its rule this many requests an
	// interval, or whose Version has had no healthy instance for two
	// intervals, is rolled back. Callers' proxies that count this many
	// requests to Version judge its success rate too.
	MinRequests int `json:"minRequests,omitempty" yaml:"minRequests,omitempty"`
}

// Canary limits.
const (
	// MinCanaryInterval is the shortest interval apply accepts.
	MinCanaryInterval = 2 * time.Second
	// MaxCanaryInterval is the longest.
	MaxCanaryInterval = 24 * time.Hour
	// MaxCanarySteps bounds a canary's steps.
	MaxCanarySteps = 20
	// DefaultCanaryMinRequests is MinRequests when unset.
	DefaultCanaryMinRequests = 50
)

// IntervalDuration is the parsed Interval; valid after Validate.
func (c *CanaryPolicy) IntervalDuration() time.Duration {
	d, _ := time.ParseDuration(c.Interval)
	return d
}

// MaxP99Duration is the parsed MaxP99; valid after Validate.
func (c *CanaryPolicy) MaxP99Duration() time.Duration {
	d, _ := time.ParseDuration(c.MaxP99)
	return d
}

// EffectiveMinRequests returns MinRequests with the default applied.
func (c *CanaryPolicy) EffectiveMinRequests() int {
	if c.MinRequests == 0 {
		return DefaultCanaryMinRequests
	}
	return c.MinRequests
}

// validate checks the policy of the rule at (whose targets are given).
func (c *CanaryPolicy) validate(at string, targets []RouteTarget) []error {
	var errs []error
	if c.Version == "" {
		errs = append(errs, fieldErr(at+".version", "missing: the version the canary rolls out"))
	}
	if len(targets) != 2 {
		errs = append(errs, fieldErr(at, "needs exactly two targets in its rule, the canary's version and the stable one; the rule has %d", len(targets)))
	} else if c.Version != "" && targets[0].Version != c.Version && targets[1].Version != c.Version {
		errs = append(errs, fieldErr(at+".version", "%q is not one of the rule's targets (%q, %q)", c.Version, targets[0].Version, targets[1].Version))
	}
	switch {
	case len(c.Steps) == 0:
		errs = append(errs, fieldErr(at+".steps", "missing: the canary's weights in percent, such as [10, 50, 100]"))
	case len(c.Steps) > MaxCanarySteps:
		errs = append(errs, fieldErr(at+".steps", "%d steps, at most %d", len(c.Steps), MaxCanarySteps))
	default:
		prev := 0
		for i, s := range c.Steps {
			if s < 1 || s > 100 {
				errs = append(errs, fieldErr(fmt.Sprintf("%s.steps[%d]", at, i), "%d is not a percentage in 1..100", s))
			} else if s <= prev {
				errs = append(errs, fieldErr(fmt.Sprintf("%s.steps[%d]", at, i), "%d does not increase on %d", s, prev))
			}
			prev = max(prev, s)
		}
		if last := c.Steps[len(c.Steps)-1]; last != 100 {
			errs = append(errs, fieldErr(at+".steps", "the last step is %d, want 100 (the canary ends with every request)", last))
		}
	}
	if d, err := time.ParseDuration(c.Interval); c.Interval == "" {
		errs = append(errs, fieldErr(at+".interval", "missing: how long each step's figures must hold, such as 1m"))
	} else if err != nil {
		errs = append(errs, fieldErr(at+".interval", "%q is not a duration such as 30s or 1m", c.Interval))
	} else if d < MinCanaryInterval || d > MaxCanaryInterval {
		errs = append(errs, fieldErr(at+".interval", "%v is not between %v and %v", d, MinCanaryInterval, MaxCanaryInterval))
	}
	// NaN fails both comparisons: refuse it by asking for the range.
	if !(c.MinSuccessRate > 0 && c.MinSuccessRate <= 100) {
		errs = append(errs, fieldErr(at+".minSuccessRate", "%v is not a percentage above 0 and at most 100", c.MinSuccessRate))
	}
	if d, err := time.ParseDuration(c.MaxP99); c.MaxP99 == "" {
		errs = append(errs, fieldErr(at+".maxP99", "missing: the highest p99 latency, such as 500ms"))
	} else if err != nil || d <= 0 {
		errs = append(errs, fieldErr(at+".maxP99", "%q is not a positive duration such as 500ms", c.MaxP99))
	}
	if c.MinRequests < 0 || c.MinRequests > 1_000_000 {
		errs = append(errs, fieldErr(at+".minRequests", "%d is not in 1..1000000 (0 means %d)", c.MinRequests, DefaultCanaryMinRequests))
	}
	return errs
}

// Canary states.
const (
	CanaryProgressing = "progressing"
	CanaryPromoted    = "promoted"
	CanaryRolledBack  = "rolled-back"
)

// CanaryStatus is where a Route's canary stands: the answer of GET
// /v1/routes/{name}/canary, written by the server that drives it.
type CanaryStatus struct {
	// Route is the Route's name (its service); Rule the canary's rule.
	Route string `json:"route"`
	Rule  string `json:"rule"`
	// Version is the canary's version, Stable the other target's.
	Version string `json:"version"`
	Stable  string `json:"stable"`
	// State is progressing, promoted or rolled-back.
	State string `json:"state"`
	// Step is the index in Steps of the current step (0 first); Weight
	// the canary's weight now, in percent.
	Step   int `json:"step"`
	Weight int `json:"weight"`
	// StepStarted is when the current step's weights were written.
	StepStarted time.Time `json:"stepStarted"`
	// Last is the last decision taken on figures.
	Last *CanaryDecision `json:"last,omitempty"`
	// Events are the steps, waits and rollbacks, oldest first (the last
	// 50).
	Events []CanaryEvent `json:"events"`
	// RouteRev is the store revision of the Route this status follows: a
	// new apply of the Route starts the canary again. Zero when the
	// status was written in the same transaction as the Route's weights:
	// it then follows the revision it was itself written at.
	RouteRev int64 `json:"routeRev"`
}

// CanaryDecision is one judgement of the canary's figures.
type CanaryDecision struct {
	// Action is wait, next, promote or rollback.
	Action string `json:"action"`
	// Reason says why, in words.
	Reason string `json:"reason"`
	// The figures judged, over the last interval: the canary version's
	// requests, success rate (percent; absent without requests) and p99
	// latency in milliseconds.
	Requests    uint64    `json:"requests"`
	SuccessRate *float64  `json:"successRate,omitempty"`
	P99Ms       float64   `json:"p99Ms"`
	At          time.Time `json:"at"`
	// CallerRequests and CallerSuccessRate (percent; absent without
	// requests) are the same window's requests to the canary version as
	// the callers' proxies counted them: these include the requests that
	// never reached it (no healthy endpoint, connection failures).
	CallerRequests    uint64   `json:"callerRequests,omitempty"`
	CallerSuccessRate *float64 `json:"callerSuccessRate,omitempty"`
}

// CanaryEvent is one line of a canary's history.
type CanaryEvent struct {
	At      time.Time `json:"at"`
	Message string    `json:"message"`
}
