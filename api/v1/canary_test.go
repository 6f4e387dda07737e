package v1

import (
	"math"
	"os"
	"strings"
	"testing"
)

func canaryRoute(mod func(*RouteRule)) *Resource {
	rule := RouteRule{
		Targets: []RouteTarget{{Version: "v1", Weight: 100}, {Version: "v2", Weight: 0}},
		Canary: &CanaryPolicy{
			Version: "v2", Steps: []int{10, 50, 100}, Interval: "1m",
			MinSuccessRate: 99, MaxP99: "500ms", MinRequests: 50,
		},
	}
	if mod != nil {
		mod(&rule)
	}
	return &Resource{Kind: KindRoute, Name: "hello-backend", Route: &RouteSpec{Rules: []RouteRule{rule}}}
}

func TestCanaryValidates(t *testing.T) {
	if err := canaryRoute(nil).Validate(); err != nil {
		t.Fatalf("a good canary: %v", err)
	}
	noMin := canaryRoute(func(r *RouteRule) { r.Canary.MinRequests = 0 })
	if err := noMin.Validate(); err != nil {
		t.Fatalf("minRequests left out: %v", err)
	}
	if got := noMin.Route.Rules[0].Canary.EffectiveMinRequests(); got != DefaultCanaryMinRequests {
		t.Errorf("minRequests default %d, want %d", got, DefaultCanaryMinRequests)
	}
}

// TestCanaryRefused checks that apply refuses each bad canary, naming the
// field and saying what is wrong.
func TestCanaryRefused(t *testing.T) {
	for _, tc := range []struct {
		name string
		mod  func(*RouteRule)
		want string
	}{
		{"no version", func(r *RouteRule) { r.Canary.Version = "" }, "canary.version: missing"},
		{"version not a target", func(r *RouteRule) { r.Canary.Version = "v3" }, `canary.version: "v3" is not one of the rule's targets`},
		{"one target", func(r *RouteRule) { r.Targets = r.Targets[1:]; r.Targets[0].Weight = 1 }, "canary: needs exactly two targets"},
		{"three targets", func(r *RouteRule) { r.Targets = append(r.Targets, RouteTarget{Version: "v3", Weight: 1}) }, "canary: needs exactly two targets"},
		{"no steps", func(r *RouteRule) { r.Canary.Steps = nil }, "canary.steps: missing"},
		{"step zero", func(r *RouteRule) { r.Canary.Steps = []int{0, 100} }, "canary.steps[0]: 0 is not a percentage in 1..100"},
		{"step over 100", func(r *RouteRule) { r.Canary.Steps = []int{50, 101} }, "canary.steps[1]: 101 is not a percentage"},
		{"steps not increasing", func(r *RouteRule) { r.Canary.Steps = []int{50, 10, 100} }, "canary.steps[1]: 10 does not increase on 50"},
		{"steps repeated", func(r *RouteRule) { r.Canary.Steps = []int{10, 10, 100} }, "canary.steps[1]: 10 does not increase on 10"},
		{"last step not 100", func(r *RouteRule) { r.Canary.Steps = []int{10, 50} }, "the last step is 50, want 100"},
		{"too many steps", func(r *RouteRule) {
			r.Canary.Steps = nil
			for i := 1; i <= 21; i++ {
				r.Canary.Steps = append(r.Canary.Steps, i)
			}
		}, "canary.steps: 21 steps, at most 20"},
		{"no interval", func(r *RouteRule) { r.Canary.Interval = "" }, "canary.interval: missing"},
		{"interval not a duration", func(r *RouteRule) { r.Canary.Interval = "60" }, `canary.interval: "60" is not a duration`},
		{"interval too short", func(r *RouteRule) { r.Canary.Interval = "1s" }, "canary.interval: 1s is not between 2s and 24h0m0s"},
		{"success rate 0", func(r *RouteRule) { r.Canary.MinSuccessRate = 0 }, "canary.minSuccessRate: 0 is not a percentage"},
		{"success rate over 100", func(r *RouteRule) { r.Canary.MinSuccessRate = 100.5 }, "canary.minSuccessRate: 100.5 is not"},
		{"success rate NaN", func(r *RouteRule) { r.Canary.MinSuccessRate = math.NaN() }, "canary.minSuccessRate: NaN is not"},
		{"no p99", func(r *RouteRule) { r.Canary.MaxP99 = "" }, "canary.maxP99: missing"},
		{"p99 negative", func(r *RouteRule) { r.Canary.MaxP99 = "-1s" }, `canary.maxP99: "-1s" is not a positive duration`},
		{"min requests negative", func(r *RouteRule) { r.Canary.MinRequests = -1 }, "canary.minRequests: -1 is not in 1..1000000"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			err := canaryRoute(tc.mod).Validate()
			want := "spec.rules[0]." + tc.want
			if tc.want == "canary.steps: 21 steps, at most 20" || strings.HasPrefix(tc.want, "the last") {
				want = tc.want
			}
			if err == nil || !strings.Contains(err.Error(), want) {
				t.Errorf("got %v, want an error with %q", err, want)
			}
		})
	}
}

func TestCanaryOnePerRoute(t *testing.T) {
	r := canaryRoute(nil)
	second := r.Route.Rules[0]
	second.Name = "second"
	r.Route.Rules[0].Match.PathPrefix = "/a/"
	r.Route.Rules = append(r.Route.Rules, second)
	if err := r.Validate(); err == nil || !strings.Contains(err.Error(), "spec.rules: 2 rules have a canary, at most one may") {
		t.Errorf("got %v, want two canaries refused", err)
	}
}

// TestCanaryYAML reads a canary from YAML as a user writes it; a
// misspelt field is refused with its line.
func TestCanaryYAML(t *testing.T) {
	doc := `kind: Route
name: hello-backend
spec:
  rules:
    - targets:
        - {version: v1, weight: 100}
        - {version: v2, weight: 0}
      canary:
        version: v2
        steps: [10, 50, 100]
        interval: 1m
        minSuccessRate: 99
        maxP99: 500ms
        minRequests: 50
`
	res, err := DecodeYAML("route.yaml", strings.NewReader(doc))
	if err != nil {
		t.Fatal(err)
	}
	c := res[0].Route.Rules[0].Canary
	if c == nil || c.Version != "v2" || len(c.Steps) != 3 || c.IntervalDuration().Seconds() != 60 || c.MaxP99Duration().Milliseconds() != 500 {
		t.Fatalf("decoded %+v", c)
	}
	_, err = DecodeYAML("route.yaml", strings.NewReader(strings.Replace(doc, "maxP99", "maxp99", 1)))
	if err == nil || !strings.Contains(err.Error(), "route.yaml:13") || !strings.Contains(err.Error(), "maxp99") {
		t.Errorf("misspelt field: got %v, want it refused at line 13", err)
	}
}

// TestCanaryExample checks the example the README shows.
func TestCanaryExample(t *testing.T) {
	f, err := os.Open("../../examples/hello/route-canary.yaml")
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	res, err := DecodeYAML("route-canary.yaml", f)
	if err != nil {
		t.Fatal(err)
	}
	if len(res) != 1 || res[0].Route.Rules[0].Canary == nil {
		t.Fatalf("decoded %+v, want one Route with a canary", res)
	}
}
