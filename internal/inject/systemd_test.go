package inject

import (
	"bytes"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"gopkg.in/yaml.v3"
)

// hostPlan is hello-web (or another pipeline manifest) with the host
// settings the host output needs, mesh DNS on or off.
func hostPlan(t *testing.T, manifest string, dns bool) *Plan {
	t.Helper()
	plan, ds := load(t, pipeline+manifest+".yaml", pipeline+"policy.yaml", "3f9c2a1b", "")
	if ds != nil {
		t.Fatalf("diagnostics:\n%v", ds)
	}
	plan.Policy.Host.BinaryURL = "https://downloads.example.com/trellis/0.5.0/trellis-linux-amd64"
	plan.Policy.Host.BinarySHA256 = strings.Repeat("4c1f8b0e", 8)
	plan.Policy.Host.CAPEM = "-----BEGIN CERTIFICATE-----\nMIIBexample\n-----END CERTIFICATE-----\n"
	plan.Policy.DNS.Enabled = dns
	return plan
}

func hostFiles(t *testing.T, plan *Plan) HostFiles {
	t.Helper()
	fs, err := plan.Host()
	if err != nil {
		t.Fatal(err)
	}
	return fs
}

func (fs HostFiles) file(t *testing.T, name string) HostFile {
	t.Helper()
	for _, f := range fs {
		if f.Name == name {
			return f
		}
	}
	t.Fatalf("no file %s in the host output", name)
	return HostFile{}
}

func TestGoldenHost(t *testing.T) {
	for _, tc := range []struct {
		manifest string
		dns      bool
		golden   string
	}{
		{"hello-web", true, "hello-web-dns.host.txt"},
		{"hello-backend", false, "hello-backend.host.txt"},
	} {
		t.Run(tc.golden, func(t *testing.T) {
			got := hostFiles(t, hostPlan(t, tc.manifest, tc.dns)).Listing()
			path := filepath.Join("testdata", tc.golden)
			if *update {
				if err := os.WriteFile(path, got, 0o644); err != nil {
					t.Fatal(err)
				}
				return
			}
			want, err := os.ReadFile(path)
			if err != nil {
				t.Fatalf("%v (run go test -update)", err)
			}
			if !bytes.Equal(got, want) {
				t.Errorf("%s differs from the golden file; got:\n%s", tc.golden, got)
			}
		})
	}
}

// The unit's command lines, on their structure: the proxy with everything
// the manifest and policy say, the rules installed by a privileged
// pre-step and removed after stop, DNS only when the policy turns it on.
func TestHostUnitCommands(t *testing.T) {
	for _, dns := range []bool{false, true} {
		unit := hostFiles(t, hostPlan(t, "hello-web", dns)).file(t, HostUnitName).Content
		lines := map[string][]string{}
		for _, l := range strings.Split(unit, "\n") {
			if k, v, ok := strings.Cut(l, "="); ok && !strings.HasPrefix(k, "#") {
				lines[k] = append(lines[k], v)
			}
		}
		one := func(key string) string {
			t.Helper()
			if len(lines[key]) != 1 {
				t.Fatalf("dns %v: %s= appears %d times, want once:\n%s", dns, key, len(lines[key]), unit)
			}
			return lines[key][0]
		}
		start := one("ExecStart")
		for _, want := range []string{
			"/usr/local/bin/trellis proxy --service hello-web --version 3f9c2a1b --app-port 8080 ",
			" --health-path /health ", " --upstream hello-backend:15100 ",
			" --ingress-port 15006 --egress-port 15001 ", " --network default ",
			" --state-dir /var/lib/trellis-proxy ", " --token-file /etc/trellis/token",
		} {
			if !strings.Contains(start+" ", want) {
				t.Errorf("dns %v: ExecStart lacks %q: %s", dns, want, start)
			}
		}
		pre := one("ExecStartPre")
		if !strings.HasPrefix(pre, "!/usr/local/bin/trellis redirect --proxy-uid 1337 --app-port 8080 --ingress-port 15006 --egress-port 15001") {
			t.Errorf("dns %v: ExecStartPre is %q, want the privileged redirect", dns, pre)
		}
		if got := one("ExecStopPost"); got != "!/usr/local/bin/trellis redirect --remove" {
			t.Errorf("dns %v: ExecStopPost is %q, want the rules removed", dns, got)
		}
		if dns != strings.Contains(start, "--dns-listen 127.0.0.1:15053") || dns != strings.HasSuffix(pre, " --dns-port 15053") {
			t.Errorf("dns %v: ExecStart %q, ExecStartPre %q: the DNS listener and rule must follow the policy", dns, start, pre)
		}
		if one("User") != "trellis-proxy" || one("NoNewPrivileges") != "yes" || one("AmbientCapabilities") != "" {
			t.Errorf("dns %v: the proxy must run as trellis-proxy with no privileges:\n%s", dns, unit)
		}
		if strings.Contains(strings.ToLower(unit), "token=") || strings.Contains(unit, "TRELLIS_TOKEN") {
			t.Errorf("dns %v: the unit carries a token:\n%s", dns, unit)
		}
	}
}

