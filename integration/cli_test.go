//go:build linux

package integration

import (
	"bufio"
	"bytes"
	"crypto/tls"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/trellis-mesh/trellis/internal/trellistest"
)

func TestBadInput(t *testing.T) {
	s := startServer(t)
	dir := t.TempDir()
	write := func(name, content string) string {
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, []byte(content), 0o600); err != nil {
			t.Fatal(err)
		}
		return p
	}
	good := "kind: Service\nname: okay\n"
	cases := []struct {
		name     string
		args     []string
		env      []string
		wantCode int
		want     []string
	}{
		{"unknown field", []string{"apply", "-f", write("a.yaml", good+"---\nkind: Service\nname: b\nspec:\n  protocl: http\n")}, nil, 1,
			[]string{"a.yaml:7: spec.protocl: unknown field (did you mean \"protocol\"?)", "nothing applied"}},
		{"malformed yaml", []string{"apply", "-f", write("b.yaml", "kind: Service\nname: [x\n")}, nil, 1, []string{"b.yaml:"}},
		{"invalid service name", []string{"apply", "-f", write("c.yaml", "kind: Service\nname: Not_Valid\n")}, nil, 1, []string{"c.yaml:2: name:"}},
		{"intention bad action", []string{"apply", "-f", write("d.yaml", "kind: Intention\nname: a.b\nspec:\n  source: a\n  destination: b\n  action: perhaps\n")}, nil, 1, []string{"d.yaml:6: spec.action"}},
		{"missing file", []string{"apply", "-f", filepath.Join(dir, "nope.yaml")}, nil, 1, []string{"no such file"}},
		{"no -f", []string{"apply"}, nil, 2, []string{"-f FILE is required"}},
		{"bad flag", []string{"proxy", "--bogus"}, nil, 2, []string{"flag provided but not defined: -bogus"}},
		{"bad service flag", []string{"proxy", "--service", "Bad", "--app-port", "80", "--server", s.addr, "--token-file", "x"}, nil, 2, []string{"service name \"Bad\""}},
		{"bad upstream", []string{"proxy", "--service", "a", "--app-port", "80", "--upstream", "nocolon"}, nil, 2, []string{"want SERVICE:PORT"}},
		{"token for bad service", []string{"token", "create", "--service", "UPPER"}, nil, 2, []string{"--service"}},
		{"wrong token", []string{"get", "services"}, []string{"TRELLIS_TOKEN=trellis_wrongwrongwrongwrongwrong"}, 1, []string{"missing or invalid token (HTTP 401)"}},
		{"no token", []string{"get", "services"}, []string{"TRELLIS_TOKEN="}, 1, []string{"no token"}},
		{"unknown command", []string{"frobnicate"}, nil, 2, []string{"unknown command"}},
		{"proxy with a wrong token", []string{"proxy", "--admin-port", "0", "--service", "web", "--app-port", "1", "--server", s.addr, "--ca-file", s.caFile,
			"--token-file", write("bad.token", "trellis_notarealtokennotarealtoken00")}, nil, 1, []string{"control plane refused the token", "--token-file"}},
		{"proxy with a token for another service", []string{"proxy", "--admin-port", "0", "--service", "web", "--app-port", "1", "--server", s.addr, "--ca-file", s.caFile,
			"--token-file", write("other.token", strings.TrimSpace(s.mustCLI(t, "token", "create", "--service", "db")))}, nil, 1, []string{"control plane refused the token"}},
		{"unknown kind", []string{"get", "gizmos"}, nil, 2, []string{"unknown kind", "route", "gateway"}},
		{"help of ca", []string{"ca", "-h"}, nil, 0, []string{"Usage: trellis ca roots"}},
		{"help of ca add-root", []string{"ca", "add-root", "-h"}, nil, 0, []string{"Usage: trellis ca add-root FILE"}},
		{"help of token delete", []string{"token", "delete", "-h"}, nil, 0, []string{"Usage: trellis token delete ID"}},
		{"help of inject", []string{"inject", "--help"}, nil, 0, []string{"Usage: trellis inject"}},
		{"edge without a certificate", []string{"proxy", "--service", "a", "--app-port", "80", "--server", s.addr, "--token-file", "x", "--edge-port", "8443"},
			[]string{"TRELLIS_EDGE_DNS_NAME="}, 2, []string{"self-signed needs a DNS name"}},
		{"edge bad mode", []string{"proxy", "--service", "a", "--app-port", "80", "--server", s.addr, "--token-file", "x", "--edge-port", "8443", "--edge-mode", "sideways"},
			nil, 2, []string{"edge mode \"sideways\""}},
		{"edge flag without port", []string{"proxy", "--service", "a", "--app-port", "80", "--server", s.addr, "--token-file", "x", "--edge-cert", "c.pem"},
			nil, 2, []string{"--edge-cert needs --edge-port"}},
		{"edge certificate file missing", []string{"proxy", "--admin-port", "0", "--service", "a", "--app-port", "80", "--server", s.addr, "--ca-file", s.caFile,
			"--token-file", write("edge.token", strings.TrimSpace(s.mustCLI(t, "token", "create", "--service", "a"))),
			"--edge-port", "0", "--edge-cert", filepath.Join(dir, "none.pem"), "--edge-key", filepath.Join(dir, "none-key.pem")},
			nil, 1, []string{"edge certificate: certificate file:", "none.pem"}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			out, code := runCLI(t, append(s.env(), tc.env...), tc.args...)
			if code != tc.wantCode {
				t.Errorf("exit code %d, want %d; output: %s", code, tc.wantCode, out)
			}
			for _, w := range tc.want {
				if !strings.Contains(out, w) {
					t.Errorf("output %q does not contain %q", out, w)
				}
			}
			if tc.wantCode != 0 && strings.Count(strings.TrimSpace(out), "\n") > 3 {
				t.Errorf("error output is %d lines, want a short message: %s", strings.Count(out, "\n"), out)
			}
		})
	}
	// Two intentions may not cover the same pair: the second is refused and
	// nothing of its file is applied.
	s.mustCLI(t, "intention", "allow", "a", "b")
	dup := write("dup.yaml", "kind: Service\nname: extra\n---\nkind: Intention\nname: other\nspec: {source: a, destination: b, action: deny}\n")
	if out, code := s.cli(t, "apply", "-f", dup); code != 1 || !strings.Contains(out, `intention "a.b" already covers a -> b`) {
		t.Errorf("duplicate pair: exit %d, %q", code, out)
	}
	if out, _ := s.cli(t, "get", "service", "extra"); !strings.Contains(out, "not found") {
		t.Errorf("service from a refused apply exists: %s", out)
	}

	// Nothing was half-applied: the good document of the failed file is absent.
	if out, _ := s.cli(t, "get", "service", "okay"); !strings.Contains(out, "not found") {
		t.Errorf("service from a rejected file exists: %s", out)
	}

	// The API answers every unauthenticated or forbidden call with JSON.
	hc := &http.Client{Transport: &http.Transport{TLSClientConfig: s.api.TLSConfig()}}
	svcTok := strings.TrimSpace(s.mustCLI(t, "token", "create", "--service", "web"))
	for _, tc := range []struct {
		token string
		code  int
	}{{"", 401}, {"garbage", 401}, {svcTok, 403}} {
		req, _ := http.NewRequest("GET", "https://"+s.addr+"/v1/services", nil)
		if tc.token != "" {
			req.Header.Set("Authorization", "Bearer "+tc.token)
		}
		resp, err := hc.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		var body struct{ Error string }
		err = json.NewDecoder(resp.Body).Decode(&body)
		resp.Body.Close()
		if resp.StatusCode != tc.code || err != nil || body.Error == "" {
			t.Errorf("token %q: status %d body error %q (%v), want %d with a JSON error", tc.token, resp.StatusCode, body.Error, err, tc.code)
		}
	}
}

