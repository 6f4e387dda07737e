package main

import (
	"bytes"
	"crypto/sha256"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"runtime"
	"strings"
	"testing"
	"time"

	"github.com/trellis-mesh/trellis/tools/internal/release"
)

const testVersion = "1.2.3-rc.1"

// buildDeb builds trellis and the package into a new directory and
// returns the .deb's path.
func buildDeb(t *testing.T, root string, mtime time.Time) string {
	t.Helper()
	dir := t.TempDir()
	bin := filepath.Join(dir, "trellis")
	if err := release.Binary(t.Context(), release.Build{Root: root, Output: bin, Version: testVersion}); err != nil {
		t.Fatal(err)
	}
	spec := Spec{Root: root, Binary: bin, Version: testVersion, Arch: runtime.GOARCH, MTime: mtime}
	name, err := FileName(spec)
	if err != nil {
		t.Fatal(err)
	}
	var buf bytes.Buffer
	if err := Build(spec, &buf); err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(dir, name)
	if err := os.WriteFile(path, buf.Bytes(), 0o644); err != nil {
		t.Fatal(err)
	}
	return path
}

// The package builds reproducibly, holds what it should with the right
// owners, modes and conffiles, its units pass systemd-analyze verify
// and name only flags trellis has; as root with dpkg (CI), it installs
// into this system, runs, and removes and purges cleanly.
func TestDeb(t *testing.T) {
	if testing.Short() {
		t.Skip("builds trellis twice: not in -short")
	}
	if _, err := exec.LookPath("dpkg-deb"); err != nil {
		t.Skip("dpkg-deb not installed: the package cannot be inspected here")
	}
	root, err := release.Root()
	if err != nil {
		t.Fatal(err)
	}
	mtime := time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC)
	debs := [2]string{buildDeb(t, root, mtime), buildDeb(t, root, mtime)}
	if filepath.Base(debs[0]) != "trellis_1.2.3~rc.1_"+runtime.GOARCH+".deb" {
		t.Errorf("file name %s, want trellis_1.2.3~rc.1_%s.deb", filepath.Base(debs[0]), runtime.GOARCH)
	}
	var sums [2][32]byte
	for i, d := range debs {
		b, err := os.ReadFile(d)
		if err != nil {
			t.Fatal(err)
		}
		sums[i] = sha256.Sum256(b)
	}
	if sums[0] != sums[1] {
		t.Errorf("two builds of the same inputs: sha256 %x and %x, want one", sums[0], sums[1])
	}
	deb := debs[0]

	// The control file and the conffiles.
	if got := dpkgDeb(t, "--field", deb, "Package", "Version", "Architecture", "Depends"); got != "Package: trellis\nVersion: 1.2.3~rc.1\nArchitecture: "+runtime.GOARCH+"\nDepends: passwd\n" {
		t.Errorf("control fields:\n%s", got)
	}
	if got := dpkgDeb(t, "--info", deb, "conffiles"); got != strings.Join(Conffiles, "\n")+"\n" {
		t.Errorf("conffiles %q, want %q", got, Conffiles)
	}
	// Every file root's, at the mode it should have, stamped mtime.
	want := map[string]string{
		"./usr/bin/trellis": "-rwxr-xr-x",
		"./usr/lib/systemd/system/trellis-server.service": "-rw-r--r--",
		"./usr/lib/systemd/system/trellis-proxy@.service": "-rw-r--r--",
		"./etc/trellis/server.env":                        "-rw-r--r--",
		"./etc/trellis/proxy/example.yaml":                "-rw-r--r--",
		"./usr/share/doc/trellis/copyright":               "-rw-r--r--",
		"./usr/share/doc/trellis/THIRD_PARTY_NOTICES":     "-rw-r--r--",
	}
	for _, line := range strings.Split(strings.TrimSpace(dpkgDeb(t, "--contents", deb)), "\n") {
		f := strings.Fields(line) // mode owner size date time name
		if len(f) != 6 {
			t.Errorf("dpkg-deb --contents line %q", line)
			continue
		}
		if f[1] != "root/root" || f[3] != "2026-01-02" {
			t.Errorf("%s: owner %s, date %s; want root/root, 2026-01-02", f[5], f[1], f[3])
		}
		if m, ok := want[f[5]]; ok {
			if f[0] != m {
				t.Errorf("%s: mode %s, want %s", f[5], f[0], m)
			}
			delete(want, f[5])
		}
	}
	for name := range want {
		t.Errorf("%s not in the package", name)
	}

	// The units, as the package has them, against the binary in it.
	fs := t.TempDir()
	if out, err := exec.Command("dpkg-deb", "-x", deb, fs).CombinedOutput(); err != nil {
		t.Fatalf("dpkg-deb -x: %v: %s", err, out)
	}
	bin := filepath.Join(fs, "usr/bin/trellis")
	if out, err := exec.Command(bin, "version").CombinedOutput(); err != nil || !strings.HasPrefix(string(out), "trellis "+testVersion) {
		t.Errorf("trellis version: %v: %q, want trellis %s ...", err, out, testVersion)
	}
	units := filepath.Join(fs, "usr/lib/systemd/system")
	checkUnitFlags(t, bin, filepath.Join(units, "trellis-server.service"), "server")
	checkUnitFlags(t, bin, filepath.Join(units, "trellis-proxy@.service"), "proxy")
	verifyUnits(t, units, bin)

	install(t, deb)
}

