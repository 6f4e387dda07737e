package architecture

import (
	"encoding/json"
	"io"
	"os/exec"
	"slices"
	"strings"
	"testing"
)

const module = "github.com/trellis-mesh/trellis"

type pkg struct {
	ImportPath string
	Doc        string
	Imports    []string
	Deps       []string
	Standard   bool
}

func list(t *testing.T) map[string]pkg {
	t.Helper()
	cmd := exec.Command("go", "list", "-json", module+"/...")
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	pkgs := map[string]pkg{}
	dec := json.NewDecoder(out)
	for {
		var p pkg
		if err := dec.Decode(&p); err == io.EOF {
			break
		} else if err != nil {
			t.Fatal(err)
		}
		pkgs[p.ImportPath] = p
	}
	if err := cmd.Wait(); err != nil {
		t.Fatal(err)
	}
	return pkgs
}

func TestLayering(t *testing.T) {
	pkgs := list(t)
	rules := []struct {
		pkg       string
		forbidden []string // import path prefixes
		onlyStd   []string // when set, non-std deps must have one of these prefixes
		// onlyImports, when set, is onlyStd for the package's own imports
		// only: for a package that may use a library (prometheus) whose
		// dependencies are not its business.
		onlyImports []string
	}{
		// The data plane never reaches the store, the CA or the control plane.
		{pkg: "internal/sidecar", forbidden: []string{module + "/internal/store", module + "/internal/ca", module + "/internal/control", "go.etcd.io/"}},
		{pkg: "internal/proxy/l4", forbidden: []string{module + "/internal/store", module + "/internal/ca", module + "/internal/control", module + "/internal/sidecar"}},
		{pkg: "internal/proxy/l7", forbidden: []string{module + "/internal/store", module + "/internal/ca", module + "/internal/control", module + "/internal/sidecar", module + "/internal/proxy/l4"}},
		// The HTTP/1.1 server and app client speak the protocol, not the
		// mesh: no policy (l7), identities or authorization, nothing of
		// the control plane; l7 imports h1, never the other way round.
		{pkg: "internal/proxy/h1",
			forbidden: []string{module + "/internal/proxy/l7", module + "/internal/proxy/l4", module + "/internal/identity",
				module + "/internal/authz", module + "/internal/httpmatch", module + "/internal/topology", module + "/api/",
				module + "/internal/store", module + "/internal/ca", module + "/internal/control", module + "/internal/sidecar"},
			onlyImports: []string{"golang.org/x/net/", "github.com/prometheus/client_golang/prometheus",
				module + "/internal/proxy/netconn", module + "/internal/proxy/handshake", module + "/internal/proxy/tunnel", module + "/internal/ratelog"}},
		{pkg: "internal/proxy/tunnel", onlyStd: []string{"golang.org/x/net/", "golang.org/x/text/", module + "/internal/ratelog"}},
		// Tracing is the data plane's: it knows spans, not the proxies.
		{pkg: "internal/tracing", forbidden: []string{module + "/internal/store", module + "/internal/ca", module + "/internal/control", module + "/internal/sidecar", module + "/internal/proxy/", "go.etcd.io/"}},
		// Mesh DNS is a mechanism of both planes: fed names, it holds no
		// store, CA or role.
		{pkg: "internal/meshdns", forbidden: []string{module + "/internal/store", module + "/internal/ca", module + "/internal/control", module + "/internal/sidecar", "go.etcd.io/"}},
		{pkg: "internal/certs", forbidden: []string{module + "/internal/ca", module + "/internal/store"}},
		// Pure packages: no I/O machinery of the mesh.
		{pkg: "internal/topology", forbidden: []string{"net/http", module + "/internal/store", module + "/internal/control"}},
		{pkg: "internal/authz", forbidden: []string{"net/http", module + "/internal/store"}},
		// The mesh's diagnosis reads what the API shows; it fetches nothing.
		{pkg: "internal/check", forbidden: []string{"net/http", module + "/client", module + "/internal/store", module + "/internal/control"}},
		// Leaves.
		{pkg: "internal/identity", onlyStd: []string{}},
		{pkg: "internal/yamlfields", onlyStd: []string{"gopkg.in/yaml.v3"}},
		{pkg: "api/v1", onlyStd: []string{module + "/internal/identity", module + "/internal/yamlfields", "gopkg.in/yaml.v3"}},
	}
	for _, r := range rules {
		t.Run(r.pkg, func(t *testing.T) {
			p, ok := pkgs[module+"/"+r.pkg]
			if !ok {
				t.Fatalf("package %s not found", r.pkg)
			}
			for _, d := range p.Imports {
				if r.onlyImports == nil || !strings.Contains(strings.SplitN(d, "/", 2)[0], ".") {
					continue // standard library
				}
				if !slices.ContainsFunc(r.onlyImports, func(a string) bool {
					return d == a || strings.HasPrefix(d, a+"/") || strings.HasSuffix(a, "/") && strings.HasPrefix(d, a)
				}) {
					t.Errorf("%s imports %s, not in its allowed list", r.pkg, d)
				}
			}
			for _, d := range p.Deps {
				for _, f := range r.forbidden {
					if strings.HasPrefix(d, f) {
						t.Errorf("%s imports %s (forbidden: %s)", r.pkg, d, f)
					}
				}
				if r.onlyStd == nil || !strings.Contains(strings.SplitN(d, "/", 2)[0], ".") {
					continue // standard library
				}
				allowed := false
				for _, a := range r.onlyStd {
					if strings.HasPrefix(d, a) {
						allowed = true
					}
				}
				if !allowed {
					t.Errorf("%s is a leaf but imports %s", r.pkg, d)
				}
			}
		})
	}
}

func TestPackagesAreDocumented(t *testing.T) {
	for path, p := range list(t) {
		if strings.TrimSpace(p.Doc) == "" {
			t.Errorf("package %s has no package doc comment", strings.TrimPrefix(path, module+"/"))
		}
	}
}

// The proxy-only build is what sidecar and gateway images ship: it must
// not link the control plane, the injection tooling or text templates
// (grpc's x/net/trace pulls html/template, whose reflection keeps every
// exported method of the binary alive: 6 MB of text), all of which every
// proxy would otherwise map and page in.
func TestProxyOnlyBuild(t *testing.T) {
	out, err := exec.Command("go", "list", "-tags", ProxyOnlyTags, "-deps", module+"/cmd/trellis").Output()
	if err != nil {
		t.Fatal(err)
	}
	deps := strings.Fields(string(out))
	if len(deps) < 50 {
		t.Fatalf("go list found only %d packages", len(deps))
	}
	for _, d := range deps {
		for _, f := range []string{module + "/internal/control", module + "/internal/store", module + "/internal/ca", module + "/internal/up",
			module + "/internal/inject", "go.etcd.io/etcd/server", "k8s.io", "github.com/aws", "github.com/compose-spec",
			"text/template", "html/template", "golang.org/x/net/trace", "net/http/pprof"} {
			if d == f || strings.HasPrefix(d, f+"/") {
				t.Errorf("the proxyonly build links %s", d)
			}
		}
	}
}

// ProxyOnlyTags are the build tags of the proxy image (README, bench/).
const ProxyOnlyTags = "proxyonly,grpcnotrace"