// TestUpGreeter runs the bundled example exactly as the README does and
// drives it with the CLI from "another terminal": no flags, no environment.
// upRun is a running `trellis up` on an example.
type upRun struct {
	env     []string // for CLI commands in "another terminal"
	summary string
	// out is all up printed so far.
	outMu  sync.Mutex
	out    strings.Builder
	home   string
	cmd    *exec.Cmd
	exited chan error
	ports  []int
}

// startUp runs `trellis up DIR` and waits until it says it is up. ports are
// the example's fixed ports: the test skips when one is taken.
func startUp(t *testing.T, dir string, ports []int, flags ...string) *upRun {
	t.Helper()
	return startUpIn(t, t.TempDir(), dir, ports, flags...)
}

// startUpIn is startUp with home as HOME: runs that share it share the
// lock and the examples' data dirs, as one user's terminals do.
func startUpIn(t *testing.T, home, dir string, ports []int, flags ...string) *upRun {
	t.Helper()
	for _, port := range ports {
		if c, err := net.DialTimeout("tcp", fmt.Sprintf("127.0.0.1:%d", port), 200*time.Millisecond); err == nil {
			c.Close()
			t.Skipf("port %d is in use; trellis up needs the example's fixed ports", port)
		}
	}
	// A fresh HOME stands for "another terminal with no setup"; the Go
	// caches stay where they are, so `go run` of the examples is not a
	// cold build.
	goenv, err := exec.Command("go", "env", "GOCACHE", "GOMODCACHE", "GOPATH").Output()
	if err != nil {
		t.Fatal(err)
	}
	g := strings.Split(strings.TrimSpace(string(goenv)), "\n")
	env := []string{"HOME=" + home, "TRELLIS_ADDR=", "TRELLIS_TOKEN=", "TRELLIS_CACERT=",
		"GOCACHE=" + g[0], "GOMODCACHE=" + g[1], "GOPATH=" + g[2]}
	cmd := exec.Command(bin, append([]string{"up", dir}, flags...)...)
	cmd.Env = append(os.Environ(), env...)
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	stdout, _ := cmd.StdoutPipe()
	logf, _ := os.Create(filepath.Join(t.TempDir(), "up.log"))
	cmd.Stderr = logf
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	u := &upRun{env: env, home: home, cmd: cmd, exited: make(chan error, 1), ports: ports}
	upIsUp := make(chan string, 1)
	go func() {
		sc := bufio.NewScanner(stdout)
		for sc.Scan() {
			u.outMu.Lock()
			u.out.WriteString(sc.Text() + "\n")
			all := u.out.String()
			u.outMu.Unlock()
			if strings.Contains(sc.Text(), "Press Ctrl-C") {
				select {
				case upIsUp <- all: // the first summary
				default:
				}
			}
		}
		u.exited <- cmd.Wait()
	}()
	t.Cleanup(func() {
		syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL)
		b, _ := os.ReadFile(logf.Name())
		checkLogKeys(t, "trellis up", string(b))
		if t.Failed() {
			t.Logf("up log:\n%s", tail(string(b), 40))
		}
	})
	select {
	case u.summary = <-upIsUp:
	case err := <-u.exited:
		t.Fatalf("trellis up exited: %v", err)
	case <-time.After(3 * time.Minute):
		t.Fatal("trellis up not up after 3 minutes")
	}
	return u
}

