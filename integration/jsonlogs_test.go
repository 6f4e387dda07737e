//go:build linux

package integration

import (
	"bytes"
	"encoding/json"
	"fmt"
	"os"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/trellis-mesh/trellis/internal/trellistest"
)

// jsonKeys returns the top-level keys of a JSON object line, in order,
// or an error if the line is not exactly one JSON object.
func jsonKeys(line string) ([]string, error) {
	dec := json.NewDecoder(strings.NewReader(line))
	if tok, err := dec.Token(); err != nil || tok != json.Delim('{') {
		return nil, fmt.Errorf("not a JSON object")
	}
	var keys []string
	for dec.More() {
		tok, err := dec.Token()
		if err != nil {
			return nil, err
		}
		keys = append(keys, tok.(string))
		var v json.RawMessage
		if err := dec.Decode(&v); err != nil {
			return nil, err
		}
	}
	if _, err := dec.Token(); err != nil {
		return nil, err
	}
	if dec.More() || dec.InputOffset() != int64(len(line)) {
		return nil, fmt.Errorf("more after the object")
	}
	return keys, nil
}

// checkJSONLog fails t for every line of log that is not one JSON object
// with time, level and msg, each key once (the text checker's rule,
// checkLogKeys, for JSON).
func checkJSONLog(t *testing.T, name, log string) {
	t.Helper()
	if strings.TrimSpace(log) == "" {
		t.Errorf("%s logged nothing", name)
	}
	for _, line := range strings.Split(strings.TrimRight(log, "\n"), "\n") {
		keys, err := jsonKeys(line)
		if err != nil {
			t.Errorf("%s logged a line that is not JSON (%v): %s", name, err, line)
			continue
		}
		seen := map[string]bool{}
		for _, k := range keys {
			if seen[k] {
				t.Errorf("%s logged key %q twice: %s", name, k, line)
			}
			seen[k] = true
		}
		if !seen["time"] || !seen["level"] || !seen["msg"] {
			t.Errorf("%s logged a line without time, level and msg: %s", name, line)
		}
	}
}

func TestJSONKeys(t *testing.T) {
	for _, tc := range []struct {
		line string
		keys string
		ok   bool
	}{
		{`{"time":"x","level":"INFO","msg":"a","service":"b"}`, "time level msg service", true},
		{`{"a":1,"a":{"b":[1,{"c":2}]}}`, "a a", true},
		{`time=x level=INFO msg=a`, "", false},
		{`{"a":1} trailing`, "", false},
		{`Admin token (shown once): x`, "", false},
	} {
		keys, err := jsonKeys(tc.line)
		if (err == nil) != tc.ok || strings.Join(keys, " ") != tc.keys {
			t.Errorf("jsonKeys(%q) = %v, %v; want %q, ok %v", tc.line, keys, err, tc.keys, tc.ok)
		}
	}
}

// With --log-format json every line a server and its proxies write to
// standard error is one JSON object, each key once (issue 23 item 4):
// start-up, a call, a denied call on both sides, shutdown.
func TestJSONLogsEveryLine(t *testing.T) {
	addr := "127.0.0.1:" + strconv.Itoa(trellistest.FreePort(t))
	dir := t.TempDir()
	srv := startSplit(t, "server", "server", "--data-dir", dir, "--listen", addr, "--log-level", "debug", "--log-format", "json")
	s := newServer(t, srv, addr, dir)
	s.mustCLI(t, "apply", "-f", writeTemp(t, "kind: Service\nname: web\nspec: {protocol: http}\n"))
	s.mustCLI(t, "intention", "allow", "client", "web")
	web := startApp(t, "web")
	proxy := func(service string, extra ...string) (*proc, string) {
		admin := "127.0.0.1:" + strconv.Itoa(trellistest.FreePort(t))
		_, port, _ := strings.Cut(admin, ":")
		args := append([]string{"proxy", "--service", service, "--app-port", strconv.Itoa(web.port),
			"--server", s.addr, "--ca-file", s.caFile, "--token-file", s.tokenFile(t, service),
			"--state-dir", t.TempDir(), "--admin-port", port, "--log-level", "debug", "--log-format", "json",
			"--health-interval", "250ms"}, extra...)
		p := startSplit(t, "proxy-"+service, args...)
		(&sidecar{proc: p, admin: admin}).waitReady(t)
		return p, admin
	}
	wp, _ := proxy("web")
	up, upPort := loopAddr(t)
	cp, _ := proxy("client", "--upstream", fmt.Sprintf("web:%d", upPort))
	trellistest.Eventually(t, 10*time.Second, "a call through both proxies", func() error {
		got, err := get(up)
		if err == nil && got != "web" {
			err = fmt.Errorf("got %q", got)
		}
		return err
	})
	s.mustCLI(t, "intention", "deny", "client", "web")
	trellistest.Eventually(t, 10*time.Second, "the denial logged on both sides", func() error {
		get(up)
		if !strings.Contains(wpErr(wp), "no intention allows client -> web") && !strings.Contains(wpErr(wp), "denied") {
			return fmt.Errorf("web's sidecar has not logged the denial")
		}
		if !strings.Contains(wpErr(cp), "denied") {
			return fmt.Errorf("client's sidecar has not logged the denial")
		}
		return nil
	})
	for _, p := range []*proc{cp, wp, srv} {
		p.kill(syscall.SIGTERM) // shutdown logs too
		b, _ := os.ReadFile(p.errLog)
		checkJSONLog(t, p.name, string(b))
		t.Logf("%s: %d lines", p.name, bytes.Count(b, []byte("\n")))
		if bytes.Contains(b, []byte("trellis_")) && p == srv {
			t.Errorf("the server's log holds a token")
		}
	}
}

// wpErr is what p wrote to standard error so far.
func wpErr(p *proc) string { b, _ := os.ReadFile(p.errLog); return string(b) }

// writeTemp writes text to a new file and returns its path.
func writeTemp(t *testing.T, text string) string {
	t.Helper()
	f, err := os.CreateTemp(t.TempDir(), "*.yaml")
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if _, err := f.WriteString(text); err != nil {
		t.Fatal(err)
	}
	return f.Name()
}