func TestHostNeedsHostPolicy(t *testing.T) {
	plan, ds := load(t, pipeline+"hello-web.yaml", pipeline+"policy.yaml", "3f9c2a1b", "")
	if ds != nil {
		t.Fatal(ds)
	}
	_, err := plan.Host()
	if err == nil {
		t.Fatal("host output without spec.host made, want an error")
	}
	for _, want := range []string{"spec.host.binaryURL: missing", "spec.host.binarySHA256: missing", "spec.host.caPEM: missing"} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("error %q lacks %q", err, want)
		}
	}
}

// systemd's own parser on the unit: any warning (an unknown key, a value
// it cannot parse) fails the test, not only a refusal.
func TestHostUnitVerifies(t *testing.T) {
	analyze, err := exec.LookPath("systemd-analyze")
	if err != nil {
		t.Skip("systemd-analyze is not installed (Debian: apt-get install systemd); the unit is not checked by systemd")
	}
	for _, dns := range []bool{false, true} {
		unit := hostFiles(t, hostPlan(t, "hello-web", dns)).file(t, HostUnitName).Content
		// verify checks that the commands exist: run ours from where this
		// test binary is.
		exe, err := os.Executable()
		if err != nil {
			t.Fatal(err)
		}
		unit = strings.ReplaceAll(unit, HostBinary, exe)
		path := filepath.Join(t.TempDir(), HostUnitName)
		if err := os.WriteFile(path, []byte(unit), 0o644); err != nil {
			t.Fatal(err)
		}
		out, err := exec.Command(analyze, "verify", "--man=no", path).CombinedOutput()
		if err != nil || len(bytes.TrimSpace(out)) > 0 {
			t.Errorf("dns %v: systemd-analyze verify: %v\n%s\nunit:\n%s", dns, err, out, unit)
		}
	}
}

