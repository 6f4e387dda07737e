//go:build linux

package integration

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/trellis-mesh/trellis/client"
	"github.com/trellis-mesh/trellis/internal/trellistest"
)

// bin is the trellis binary under test, built once by TestMain.
var bin string

func TestMain(m *testing.M) {
	dir, err := os.MkdirTemp("", "trellis-integration")
	if err != nil {
		panic(err)
	}
	bin = filepath.Join(dir, "trellis")
	args := []string{"build", "-o", bin}
	if raceEnabled {
		args = append(args, "-race")
	}
	build := exec.Command("go", append(args, "../cmd/trellis")...)
	build.Stdout, build.Stderr = os.Stderr, os.Stderr
	if err := build.Run(); err != nil {
		fmt.Fprintln(os.Stderr, "build trellis:", err)
		os.Exit(1)
	}
	code := m.Run()
	os.RemoveAll(dir)
	os.Exit(code)
}

// proc is a trellis process started by a test.
type proc struct {
	t    *testing.T
	name string
	wrap []string // runs bin through this command, such as ip netns exec NS
	args []string
	env  []string
	log  string
	// errLog, when set, takes standard error apart from log (standard
	// output): for tests of what a process logs.
	errLog string
	cmd    *exec.Cmd
	done   chan struct{}
}

func start(t *testing.T, name string, env []string, args ...string) *proc {
	t.Helper()
	return startWrapped(t, name, nil, env, args...)
}

// startWrapped starts bin through wrap, a command that ends by exec'ing its
// arguments (ip netns exec, setpriv), so the process is still bin's.
func startWrapped(t *testing.T, name string, wrap, env []string, args ...string) *proc {
	t.Helper()
	return startProc(t, &proc{t: t, name: name, wrap: wrap, args: args, env: env, log: filepath.Join(t.TempDir(), name+".log")})
}

// startSplit is start with standard error in a file of its own
// (proc.errLog), apart from standard output.
func startSplit(t *testing.T, name string, args ...string) *proc {
	t.Helper()
	dir := t.TempDir()
	return startProc(t, &proc{t: t, name: name, args: args, log: filepath.Join(dir, name+".out"), errLog: filepath.Join(dir, name+".err")})
}

func startProc(t *testing.T, p *proc) *proc {
	t.Helper()
	p.run()
	t.Cleanup(func() {
		p.kill(syscall.SIGKILL)
		log := p.logText()
		if strings.Contains(log, "WARNING: DATA RACE") {
			race := log[strings.Index(log, "WARNING: DATA RACE"):]
			t.Errorf("%s reported a data race:\n%s", p.name, head(race, 60))
		}
		checkLogKeys(t, p.name, log)
		if t.Failed() {
			t.Logf("---- %s log ----\n%s", p.name, tail(log, 40))
		}
	})
	return p
}

func (p *proc) run() {
	p.t.Helper()
	f, err := os.OpenFile(p.log, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o600)
	if err != nil {
		p.t.Fatal(err)
	}
	argv := append(append(slices.Clone(p.wrap), bin), p.args...)
	cmd := exec.Command(argv[0], argv[1:]...)
	cmd.Env = append(os.Environ(), p.env...)
	cmd.Stdout, cmd.Stderr = f, f
	errf := f
	if p.errLog != "" {
		if errf, err = os.OpenFile(p.errLog, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o600); err != nil {
			p.t.Fatal(err)
		}
		cmd.Stderr = errf
	}
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if err := cmd.Start(); err != nil {
		p.t.Fatal(err)
	}
	p.cmd, p.done = cmd, make(chan struct{})
	go func() { cmd.Wait(); f.Close(); errf.Close(); close(p.done) }()
}

// kill sends sig and waits for the process to exit.
func (p *proc) kill(sig syscall.Signal) {
	select {
	case <-p.done:
		return
	default:
	}
	_ = p.cmd.Process.Signal(sig)
	select {
	case <-p.done:
	case <-time.After(20 * time.Second):
		_ = p.cmd.Process.Kill()
		<-p.done
	}
}

// restart starts the process again with the same arguments.
func (p *proc) restart() { p.kill(syscall.SIGKILL); p.run() }

func (p *proc) logText() string {
	b, _ := os.ReadFile(p.log)
	if p.errLog != "" {
		e, _ := os.ReadFile(p.errLog)
		b = append(b, e...)
	}
	return string(b)
}