// output returns all up printed so far.
func (u *upRun) output() string {
	u.outMu.Lock()
	defer u.outMu.Unlock()
	return u.out.String()
}

// checkBindsLoopback checks what the summary promises (issue 17 item 8):
// every TCP listener of trellis up (API, mesh ports, edge, ingress,
// admin) is on a loopback address.
func (u *upRun) checkBindsLoopback(t *testing.T) {
	t.Helper()
	if !strings.Contains(u.summary, "Bound to: 127.0.0.1 only") {
		t.Errorf("the summary does not say where it binds:\n%s", u.summary)
	}
	l, err := trellistest.ListenersOf(u.cmd.Process.Pid)
	if err != nil {
		t.Fatal(err)
	}
	if len(l.TCP) == 0 {
		t.Fatal("trellis up has no TCP listener")
	}
	for _, a := range l.TCP {
		host, _, err := net.SplitHostPort(a)
		if ip := net.ParseIP(host); err != nil || ip == nil || !ip.IsLoopback() {
			t.Errorf("trellis up listens on %s, not a loopback address", a)
		}
	}
}

// stop sends Ctrl-C and checks that nothing is left behind.
func (u *upRun) stop(t *testing.T) {
	t.Helper()
	syscall.Kill(u.cmd.Process.Pid, syscall.SIGINT)
	select {
	case <-u.exited:
	case <-time.After(20 * time.Second):
		t.Fatal("trellis up did not stop within 20s of Ctrl-C")
	}
	for _, port := range u.ports {
		if c, err := net.DialTimeout("tcp", fmt.Sprintf("127.0.0.1:%d", port), 200*time.Millisecond); err == nil {
			c.Close()
			t.Errorf("port %d still served after trellis up stopped", port)
		}
	}
	if _, err := os.Stat(filepath.Join(u.home, ".trellis", "context.json")); err == nil {
		t.Error("context file left behind")
	}
}