// checkUnitFlags fails for every --flag of the unit's ExecStart that
// trellis CMD -h does not list.
func checkUnitFlags(t *testing.T, bin, unit, cmd string) {
	t.Helper()
	b, err := os.ReadFile(unit)
	if err != nil {
		t.Fatal(err)
	}
	m := regexp.MustCompile(`(?m)^ExecStart=/usr/bin/trellis (\S+)(.*)$`).FindStringSubmatch(string(b))
	if m == nil || m[1] != cmd {
		t.Fatalf("%s: no ExecStart=/usr/bin/trellis %s ...", unit, cmd)
	}
	help, _ := exec.Command(bin, cmd, "-h").CombinedOutput()
	flags := map[string]bool{}
	for _, f := range regexp.MustCompile(`(?m)^\s+-([a-z0-9-]+)`).FindAllStringSubmatch(string(help), -1) {
		flags[f[1]] = true
	}
	n := 0
	for _, a := range strings.Fields(m[2]) {
		if name, ok := strings.CutPrefix(a, "--"); ok {
			n++
			if !flags[name] {
				t.Errorf("%s: trellis %s has no flag --%s", filepath.Base(unit), cmd, name)
			}
		}
	}
	if n == 0 {
		t.Errorf("%s: ExecStart gives no flags", unit)
	}
}

// verifyUnits runs systemd-analyze verify on the units in dir, with
// /usr/bin/trellis rewritten to bin (it checks that the binary exists),
// and on the proxy template as an instance.
func verifyUnits(t *testing.T, dir, bin string) {
	t.Helper()
	if _, err := exec.LookPath("systemd-analyze"); err != nil {
		t.Log("systemd-analyze not installed: the units are not verified here")
		return
	}
	for src, dst := range map[string]string{"trellis-server.service": "trellis-server.service", "trellis-proxy@.service": "trellis-proxy@example.service"} {
		b, err := os.ReadFile(filepath.Join(dir, src))
		if err != nil {
			t.Fatal(err)
		}
		// A directory each: verify reads the other units beside one.
		p := filepath.Join(t.TempDir(), dst)
		if err := os.WriteFile(p, bytes.ReplaceAll(b, []byte("/usr/bin/trellis"), []byte(bin)), 0o644); err != nil {
			t.Fatal(err)
		}
		if out, err := exec.Command("systemd-analyze", "verify", p).CombinedOutput(); err != nil || len(bytes.TrimSpace(out)) > 0 {
			t.Errorf("systemd-analyze verify %s: %v: %s", dst, err, out)
		}
	}
}

// install dpkg -i's the package into this system, checks what it put
// there, then removes (conffiles stay) and purges it (they go). Only as
// root with dpkg, and only where no trellis package is installed: CI's
// throwaway machine.
func install(t *testing.T, deb string) {
	if os.Geteuid() != 0 {
		t.Skip("not root: the package is not installed (CI installs it)")
	}
	if _, err := exec.LookPath("dpkg"); err != nil {
		t.Skip("dpkg not installed: the package is not installed")
	}
	if exec.Command("dpkg-query", "-W", "trellis").Run() == nil {
		t.Skip("a trellis package is installed already: not replacing it")
	}
	userExisted := exec.Command("getent", "passwd", "trellis").Run() == nil
	t.Cleanup(func() {
		exec.Command("dpkg", "--purge", "trellis").Run()
		if !userExisted {
			exec.Command("userdel", "trellis").Run()
		}
	})
	run := func(name string, args ...string) string {
		t.Helper()
		out, err := exec.Command(name, args...).CombinedOutput()
		if err != nil {
			t.Fatalf("%s %s: %v: %s", name, strings.Join(args, " "), err, out)
		}
		return string(out)
	}
	run("dpkg", "-i", deb)

	if out := run("/usr/bin/trellis", "version"); !strings.HasPrefix(out, "trellis "+testVersion) {
		t.Errorf("installed trellis version: %q, want trellis %s ...", out, testVersion)
	}
	// postinst made the service's system user, with no login.
	pw := strings.Split(strings.TrimSpace(run("getent", "passwd", "trellis")), ":")
	if len(pw) != 7 || pw[5] != "/var/lib/trellis" || !strings.HasSuffix(pw[6], "nologin") {
		t.Errorf("user trellis: %q, want home /var/lib/trellis and no login shell", pw)
	}
	if got := run("dpkg-query", "-W", "-f=${Conffiles}", "trellis"); !strings.Contains(got, "/etc/trellis/server.env") || !strings.Contains(got, "/etc/trellis/proxy/example.yaml") {
		t.Errorf("installed conffiles: %q", got)
	}
	verifyUnits(t, UnitDir, "/usr/bin/trellis")

	run("dpkg", "-r", "trellis")
	if _, err := os.Stat("/usr/bin/trellis"); !os.IsNotExist(err) {
		t.Errorf("after dpkg -r, /usr/bin/trellis: %v, want gone", err)
	}
	if _, err := os.Stat(UnitDir + "/trellis-server.service"); !os.IsNotExist(err) {
		t.Errorf("after dpkg -r, the server unit: %v, want gone", err)
	}
	if _, err := os.Stat("/etc/trellis/server.env"); err != nil {
		t.Errorf("after dpkg -r, /etc/trellis/server.env: %v, want kept (a conffile)", err)
	}
	run("dpkg", "--purge", "trellis")
	if _, err := os.Stat("/etc/trellis/server.env"); !os.IsNotExist(err) {
		t.Errorf("after dpkg --purge, /etc/trellis/server.env: %v, want gone", err)
	}
}

func dpkgDeb(t *testing.T, args ...string) string {
	t.Helper()
	out, err := exec.Command("dpkg-deb", args...).Output()
	if err != nil {
		t.Fatalf("dpkg-deb %s: %v", strings.Join(args, " "), err)
	}
	return string(out)
}
