package cli

import (
	"context"
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	v1 "github.com/trellis-mesh/trellis/api/v1"
	"github.com/trellis-mesh/trellis/internal/check"
	"github.com/trellis-mesh/trellis/internal/control"
)

// TestWatchProxies drives the watch with a fake clock: each read returns
// the next status of the script (the last one repeats), each sleep moves
// the clock on.
func TestWatchProxies(t *testing.T) {
	p := func(sent, acked, nack string) []v1.ProxyStatus {
		return []v1.ProxyStatus{{Instance: "w1", Service: "web", SentVersion: sent, AckedVersion: acked, Error: nack}}
	}
	for _, tc := range []struct {
		name       string
		wait       time.Duration
		script     [][]v1.ProxyStatus
		wantReads  int
		wantBehind time.Duration // -1: not behind
	}{
		{"current at once", 10 * time.Second, [][]v1.ProxyStatus{p("2", "2", "")}, 1, -1},
		{"catches up", 10 * time.Second, [][]v1.ProxyStatus{p("2", "1", ""), p("2", "1", ""), p("2", "2", "")}, 3, -1},
		{"stays behind", 10 * time.Second, [][]v1.ProxyStatus{p("2", "1", "")}, 11, 10 * time.Second},
		{"progress restarts the watch", 5 * time.Second, [][]v1.ProxyStatus{p("3", "1", ""), p("3", "1", ""), p("3", "1", ""), p("4", "2", "")}, 9, 5 * time.Second},
		{"a rejection is not waited for", 10 * time.Second, [][]v1.ProxyStatus{p("2", "1", "bad route")}, 1, -1},
		{"no wait", 0, [][]v1.ProxyStatus{p("2", "1", "")}, 1, 0},
	} {
		t.Run(tc.name, func(t *testing.T) {
			clock := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
			reads := 0
			read := func(context.Context) ([]v1.ProxyStatus, error) {
				s := tc.script[min(reads, len(tc.script)-1)]
				reads++
				return s, nil
			}
			w := watch{wait: tc.wait, every: time.Second, now: func() time.Time { return clock },
				sleep: func(_ context.Context, d time.Duration) error { clock = clock.Add(d); return nil }}
			_, behind, err := watchProxies(context.Background(), read, w)
			if err != nil {
				t.Fatal(err)
			}
			if reads != tc.wantReads {
				t.Errorf("got %d reads, want %d", reads, tc.wantReads)
			}
			d, ok := behind["w1"]
			switch {
			case tc.wantBehind < 0 && ok:
				t.Errorf("got w1 behind %v, want not behind", d)
			case tc.wantBehind >= 0 && (!ok || d != tc.wantBehind):
				t.Errorf("got w1 behind %v (%v), want %v", d, ok, tc.wantBehind)
			}
		})
	}
}

// TestLocalFindings plants a context file left by a process that is gone,
// naming a token file others can read, in a data dir whose CA key others
// can read too.
func TestLocalFindings(t *testing.T) {
	home := t.TempDir()
	t.Setenv("HOME", home)
	data := filepath.Join(home, "data")
	if err := os.MkdirAll(filepath.Join(home, ".trellis"), 0o700); err != nil {
		t.Fatal(err)
	}
	if err := os.MkdirAll(data, 0o700); err != nil {
		t.Fatal(err)
	}
	gone := exec.Command("true")
	if err := gone.Run(); err != nil {
		t.Fatal(err)
	}
	token := filepath.Join(data, "admin-token")
	ctxFile := ContextFile()
	b, _ := json.Marshal(Context{Addr: "127.0.0.1:1", CAFile: filepath.Join(data, "ca.pem"), TokenFile: token, PID: gone.Process.Pid})
	for path, mode := range map[string]os.FileMode{ctxFile: 0o600, token: 0o644, filepath.Join(data, "ca-key.pem"): 0o640, filepath.Join(data, "store-secret"): 0o600} {
		if err := os.WriteFile(path, b, mode); err != nil {
			t.Fatal(err)
		}
		if err := os.Chmod(path, mode); err != nil { // past the umask
			t.Fatal(err)
		}
	}
	got := localFindings(&env{}, "")
	want := []struct {
		sev         check.Severity
		where, what string
	}{
		{check.Warning, ctxFile, "no longer running"},
		{check.Error, token, "the admin token has mode 0644"},
		{check.Error, filepath.Join(data, "ca-key.pem"), "the CA key has mode 0640"},
	}
	if len(got) != len(want) {
		t.Fatalf("got %d findings %+v, want %d", len(got), got, len(want))
	}
	for i, w := range want {
		if got[i].Severity != w.sev || got[i].Where != w.where || !strings.Contains(got[i].What, w.what) {
			t.Errorf("finding %d: got %s %s %q, want %s %s containing %q", i, got[i].Severity, got[i].Where, got[i].What, w.sev, w.where, w.what)
		}
	}
}

// The data dir's file names check looks for are the server's.
func TestDataDirNames(t *testing.T) {
	if adminTokenFile != control.AdminTokenFileName || storeSecretFile != control.StoreSecretFileName {
		t.Errorf("check looks for %s and %s, the server writes %s and %s", adminTokenFile, storeSecretFile, control.AdminTokenFileName, control.StoreSecretFileName)
	}
}