func TestUpGreeter(t *testing.T) {
	u := startUp(t, "../examples/greeter", []int{7700, 8080, 9000, 9001, 9002, 9191, 9192})
	env, summary := u.env, u.summary
	if !strings.Contains(summary, "curl http://127.0.0.1:8080/") || !strings.Contains(summary, "https://127.0.0.1:7700") {
		t.Errorf("summary does not say where to reach things:\n%s", summary)
	}
	checkCurlHints(t, summary)
	want := regexp.MustCompile(`^From greeter-1: Hello \(greeting-1\) [A-Z][a-z]+ \(name-1\)\n?$`)
	if got, err := get("127.0.0.1:8080"); err != nil || !want.MatchString(got) {
		t.Fatalf("greeter answered %q, %v; want %v", got, err, want)
	}

	if out, code := runCLI(t, env, "intention", "deny", "greeter", "name"); code != 0 {
		t.Fatalf("intention deny: %d %s", code, out)
	}
	trellistest.Eventually(t, 5*time.Second, "greeter fails after deny greeter->name", func() error {
		if got, err := get("127.0.0.1:8080"); err == nil {
			return fmt.Errorf("still answers %q", got)
		}
		return nil
	})
	if out, code := runCLI(t, env, "intention", "allow", "greeter", "name"); code != 0 {
		t.Fatalf("intention allow: %d %s", code, out)
	}
	trellistest.Eventually(t, 5*time.Second, "greeter answers after allow", func() error {
		_, err := get("127.0.0.1:8080")
		return err
	})
	// greeter may call greeting and name only: greeting->name is not allowed.
	out, _ := runCLI(t, env, "get", "intentions")
	for _, w := range []string{"greeter.greeting", "greeter.name", "client.greeter"} {
		if !strings.Contains(out, w) {
			t.Errorf("intentions %q lack %s", out, w)
		}
	}

	u.stop(t)
}

