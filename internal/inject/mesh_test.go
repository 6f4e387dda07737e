package inject

import (
	"reflect"
	"testing"

	v1 "github.com/trellis-mesh/trellis/api/v1"
)

func rt(version string, weight int) v1.RouteTarget {
	return v1.RouteTarget{Version: version, Weight: weight}
}

func TestRegistration(t *testing.T) {
	plan, ds := load(t, pipeline+"hello-web.yaml", pipeline+"policy.yaml", "v2", "")
	if ds != nil {
		t.Fatal(ds)
	}
	svc := &v1.Resource{Kind: v1.KindService, Name: "hello-web", Service: &v1.ServiceSpec{Protocol: "http"}}
	route := func(rules ...v1.RouteRule) *v1.Resource {
		return &v1.Resource{Kind: v1.KindRoute, Name: "hello-web", Route: &v1.RouteSpec{Rules: rules}}
	}
	targets := func(ts ...v1.RouteTarget) []v1.RouteTarget { return ts }
	for _, tc := range []struct {
		name        string
		d           Deployed
		wantService bool
		wantRoute   *v1.RouteSpec // nil: no Route applied
	}{
		{"first version", Deployed{}, true,
			&v1.RouteSpec{Rules: []v1.RouteRule{{Name: "default", Targets: targets(rt("v2", 100))}}}},
		{"v1 serving, no route", Deployed{Service: svc, Versions: []string{"v1", "v1", "v2"}}, false,
			&v1.RouteSpec{Rules: []v1.RouteRule{{Name: "default", Targets: targets(rt("v1", 100), rt("v2", 0))}}}},
		{"three versions serving", Deployed{Service: svc, Versions: []string{"c", "a", "b"}}, false,
			&v1.RouteSpec{Rules: []v1.RouteRule{{Name: "default", Targets: targets(rt("a", 34), rt("b", 33), rt("c", 33), rt("v2", 0))}}}},
		{"route kept, v2 added at 0", Deployed{Service: svc, Versions: []string{"v1"},
			Route: route(v1.RouteRule{Name: "api", Match: v1.RouteMatch{PathPrefix: "/api"}, Targets: targets(rt("v1", 90), rt("v0", 10))})}, false,
			&v1.RouteSpec{Rules: []v1.RouteRule{{Name: "api", Match: v1.RouteMatch{PathPrefix: "/api"}, Targets: targets(rt("v1", 90), rt("v0", 10), rt("v2", 0))}}}},
		{"all-versions rule pinned", Deployed{Service: svc, Versions: []string{"v1"}, Route: route(v1.RouteRule{Name: "r"})}, false,
			&v1.RouteSpec{Rules: []v1.RouteRule{{Name: "r", Targets: targets(rt("v1", 100), rt("v2", 0))}}}},
		{"v2 in the route already", Deployed{Service: svc, Versions: []string{"v1", "v2"},
			Route: route(v1.RouteRule{Targets: targets(rt("v1", 50), rt("v2", 50))})}, false, nil},
		{"tcp service: no route", Deployed{Service: &v1.Resource{Kind: v1.KindService, Name: "hello-web", Service: &v1.ServiceSpec{Protocol: "tcp"}}}, false, nil},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var gotService bool
			var gotRoute *v1.RouteSpec
			intentions := 0
			for _, r := range plan.Registration(tc.d) {
				if err := r.Validate(); err != nil {
					t.Errorf("%s %s does not validate: %v", r.Kind, r.Name, err)
				}
				switch r.Kind {
				case v1.KindService:
					gotService = true
				case v1.KindRoute:
					gotRoute = r.Route
				case v1.KindIntention:
					intentions++
				}
			}
			if gotService != tc.wantService || intentions != 1 {
				t.Errorf("service %v (want %v), %d intentions", gotService, tc.wantService, intentions)
			}
			if !reflect.DeepEqual(gotRoute, tc.wantRoute) {
				t.Errorf("route %+v\nwant %+v", gotRoute, tc.wantRoute)
			}
		})
	}
	// The caller's Route is not modified in place.
	r := &v1.Resource{Kind: v1.KindRoute, Name: "hello-web", Route: &v1.RouteSpec{Rules: []v1.RouteRule{{Targets: []v1.RouteTarget{rt("v1", 100)}}}}}
	plan.Registration(Deployed{Service: svc, Route: r})
	if len(r.Route.Rules[0].Targets) != 1 {
		t.Errorf("the deployed route was changed in place: %+v", r.Route)
	}
}