func head(s string, n int) string {
	lines := strings.Split(s, "\n")
	if len(lines) > n {
		lines = lines[:n]
	}
	return strings.Join(lines, "\n")
}

func tail(s string, n int) string {
	lines := strings.Split(s, "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}

// server is a control plane process and a client for it.
type server struct {
	*proc
	addr    string
	dataDir string
	caFile  string
	// caKeyFile is the CA key of a server started with one the test made
	// (startServerKnownCA): the store holds the CA key sealed.
	caKeyFile string
	admin     string
	api       *client.Client
}

func startServer(t *testing.T, extra ...string) *server {
	t.Helper()
	return startServerOn(t, fmt.Sprintf("127.0.0.1:%d", trellistest.FreePort(t)), extra...)
}

// startServerOn starts a control plane listening on addr.
func startServerOn(t *testing.T, addr string, extra ...string) *server {
	t.Helper()
	return startServerIn(t, "server", nil, addr, extra...)
}

// startServerIn starts a control plane named name through wrap (such as ip
// netns exec NS), listening on addr: the first server of a store, which
// makes the admin token and the CA.
func startServerIn(t *testing.T, name string, wrap []string, addr string, extra ...string) *server {
	t.Helper()
	dir := t.TempDir()
	args := append([]string{"server", "--data-dir", dir, "--listen", addr, "--log-level", "debug"}, extra...)
	return newServer(t, startWrapped(t, name, wrap, nil, args...), addr, dir)
}

// newServer waits for the server p (listening on addr, its data in dir)
// to be up and returns it.
func newServer(t *testing.T, p *proc, addr, dir string) *server {
	t.Helper()
	s := &server{proc: p, addr: addr, dataDir: dir, caFile: filepath.Join(dir, "ca.pem")}
	s.waitUp(t)
	b, err := os.ReadFile(filepath.Join(dir, "admin-token"))
	if err != nil {
		t.Fatal(err)
	}
	s.admin = strings.TrimSpace(string(b))
	ca, _ := os.ReadFile(s.caFile)
	s.api, err = client.New(client.Config{Addr: addr, Token: s.admin, CAPEM: ca})
	if err != nil {
		t.Fatal(err)
	}
	return s
}

func (s *server) waitUp(t *testing.T) {
	t.Helper()
	trellistest.Eventually(t, 60*time.Second, "server listening", func() error {
		if _, err := os.Stat(filepath.Join(s.dataDir, "admin-token")); err != nil {
			return err
		}
		c, err := net.Dial("tcp", s.addr)
		if err == nil {
			c.Close()
		}
		return err
	})
}

// env returns the environment for CLI commands against s.
func (s *server) env() []string {
	return []string{"TRELLIS_ADDR=" + s.addr, "TRELLIS_TOKEN=" + s.admin, "TRELLIS_CACERT=" + s.caFile, "HOME=" + s.dataDir}
}

// cli runs a trellis CLI command and returns its output and exit code.
func (s *server) cli(t *testing.T, args ...string) (string, int) {
	t.Helper()
	return runCLI(t, s.env(), args...)
}

func runCLI(t *testing.T, env []string, args ...string) (string, int) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, bin, args...)
	cmd.Env = append(os.Environ(), env...)
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	err := cmd.Run()
	code := 0
	if ee, ok := err.(*exec.ExitError); ok {
		code = ee.ExitCode()
	} else if err != nil {
		t.Fatalf("run %v: %v", args, err)
	}
	return out.String(), code
}

// mustCLI runs a command that must succeed.
func (s *server) mustCLI(t *testing.T, args ...string) string {
	t.Helper()
	out, code := s.cli(t, args...)
	if code != 0 {
		t.Fatalf("trellis %s: exit %d: %s", strings.Join(args, " "), code, out)
	}
	return out
}

// tokenFile makes a service token and returns the file holding it.
func (s *server) tokenFile(t *testing.T, services ...string) string {
	t.Helper()
	args := []string{"token", "create"}
	for _, svc := range services {
		args = append(args, "--service", svc)
	}
	secret := strings.TrimSpace(s.mustCLI(t, args...))
	f := filepath.Join(t.TempDir(), "token")
	if err := os.WriteFile(f, []byte(secret), 0o600); err != nil {
		t.Fatal(err)
	}
	return f
}