// The App Mesh canary walk-through on the hello example, as the README
// tells it: all traffic on v1, then 90/10, then all on v2.
func TestUpHelloCanary(t *testing.T) {
	// Every proxy of the example exports its spans where up is told.
	collector := trellistest.StartOTLP(t)
	u := startUp(t, "../examples/hello", []int{7700, 8000, 8080, 9100, 9101, 9102, 9191},
		"--otlp-endpoint", "grpc://"+collector.Addr, "--trace-sampling", "1")
	checkHelloIngress(t, u.summary)
	checkCurlHints(t, u.summary)
	u.checkBindsLoopback(t)
	hello := func() (string, error) {
		resp, err := http.Get("http://127.0.0.1:8080/hello/world")
		if err != nil {
			return "", err
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		if resp.StatusCode != 200 || !strings.Contains(string(b), ", world!</h1>") {
			return "", fmt.Errorf("status %d: %s", resp.StatusCode, b)
		}
		return resp.Header.Get("X-Backend-Version"), nil
	}
	count := func(n int) map[string]int {
		seen := map[string]int{}
		for range n {
			v, err := hello()
			if err != nil {
				t.Fatal(err)
			}
			seen[v]++
		}
		return seen
	}
	if seen := count(50); seen["v1"] != 50 {
		t.Fatalf("with route-100-0 the versions were %v, want all v1", seen)
	}
	trellistest.Eventually(t, 10*time.Second, "spans from the gateway and both services", func() error {
		from := map[string]bool{}
		for _, s := range collector.Spans() {
			from[s.Resource["service.name"]] = true
		}
		for _, svc := range []string{"hello-gateway", "hello-web", "hello-backend"} {
			if !from[svc] {
				return fmt.Errorf("none from %s (spans from %v)", svc, from)
			}
		}
		return nil
	})
	apply := func(file string) {
		t.Helper()
		if out, code := runCLI(t, u.env, "apply", "-f", "../examples/hello/"+file); code != 0 {
			t.Fatalf("apply %s: %d %s", file, code, out)
		}
	}
	apply("route-90-10.yaml")
	trellistest.Eventually(t, 5*time.Second, "canary reaches v2", func() error {
		if seen := count(50); seen["v2"] == 0 {
			return fmt.Errorf("only %v", seen)
		}
		return nil
	})
	if seen := count(1000); seen["v2"] < 60 || seen["v2"] > 140 {
		t.Errorf("with route-90-10 the versions were %v, want about 100 on v2", seen)
	}
	apply("route-0-100.yaml")
	trellistest.Eventually(t, 5*time.Second, "all traffic on v2", func() error {
		if seen := count(50); seen["v2"] != 50 {
			return fmt.Errorf("%v", seen)
		}
		return nil
	})
	u.stop(t)
}

func TestUpRejectsBadFile(t *testing.T) {
	dir := t.TempDir()
	os.WriteFile(filepath.Join(dir, "trellis.yaml"), []byte("services:\n  - name: a\n    command: [x]\n    port: 9000\n    helth: {http: /}\n"), 0o600)
	out, code := runCLI(t, nil, "up", dir)
	if code != 2 || !strings.Contains(out, `trellis.yaml:5: services[0].helth: unknown field (did you mean "health"?)`) {
		t.Errorf("exit %d, output %q; want 2 naming line 5, the field and the nearest known one", code, out)
	}
	os.WriteFile(filepath.Join(dir, "trellis.yaml"), []byte("services:\n  - name: a\n    command: [x]\n    port: 9000\n  - name: a\n    command: [x]\n    port: 9000\n"), 0o600)
	out, code = runCLI(t, nil, "up", dir)
	if code != 2 || !strings.Contains(out, "trellis.yaml:5: services[1].name") || !strings.Contains(out, "port 9000 is already used") {
		t.Errorf("exit %d, output %q; want 2 naming the duplicate name and port with lines", code, out)
	}
}

func TestProxyFromConfigFile(t *testing.T) {
	s := startServer(t)
	s.mustCLI(t, "intention", "allow", "client", "web")
	web := startApp(t, "web")
	s.startProxy(t, proxyOpts{service: "web", appPort: web.port})
	up, _ := loopAddr(t)
	admin, _ := loopAddr(t)
	cfg := filepath.Join(t.TempDir(), "client.yaml")
	os.WriteFile(cfg, []byte(fmt.Sprintf(`service: client
appAddr: 127.0.0.1:%d
upstreams:
  - {service: web, listen: %q}
server: %q
serverCAFile: %q
tokenFile: %q
adminAddr: %q
healthInterval: 250ms
`, web.port, up, s.addr, s.caFile, s.tokenFile(t, "client"), admin)), 0o600)
	p := &sidecar{proc: start(t, "proxy-client", nil, "proxy", "--config", cfg), admin: admin}
	p.waitReady(t)
	trellistest.Eventually(t, 10*time.Second, "call through a proxy configured from YAML", func() error {
		got, err := get(up)
		if err == nil && got != "web" {
			err = fmt.Errorf("got %q", got)
		}
		return err
	})

	bad := filepath.Join(t.TempDir(), "bad.yaml")
	os.WriteFile(bad, []byte("service: client\nappAddr: 127.0.0.1:1\nupstream: []\n"), 0o600)
	out, code := runCLI(t, s.env(), "proxy", "--config", bad)
	if code != 2 || !strings.Contains(out, "bad.yaml") || !strings.Contains(out, "line 3: field upstream not found") {
		t.Errorf("exit %d, %q; want 2 naming the file, line 3 and the field", code, out)
	}
}

func TestTokenDelete(t *testing.T) {
	s := startServer(t)
	secret := strings.TrimSpace(s.mustCLI(t, "token", "create", "--service", "web"))
	tokens, err := s.api.Tokens(t.Context())
	if err != nil {
		t.Fatal(err)
	}
	var id string
	for _, tk := range tokens {
		if len(tk.Services) == 1 && tk.Services[0] == "web" {
			id = tk.ID
		}
	}
	if id == "" {
		t.Fatalf("new token not listed: %+v", tokens)
	}
	asWeb := []string{"TRELLIS_TOKEN=" + secret, "TRELLIS_ADDR=" + s.addr, "TRELLIS_CACERT=" + s.caFile}
	if out, code := runCLI(t, asWeb, "ca", "roots"); code != 0 {
		t.Fatalf("service token before delete: %d %s", code, out)
	}
	s.mustCLI(t, "token", "delete", id)
	if out, code := s.cli(t, "token", "delete", id); code != 1 || !strings.Contains(out, "not found") {
		t.Errorf("second delete: exit %d, %q; want 1, not found", code, out)
	}
	if out, code := s.cli(t, "token", "delete", "abc"); code != 1 || !strings.Contains(out, "not found") {
		t.Errorf("delete of a short id: exit %d, %q; want 1, not found", code, out)
	}
	trellistest.Eventually(t, 5*time.Second, "deleted token refused", func() error {
		if out, code := runCLI(t, asWeb, "ca", "roots"); code == 0 || !strings.Contains(out, "401") {
			return fmt.Errorf("exit %d: %s", code, out)
		}
		return nil
	})
}

// The TLS sidecar pattern: `trellis up examples/tls-sidecar` serves the
// plain-HTTP app over TLS with a certificate made at start for its DNS name.
func TestUpTLSSidecar(t *testing.T) {
	u := startUp(t, "../examples/tls-sidecar", []int{7700, 8443, 9200})
	u.checkBindsLoopback(t)
	if !strings.Contains(u.summary, "curl -k https://127.0.0.1:8443/") {
		t.Errorf("summary does not print the edge URL:\n%s", u.summary)
	}
	checkCurlHints(t, u.summary)
	out, err := exec.Command("curl", "-sk", "--max-time", "5", "https://127.0.0.1:8443/").CombinedOutput()
	if err != nil || strings.TrimSpace(string(out)) != "Hello from behind Trellis TLS proxy!" {
		t.Fatalf("curl -k: %q, %v", out, err)
	}
	// The certificate carries the DNS name the example gives.
	s := exec.Command("openssl", "s_client", "-connect", "127.0.0.1:8443", "-servername", "tls-app.local")
	s.Stdin = strings.NewReader("")
	pemOut, err := s.Output()
	if err != nil {
		t.Fatalf("openssl s_client: %v", err)
	}
	x := exec.Command("openssl", "x509", "-noout", "-ext", "subjectAltName")
	x.Stdin = bytes.NewReader(pemOut)
	san, err := x.CombinedOutput()
	if err != nil || !strings.Contains(string(san), "DNS:tls-app.local") {
		t.Errorf("certificate SAN %q, %v; want DNS:tls-app.local", san, err)
	}
	// TLS 1.1 and older are refused.
	if out, err := exec.Command("curl", "-sk", "--max-time", "5", "--tlsv1.0", "--tls-max", "1.1", "https://127.0.0.1:8443/").CombinedOutput(); err == nil {
		t.Errorf("TLS 1.1 accepted: %q", out)
	}
	u.stop(t)
}

// rawGet sends one request with path exactly as given (no client-side
// normalization) and returns the status line and body.
func rawGet(t *testing.T, addr, path string) (string, string) {
	t.Helper()
	c, err := net.DialTimeout("tcp", addr, 2*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(10 * time.Second))
	fmt.Fprintf(c, "GET %s HTTP/1.1\r\nHost: hello.test\r\nConnection: close\r\n\r\n", path)
	resp, err := http.ReadResponse(bufio.NewReader(c), nil)
	if err != nil {
		t.Fatalf("GET %s: %v", path, err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.Status, string(b)
}

// checkHelloIngress: the seed's virtual gateway example, exactly, and the
// paths that must never reach a service without a route.
func checkHelloIngress(t *testing.T, summary string) {
	t.Helper()
	if !strings.Contains(summary, "curl http://127.0.0.1:8000/hello-service/") {
		t.Errorf("summary does not print the ingress URL:\n%s", summary)
	}
	status, body := rawGet(t, "127.0.0.1:8000", "/hello-service/hello/ingress")
	if status != "200 OK" || !strings.Contains(body, "Hello, ingress!") {
		t.Fatalf("ingress: %s %q; want hello-web's greeting for /hello/ingress", status, body)
	}
	// Duplicate slashes normalize to the routed path.
	if status, body := rawGet(t, "127.0.0.1:8000", "//hello-service//hello/slashes"); status != "200 OK" || !strings.Contains(body, "Hello, slashes!") {
		t.Errorf("//hello-service//hello/slashes: %s %q", status, body)
	}
	for _, path := range []string{
		"/admin", "/hello-service/../admin", "/hello-service/%2e%2e/admin", "/hello-service/%2E%2E/%2e%2e/admin",
		"/hello-service/./../admin", "/hello-servicex/hello/a",
	} {
		status, body := rawGet(t, "127.0.0.1:8000", path)
		if status != "404 Not Found" || !strings.HasPrefix(body, "trellis: no route") {
			t.Errorf("%s: %s %q; want the gateway's 404", path, status, body)
		}
	}
	for _, path := range []string{"/hello-service%2F..%2Fadmin", "/hello-service/hello%2fx", "/hello-service/..%5Cadmin", "/hello-service/%00"} {
		if status, body := rawGet(t, "127.0.0.1:8000", path); status != "400 Bad Request" || !strings.HasPrefix(body, "trellis:") {
			t.Errorf("%s: %s %q; want the gateway's 400", path, status, body)
		}
	}
}

// The NLB pattern: `trellis up examples/passthrough` puts two services
// that terminate their own TLS behind one pass-through listener.
func TestUpPassthrough(t *testing.T) {
	u := startUp(t, "../examples/passthrough", []int{7700, 8443, 9301, 9302, 9311, 9312, 9321, 9331})
	if !strings.Contains(u.summary, "https://alpha.example.test:8443/") {
		t.Errorf("summary does not print the pass-through URL:\n%s", u.summary)
	}
	// The gateway checks its targets with a TLS handshake through each
	// sidecar's edge listener, PROXY header first (healthCheck: tls with
	// proxyProtocol: true, as the README's gateway example): the curl
	// lines below answer only if the checks pass.
	checkCurlHints(t, u.summary)
	for _, name := range []string{"alpha", "beta"} {
		sni := name + ".example.test"
		c, err := tls.Dial("tcp", "127.0.0.1:8443", &tls.Config{ServerName: sni, InsecureSkipVerify: true})
		if err != nil {
			t.Fatalf("%s: %v", name, err)
		}
		// The certificate is the app's own, for its own name: the gateway
		// has none.
		cert := c.ConnectionState().PeerCertificates[0]
		if len(cert.DNSNames) != 1 || cert.DNSNames[0] != sni || cert.Subject.CommonName != sni {
			t.Errorf("%s: certificate for %v", name, cert.DNSNames)
		}
		fmt.Fprintf(c, "GET / HTTP/1.1\r\nHost: %s\r\nConnection: close\r\n\r\n", sni)
		b, _ := io.ReadAll(c)
		c.Close()
		// The app saw the client's own address through the gateway and
		// its sidecar (PROXY protocol v2 at both hops).
		want := fmt.Sprintf("Hello from %s, over its own TLS as %s; you are %s", name, sni, c.LocalAddr())
		if !strings.Contains(string(b), want) {
			t.Errorf("%s answered %q; want %q", name, b, want)
		}
	}
	u.stop(t)
	// The sidecars' TCP health checks of the apps (a connect, every
	// second) are not errors of the apps.
	if n := strings.Count(u.output(), "TLS handshake error"); n > 0 {
		t.Errorf("the apps logged %d TLS handshake errors:\n%s", n, tail(u.output(), 10))
	}
}

// TestUpCrossVPC runs the cross-VPC example as the README does: the
// ingress serves the frontend's page, on which crystal answers from vpc-a
// and nodejs from vpc-b (through vpc-b's network gateway), both by the
// workshop's names; the summary's dig line gets an answer.
func TestUpCrossVPC(t *testing.T) {
	u := startUp(t, "../examples/cross-vpc", []int{7700, 8000, 8600, 9300, 9301, 9302, 9310, 9311, 9320, 9321, 15441, 15442})
	u.checkBindsLoopback(t)
	if !strings.Contains(u.summary, "curl http://127.0.0.1:8000/") {
		t.Errorf("the summary does not give the ingress URL:\n%s", u.summary)
	}
	dig := regexp.MustCompile(`dig @127\.0\.0\.1 -p 8600 (\S+)`).FindStringSubmatch(u.summary)
	if dig == nil {
		t.Fatalf("the summary has no dig line:\n%s", u.summary)
	}
	var page frontendPage
	trellistest.Eventually(t, 10*time.Second, "the frontend's page through the ingress", func() error {
		body, err := fetch(http.DefaultClient, "http://127.0.0.1:8000/", "")
		if err != nil {
			return err
		}
		page = frontendPage{}
		if err := json.Unmarshal([]byte(body), &page); err != nil {
			return fmt.Errorf("%v: %s", err, body)
		}
		for _, want := range []struct{ svc, network string }{{"crystal", "vpc-a"}, {"nodejs", "vpc-b"}} {
			status, _, network, caller, why := page.backend(want.svc)
			if status != http.StatusOK || network != want.network || !strings.Contains(caller, "/svc/frontend") {
				return fmt.Errorf("%s: %d %q %q %s", want.svc, status, network, caller, why)
			}
		}
		return nil
	})
	checkCurlHints(t, u.summary)
	out, code := runCLI(t, u.env, "get", "proxies")
	if code != 0 || !strings.Contains(out, "nodejs: via gateway network vpc-b") || !strings.Contains(out, "crystal: direct") {
		t.Errorf("get proxies does not show the frontends' paths: %d\n%s", code, out)
	}
	if _, err := exec.LookPath("dig"); err == nil || os.Getenv("TRELLIS_REQUIRE_NETNS") != "" {
		got, err := exec.Command("dig", "+short", "@127.0.0.1", "-p", "8600", dig[1]).CombinedOutput()
		if err != nil || strings.TrimSpace(string(got)) != "127.0.0.1" {
			t.Errorf("dig %s: %v %q, want the ingress at 127.0.0.1", dig[1], err, got)
		}
	}
	u.stop(t)
}
