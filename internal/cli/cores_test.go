package cli

import (
	"io"
	"runtime"
	"testing"
)

// --cores sets how many cores the process works on at once: its default
// for a sidecar is one, GOMAXPROCS in the environment wins over the
// default but not over the flag, and 0 gives back the runtime's choice.
func TestCoresFlag(t *testing.T) {
	defer runtime.SetDefaultGOMAXPROCS()
	runtime.SetDefaultGOMAXPROCS()
	all := runtime.GOMAXPROCS(0)
	for _, c := range []struct {
		name    string
		def     int
		args    []string
		env     string
		before  int // GOMAXPROCS as the runtime left it from the environment
		want    int // 0: the runtime's default
		wantErr bool
	}{
		{"sidecar default", 1, nil, "", all, 1, false},
		{"flag", 1, []string{"--cores", "3"}, "", all, 3, false},
		{"environment over the default", 1, nil, "5", 5, 5, false},
		{"flag over the environment", 1, []string{"--cores", "2"}, "5", 5, 2, false},
		{"zero: the runtime's choice", 1, []string{"--cores", "0"}, "", 1, 0, false},
		{"gateway default", 0, nil, "", 1, 0, false},
		{"negative", 1, []string{"--cores", "-1"}, "", all, 0, true},
	} {
		t.Run(c.name, func(t *testing.T) {
			runtime.GOMAXPROCS(c.before)
			e := &env{stdout: io.Discard, stderr: io.Discard, getenv: func(k string) string {
				if k == "GOMAXPROCS" {
					return c.env
				}
				return ""
			}}
			fs := newFlags(e, "proxy", "proxy")
			apply := coresFlag(fs, c.def, "test")
			if err := parse(fs, c.args); err != nil {
				t.Fatal(err)
			}
			err := apply(e)
			if c.wantErr {
				if err == nil {
					t.Fatal("no error")
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			want := c.want
			if want == 0 {
				want = all
			}
			if got := runtime.GOMAXPROCS(0); got != want {
				t.Errorf("GOMAXPROCS = %d, want %d", got, want)
			}
		})
	}
}
