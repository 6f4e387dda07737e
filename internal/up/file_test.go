package up

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// load writes files into a new directory and loads its trellis.yaml.
func load(t *testing.T, files map[string]string) (string, error) {
	t.Helper()
	dir := t.TempDir()
	for name, text := range files {
		if err := os.WriteFile(filepath.Join(dir, name), []byte(text), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	_, err := Load(dir)
	return dir, err
}

// trellis.yaml's mistakes are reported as apply reports a resource's:
// file:line: field: what, with "did you mean" for a misspelt key, no Go
// type names, and every problem at once (issue 23 item 3). A name in an
// intention or upstream that the file does not define is a mistake too.
func TestLoadReportsMistakes(t *testing.T) {
	for _, tc := range []struct {
		name, yaml string
		extra      map[string]string
		want       []string // each in the error, after "DIR/trellis.yaml"
	}{
		{
			name: "misspelt keys",
			yaml: "services:\n  - name: a\n    command: [x]\n    port: 9000\n    upstreems: []\n    helth: {http: /}\nintention: []\n",
			want: []string{
				`trellis.yaml:5: services[0].upstreems: unknown field (did you mean "upstreams"?)`,
				`trellis.yaml:6: services[0].helth: unknown field (did you mean "health"?)`,
				`trellis.yaml:7: intention: unknown field (did you mean "intentions"?)`,
			},
		},
		{
			name: "nested key",
			yaml: "mesh:\n  defaultPolicy: deny\n  dns: {domanis: [x]}\nservices:\n  - {name: a, command: [x], port: 9000, edge: {port: 9443, dnsName: [a]}}\n",
			want: []string{
				`trellis.yaml:3: mesh.dns.domanis: unknown field (did you mean "domains"?)`,
				`trellis.yaml:5: services[0].edge.dnsName: unknown field (did you mean "dnsNames"?)`,
			},
		},
		{
			name: "wrong type",
			yaml: "services:\n  - name: a\n    command: [x]\n    port: ninety\n",
			want: []string{`trellis.yaml:4: services[0].port: "ninety" is not a number`},
		},
		{
			name: "list for a mapping",
			yaml: "services:\n  name: a\n",
			want: []string{`trellis.yaml:2: services: want a list`},
		},
		{
			name: "unknown services",
			yaml: "services:\n  - name: web\n    command: [x]\n    port: 9000\n    upstreams:\n      - {service: backend, port: 9191}\n" +
				"  - {name: backnd, command: [x], port: 9001}\n" +
				"client:\n  service: client\n  upstreams:\n    - {service: wbe, port: 8080}\n" +
				"intentions:\n  - {source: client, destination: web, action: allow}\n  - {source: web, destination: backend, action: allow}\n" +
				"  - {source: '*', destination: wb, action: deny}\n  - {source: gw, destination: web, action: allow}\n" +
				"resources: [gw.yaml]\n",
			extra: map[string]string{"gw.yaml": "kind: Gateway\nname: gw\nspec:\n  listeners:\n    - {port: 8000, protocol: http, routes: [{pathPrefix: /, service: web}]}\n"},
			want: []string{
				`trellis.yaml:6: services[0].upstreams[0].service: "backend" is not a service of this file (did you mean "backnd"?)`,
				`trellis.yaml:11: client.upstreams[0].service: "wbe" is not a service of this file (did you mean "web"?)`,
				`trellis.yaml:14: intentions[1].destination: "backend" is not a service of this file (did you mean "backnd"?)`,
				`trellis.yaml:15: intentions[2].destination: "wb" is not a service of this file (did you mean "web"?)`,
			},
		},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := load(t, map[string]string{FileName: tc.yaml})
			if tc.extra != nil {
				files := map[string]string{FileName: tc.yaml}
				for k, v := range tc.extra {
					files[k] = v
				}
				_, err = load(t, files)
			}
			if err == nil {
				t.Fatalf("loaded; want %q", tc.want)
			}
			got := err.Error()
			for _, w := range tc.want {
				if !strings.Contains(got, w) {
					t.Errorf("got %q\nwant it to contain %q", got, w)
				}
			}
			for _, goName := range []string{"up.", "v1.", "[]", "unmarshal"} {
				if strings.Contains(got, goName) {
					t.Errorf("got %q: names Go types (%q)", got, goName)
				}
			}
			if n := strings.Count(got, "\n") + 1; n != len(tc.want) {
				t.Errorf("got %d problems, want %d:\n%s", n, len(tc.want), got)
			}
		})
	}
}

// Every example's trellis.yaml loads: the checks above refuse none of
// what the repository ships.
func TestLoadExamples(t *testing.T) {
	files, _ := filepath.Glob("../../examples/*/" + FileName)
	if len(files) < 5 {
		t.Fatalf("found %d examples", len(files))
	}
	for _, f := range files {
		if _, err := Load(filepath.Dir(f)); err != nil {
			t.Errorf("%s: %v", f, err)
		}
	}
}

// FuzzLoad: whatever trellis.yaml holds, Load returns a File or an error
// that names the file, and never panics.
func FuzzLoad(f *testing.F) {
	files, _ := filepath.Glob("../../examples/*/" + FileName)
	for _, name := range files {
		b, err := os.ReadFile(name)
		if err != nil {
			f.Fatal(err)
		}
		f.Add(b)
	}
	f.Add([]byte("services:\n  name: a\n"))
	f.Add([]byte("services:\n  - {name: a, command: [x], port: x, helth: {}}\nintentions: [{source: a, destination: b}]\n"))
	f.Add([]byte("a: &x [1]\nb: *x\n"))
	f.Fuzz(func(t *testing.T, b []byte) {
		dir := t.TempDir()
		if err := os.WriteFile(filepath.Join(dir, FileName), b, 0o600); err != nil {
			t.Fatal(err)
		}
		if _, err := Load(dir); err != nil && !strings.Contains(err.Error(), FileName) {
			t.Errorf("error %q does not name the file", err)
		}
	})
}