// sidecar is a proxy process.
type sidecar struct {
	*proc
	admin    string
	stateDir string
}

type proxyOpts struct {
	service   string
	appPort   int
	upstreams []string // "svc:port"
	extra     []string
	stateDir  string
}

func (s *server) startProxy(t *testing.T, o proxyOpts) *sidecar {
	t.Helper()
	admin := trellistest.FreePort(t)
	if o.stateDir == "" {
		o.stateDir = t.TempDir()
	}
	args := []string{"proxy", "--service", o.service, "--app-port", strconv.Itoa(o.appPort),
		"--server", s.addr, "--ca-file", s.caFile, "--token-file", s.tokenFile(t, o.service),
		"--state-dir", o.stateDir, "--admin-port", strconv.Itoa(admin), "--log-level", "debug",
		"--health-interval", "250ms"}
	for _, u := range o.upstreams {
		args = append(args, "--upstream", u)
	}
	args = append(args, o.extra...)
	p := &sidecar{proc: start(t, "proxy-"+o.service, nil, args...), admin: fmt.Sprintf("127.0.0.1:%d", admin), stateDir: o.stateDir}
	p.waitReady(t)
	return p
}

func (p *sidecar) waitReady(t *testing.T) {
	t.Helper()
	trellistest.Eventually(t, 30*time.Second, p.name+" ready", func() error {
		resp, err := http.Get("http://" + p.admin + "/ready")
		if err != nil {
			return err
		}
		resp.Body.Close()
		if resp.StatusCode != 200 {
			return fmt.Errorf("status %d", resp.StatusCode)
		}
		return nil
	})
}

// app is an HTTP server that answers with its name, standing for a real app.
type app struct {
	name string
	port int
	srv  *http.Server
	mu   sync.Mutex
	hits int
	sick atomic.Bool // /health answers 503 while set
}

func startApp(t *testing.T, name string) *app {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	a := &app{name: name, port: l.Addr().(*net.TCPAddr).Port}
	a.srv = &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/health" {
			if a.sick.Load() {
				w.WriteHeader(http.StatusServiceUnavailable)
			}
			return
		}
		a.mu.Lock()
		a.hits++
		a.mu.Unlock()
		io.WriteString(w, a.name)
	})}
	go a.srv.Serve(l)
	t.Cleanup(func() { a.srv.Close() })
	return a
}

// served is how many requests a has answered.
func (a *app) served() int {
	a.mu.Lock()
	defer a.mu.Unlock()
	return a.hits
}

// get fetches http://addr/ on a new connection and returns the body.
func get(addr string) (string, error) {
	tr := &http.Transport{DisableKeepAlives: true}
	defer tr.CloseIdleConnections()
	return fetch(&http.Client{Transport: tr, Timeout: 5 * time.Second}, "http://"+addr+"/", "")
}

// fetch GETs url with c, with host as the Host header if set, and returns
// the body; a status other than 200 is an error that quotes the body.
func fetch(c *http.Client, url, host string) (string, error) {
	req, err := http.NewRequest(http.MethodGet, url, nil)
	if err != nil {
		return "", err
	}
	if host != "" {
		req.Host = host
	}
	resp, err := c.Do(req)
	if err != nil {
		return "", err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		return "", err
	}
	if resp.StatusCode != http.StatusOK {
		return "", fmt.Errorf("status %d: %s", resp.StatusCode, b)
	}
	return string(b), nil
}

// loopAddr returns 127.0.0.1:port for a fresh free port.
func loopAddr(t *testing.T) (string, int) {
	p := trellistest.FreePort(t)
	return fmt.Sprintf("127.0.0.1:%d", p), p
}

func writeFile(path, content string) error { return os.WriteFile(path, []byte(content), 0o600) }

// waitInstances waits until service has exactly n registered instances.
func (s *server) waitInstances(t *testing.T, within time.Duration, what, service string, n int) {
	t.Helper()
	trellistest.Eventually(t, within, what, func() error {
		ins, err := s.api.Instances(context.Background(), service)
		if err != nil || len(ins) != n {
			return fmt.Errorf("%d instances of %s (%v), want %d", len(ins), service, err, n)
		}
		return nil
	})
}

// pid is the process's current PID.
func (p *proc) pid() int { return p.cmd.Process.Pid }
