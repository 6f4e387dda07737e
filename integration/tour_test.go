package integration

import (
	"bufio"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/trellis-mesh/trellis/internal/trellistest"
)

// tourStep is one command of the README's tour and, when its comment says
// `# => TEXT`, what its output must contain.
type tourStep struct {
	line int
	cmd  string
	want string
}

// readTour returns the commands of the fenced sh blocks of the README's
// section title, in order, with the README's line of each.
func readTour(t *testing.T, readme, title string) []tourStep {
	t.Helper()
	f, err := os.Open(readme)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	var steps []tourStep
	in, fenced := false, false
	sc := bufio.NewScanner(f)
	for n := 1; sc.Scan(); n++ {
		l := sc.Text()
		switch {
		case strings.HasPrefix(l, "## "):
			in = l == "## "+title
		case !in:
		case strings.HasPrefix(l, "```"):
			fenced = !fenced && strings.TrimPrefix(l, "```") == "sh"
		case fenced && strings.TrimSpace(l) != "" && !strings.HasPrefix(strings.TrimSpace(l), "#"):
			cmd, comment, _ := strings.Cut(l, "#")
			_, want, _ := strings.Cut(comment, "=>")
			steps = append(steps, tourStep{line: n, cmd: strings.TrimSpace(cmd), want: strings.TrimSpace(want)})
		}
	}
	if err := sc.Err(); err != nil {
		t.Fatal(err)
	}
	return steps
}

// The README's tour, run as a reader would: `trellis up` on the example,
// then every command of its sh blocks from "another terminal", each of
// which must succeed and print what its `# =>` comment says. The tour
// cannot drift from the code.
func TestREADMETour(t *testing.T) {
	steps := readTour(t, "../README.md", "A five-minute tour")
	if len(steps) < 5 {
		t.Fatalf("the README's tour has %d commands; the test reads fenced sh blocks under \"## A five-minute tour\"", len(steps))
	}
	u := startUp(t, "../examples/greeter", []int{7700, 8080, 9000, 9001, 9002, 9191, 9192})
	// ./trellis is the binary the reader built; the harness built it as bin.
	dir := t.TempDir()
	if err := os.Symlink(bin, filepath.Join(dir, "trellis")); err != nil {
		t.Fatal(err)
	}
	for _, s := range steps {
		if s.cmd == "go build -o trellis ./cmd/trellis" {
			continue // built already
		}
		cmd := strings.ReplaceAll(s.cmd, "./trellis ", filepath.Join(dir, "trellis")+" ")
		run := func() (string, error) {
			c := exec.Command("bash", "-c", cmd)
			c.Dir = ".." // the repository, where the reader is
			c.Env = append(os.Environ(), u.env...)
			out, err := c.CombinedOutput()
			return string(out), err
		}
		// A change reaches every proxy within a second, so an expectation
		// that follows one may take that long to hold.
		trellistest.Eventually(t, 10*time.Second, fmt.Sprintf("README.md:%d %q", s.line, s.cmd), func() error {
			out, err := run()
			if err != nil {
				return fmt.Errorf("%v; output:\n%s", err, out)
			}
			if !strings.Contains(out, s.want) {
				return fmt.Errorf("output does not contain %q:\n%s", s.want, out)
			}
			return nil
		})
	}
}