// The user-data is cloud-config YAML; the token file it makes is 0600 and
// the proxy's, made before the token is written into it, and the token is
// fetched with the instance's role, never carried in the user-data.
func TestHostUserData(t *testing.T) {
	plan := hostPlan(t, "hello-web", true)
	fs := hostFiles(t, plan)
	ud := fs.file(t, HostUserData)
	if ud.Mode != 0o600 {
		t.Errorf("user-data mode %04o, want 0600", ud.Mode)
	}
	if !strings.HasPrefix(ud.Content, "#cloud-config\n") {
		t.Fatalf("user-data does not start with #cloud-config:\n%s", ud.Content)
	}
	var cc CloudConfig
	dec := yaml.NewDecoder(strings.NewReader(ud.Content))
	dec.KnownFields(true)
	if err := dec.Decode(&cc); err != nil {
		t.Fatalf("user-data is not the cloud-config we write: %v\n%s", err, ud.Content)
	}
	files := map[string]CloudWriteFile{}
	for _, f := range cc.WriteFiles {
		files[f.Path] = f
	}
	tok, ok := files[HostTokenFile]
	if !ok {
		t.Fatalf("no write_files entry for %s", HostTokenFile)
	}
	if tok.Permissions != "0600" || tok.Owner != "trellis-proxy:trellis-proxy" || !tok.Defer || tok.Content != "" {
		t.Errorf("token file %+v: want empty, 0600, owned by trellis-proxy, written once the user exists (defer)", tok)
	}
	if got := files[HostUnitDir+"/"+HostUnitName].Content; got != fs.file(t, HostUnitName).Content {
		t.Errorf("user-data installs another unit than the output's:\n%s", got)
	}
	if got := files[HostEnvFile].Content; got != fs.file(t, "trellis-proxy.env").Content {
		t.Errorf("user-data installs another environment file than the output's:\n%s", got)
	}
	if got := files["/etc/trellis/ca.pem"].Content; got != plan.Policy.Host.CAPEM {
		t.Errorf("CA file content %q", got)
	}
	var user *CloudUser
	for _, u := range cc.Users {
		if m, ok := u.(map[string]any); ok && m["name"] == "trellis-proxy" {
			user = &CloudUser{Name: "trellis-proxy", UID: m["uid"].(int), System: m["system"] == true}
		}
	}
	if user == nil || user.UID != 1337 || !user.System {
		t.Errorf("users %v: want a system user trellis-proxy with the sidecar's UID 1337", cc.Users)
	}
	var fetch, binary string
	for _, c := range cc.RunCmd {
		line := strings.Join(c, " ")
		if strings.Contains(line, HostTokenFile) {
			fetch = line
		}
		if strings.Contains(line, "sha256sum -c") {
			binary = line
		}
	}
	if !strings.HasSuffix(fetch, "aws secretsmanager get-secret-value --secret-id arn:aws:secretsmanager:eu-west-1:123456789012:secret:trellis/hello-web --query SecretString --output text > /etc/trellis/token") {
		t.Errorf("token fetched by %q, want the service's secret written into the prepared file", fetch)
	}
	if !strings.Contains(binary, plan.Policy.Host.BinarySHA256) || !strings.Contains(binary, "--proto =https") {
		t.Errorf("binary installed by %q, want https and its SHA-256 checked", binary)
	}
	if last := cc.RunCmd[len(cc.RunCmd)-1]; strings.Join(last, " ") != "systemctl enable --now trellis-proxy.service" {
		t.Errorf("last command %q, want the service enabled and started", last)
	}
}

func TestHostWriteDir(t *testing.T) {
	fs := hostFiles(t, hostPlan(t, "hello-web", false))
	dir := filepath.Join(t.TempDir(), "out")
	if err := fs.WriteDir(dir); err != nil {
		t.Fatal(err)
	}
	for _, f := range fs {
		st, err := os.Stat(filepath.Join(dir, f.Name))
		if err != nil {
			t.Fatal(err)
		}
		if st.Mode().Perm() != f.Mode {
			t.Errorf("%s: mode %04o, want %04o", f.Name, st.Mode().Perm(), f.Mode)
		}
		b, _ := os.ReadFile(filepath.Join(dir, f.Name))
		if string(b) != f.Content {
			t.Errorf("%s: content differs", f.Name)
		}
	}
}

// Words with characters a shell or systemd would read are quoted and
// escaped.
func TestSystemdJoin(t *testing.T) {
	got := systemdJoin([]string{"/bin/trellis", "--health-path", "/a b%20$x", "it's"})
	want := `/bin/trellis --health-path '/a b%%20$$x' 'it'\\''s'`
	if got != want {
		t.Errorf("got  %s\nwant %s", got, want)
	}
}
