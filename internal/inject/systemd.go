package inject

import (
	"bytes"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"

	"gopkg.in/yaml.v3"
)

// The plain-host output (trellis inject systemd): a VM joins the mesh the
// way a task does. The sidecar runs as a systemd service under its own
// user; before it starts, a privileged pre-step installs the redirect
// rules of transparent mode (and the DNS rule with mesh DNS), which the
// service removes when it stops; cloud-init user-data installs the
// binary, the unit, the environment file, the CA and the token.

// Paths on the host.
const (
	HostBinary   = "/usr/local/bin/trellis"
	HostUnitDir  = "/etc/systemd/system"
	HostConfDir  = "/etc/trellis"
	HostUnitName = SidecarName + ".service"
	HostEnvFile  = HostConfDir + "/" + SidecarName + ".env"
	// HostTokenFile holds the service token: 0600, owned by the proxy's
	// user, never on a command line or in the unit.
	HostTokenFile = HostConfDir + "/token"
	// HostStateDir is systemd's StateDirectory= of the unit.
	HostStateDir = "/var/lib/" + SidecarName
	// HostUserData is the cloud-init user-data file of the output.
	HostUserData = "user-data.yaml"
)

// HostFile is one file of the host output: its name in the output, where
// it goes on the host, its mode there and its content.
type HostFile struct {
	Name    string
	Path    string // on the host; "" for user-data, which the cloud reads
	Mode    os.FileMode
	Content string
}

// HostFiles are the files of the host output, in a fixed order.
type HostFiles []HostFile

// Host builds the host output. It needs the policy's host.binaryURL,
// host.binarySHA256 and host.caPEM, which no other output does.
func (p *Plan) Host() (HostFiles, error) {
	h := p.Policy.Host
	var errs []error
	for _, f := range []struct{ field, v, what string }{
		{"spec.host.binaryURL", h.BinaryURL, "the https URL user-data downloads the trellis binary from"},
		{"spec.host.binarySHA256", h.BinarySHA256, "the binary's SHA-256, which user-data checks"},
		{"spec.host.caPEM", h.CAPEM, "the mesh's root certificates (trellis ca roots), written to " + p.Policy.ControlPlane.CAFile},
	} {
		if f.v == "" {
			errs = append(errs, fmt.Errorf("policy %s: missing: the host output needs %s", f.field, f.what))
		}
	}
	if err := errors.Join(errs...); err != nil {
		return nil, err
	}
	unit := p.hostUnit()
	env := p.hostEnv()
	ud, err := p.userData(unit, env)
	if err != nil {
		return nil, err
	}
	return HostFiles{
		{Name: HostUnitName, Path: HostUnitDir + "/" + HostUnitName, Mode: 0o644, Content: unit},
		{Name: filepath.Base(HostEnvFile), Path: HostEnvFile, Mode: 0o644, Content: env},
		{Name: HostUserData, Mode: 0o600, Content: ud},
	}, nil
}

// hostWorkload is the app on a host: transparent, as on ECS with
// proxyConfiguration, since the unit installs the redirect rules.
func (p *Plan) hostWorkload() workload {
	w := p.workload()
	w.Transparent = true
	if p.Policy.DNS.Enabled {
		w.DNSListen, w.DNSUpstream = p.Policy.redirectedDNS(), p.Policy.DNS.Upstream
	}
	return w
}

// hostProxyArgs is the proxy's command line on a host.
func (p *Plan) hostProxyArgs() []string {
	pol := p.Policy
	args := proxyArgs(pol, p.hostWorkload())
	return append(args,
		"--network", pol.Host.Network,
		"--state-dir", HostStateDir,
		"--token-file", HostTokenFile,
	)
}

// hostRedirectArgs installs the rules of transparent mode, and with mesh
// DNS the rule that sends the app's queries to the proxy.
func (p *Plan) hostRedirectArgs() []string {
	sc := p.Policy.Sidecar
	args := []string{"redirect",
		"--proxy-uid", strconv.Itoa(sc.UID),
		"--app-port", strconv.Itoa(p.App.Port),
		"--ingress-port", strconv.Itoa(sc.IngressPort),
		"--egress-port", strconv.Itoa(sc.EgressPort),
	}
	if p.Policy.DNS.Enabled {
		args = append(args, "--dns-port", strconv.Itoa(p.Policy.DNS.Port))
	}
	return args
}

// hostUnit is the sidecar's systemd unit.
//
// The proxy runs as its own user with no capabilities at all: its ports
// are unprivileged. The redirect pre-step and the removal post-step carry
// the "!" prefix: they run as root, but inside the same sandbox, so the
// capability bounding set (CAP_NET_ADMIN and CAP_NET_RAW, what iptables
// needs) is all root has there too; the proxy, not root and with no
// ambient capabilities, has none of them.
func (p *Plan) hostUnit() string {
	var b strings.Builder
	line := func(format string, args ...any) { fmt.Fprintf(&b, format+"\n", args...) }
	line("# The Trellis sidecar of %s (version %s) on a plain host: made by trellis inject systemd.", p.Service, p.Version)
	line("[Unit]")
	line("Description=Trellis sidecar proxy of %s %s", p.Service, p.Version)
	line("Wants=network-online.target")
	line("After=network-online.target")
	line("")
	line("[Service]")
	line("Type=exec")
	line("User=%s", p.Policy.Host.User)
	line("Group=%s", p.Policy.Host.User)
	line("EnvironmentFile=%s", HostEnvFile)
	line("# The redirect rules of transparent mode, as ECS installs them for a task;")
	line("# removed again however the proxy stops.")
	line("ExecStartPre=!%s", systemdJoin(append([]string{HostBinary}, p.hostRedirectArgs()...)))
	line("ExecStart=%s", systemdJoin(append([]string{HostBinary}, p.hostProxyArgs()...)))
	line("ExecStopPost=!%s redirect --remove", HostBinary)
	line("Restart=on-failure")
	line("RestartSec=2s")
	line("# Shutdown drains connections for up to 15 s.")
	line("TimeoutStopSec=30s")
	line("StateDirectory=%s", filepath.Base(HostStateDir))
	line("StateDirectoryMode=0700")
	line("UMask=0077")
	line("LimitNOFILE=65536")
	line("")
	line("# Hardening. Only the \"!\" steps (root) use the bounding set.")
	line("CapabilityBoundingSet=CAP_NET_ADMIN CAP_NET_RAW")
	line("AmbientCapabilities=")
	line("NoNewPrivileges=yes")
	line("ProtectSystem=strict")
	line("# iptables-legacy takes this lock; iptables-nft needs none.")
	line("ReadWritePaths=-/run/xtables.lock")
	line("ProtectHome=yes")
	line("PrivateTmp=yes")
	line("PrivateDevices=yes")
	line("ProtectKernelTunables=yes")
	line("ProtectKernelModules=yes")
	line("ProtectKernelLogs=yes")
	line("ProtectControlGroups=yes")
	line("ProtectClock=yes")
	line("ProtectHostname=yes")
	line("ProtectProc=invisible")
	line("RestrictAddressFamilies=AF_UNIX AF_INET AF_INET6 AF_NETLINK")
	line("RestrictNamespaces=yes")
	line("RestrictRealtime=yes")
	line("RestrictSUIDSGID=yes")
	line("LockPersonality=yes")
	line("MemoryDenyWriteExecute=yes")
	line("SystemCallArchitectures=native")
	line("SystemCallFilter=@system-service")
	line("SystemCallErrorNumber=EPERM")
	line("")
	line("[Install]")
	line("WantedBy=multi-user.target")
	return b.String()
}

// hostEnv is the proxy's environment file; the token is not in it.
func (p *Plan) hostEnv() string {
	var b strings.Builder
	fmt.Fprintf(&b, "# The Trellis sidecar's environment (%s). The token is in %s.\n", p.Name, HostTokenFile)
	for _, kv := range p.sidecarEnv() {
		fmt.Fprintf(&b, "%s=%s\n", kv.Name, kv.Value)
	}
	return b.String()
}

// CloudConfig is the part of cloud-init's cloud-config the host output
// uses.
type CloudConfig struct {
	Users      []any            `yaml:"users"`
	WriteFiles []CloudWriteFile `yaml:"write_files"`
	RunCmd     [][]string       `yaml:"runcmd"`
}

// CloudUser is a user cloud-init makes.
type CloudUser struct {
	Name         string `yaml:"name"`
	UID          int    `yaml:"uid"`
	System       bool   `yaml:"system"`
	Shell        string `yaml:"shell"`
	NoCreateHome bool   `yaml:"no_create_home"`
	LockPasswd   bool   `yaml:"lock_passwd"`
}

// CloudWriteFile is a file cloud-init writes.
type CloudWriteFile struct {
	Path        string `yaml:"path"`
	Permissions string `yaml:"permissions"`
	Owner       string `yaml:"owner"`
	Content     string `yaml:"content"`
	// Defer writes the file in the final stage, once the users exist.
	Defer bool `yaml:"defer,omitempty"`
}

// userData is the cloud-init user-data that installs everything. The
// token never passes through it (user-data is readable by anyone on the
// host who reaches the instance metadata service): an empty file of mode
// 0600 owned by the proxy's user is made first, then filled from the
// policy's token secret with the instance's role, so it is never readable
// by anyone else.
func (p *Plan) userData(unit, env string) (string, error) {
	pol := p.Policy
	h := pol.Host
	owner := h.User + ":" + h.User
	secret := expand(pol.ControlPlane.TokenSecret, p.Service, p.Version)
	fetch := []string{"aws", "secretsmanager", "get-secret-value", "--secret-id", secret, "--query", "SecretString", "--output", "text"}
	if strings.HasPrefix(secret, "arn:aws:ssm:") {
		_, name, _ := strings.Cut(secret, ":parameter")
		fetch = []string{"aws", "ssm", "get-parameter", "--with-decryption", "--name", name, "--query", "Parameter.Value", "--output", "text"}
	}
	tmp := HostBinary + ".new"
	cc := CloudConfig{
		Users: []any{"default", CloudUser{Name: h.User, UID: pol.Sidecar.UID, System: true, Shell: "/usr/sbin/nologin", NoCreateHome: true, LockPasswd: true}},
		WriteFiles: []CloudWriteFile{
			{Path: HostUnitDir + "/" + HostUnitName, Permissions: "0644", Owner: "root:root", Content: unit},
			{Path: HostEnvFile, Permissions: "0644", Owner: "root:root", Content: env},
			{Path: pol.ControlPlane.CAFile, Permissions: "0644", Owner: "root:root", Content: ensureNewline(h.CAPEM)},
			{Path: HostTokenFile, Permissions: "0600", Owner: owner, Content: "", Defer: true},
		},
		RunCmd: [][]string{
			{"sh", "-ec", fmt.Sprintf("curl -fsSL --proto =https -o %[1]s %[2]s && echo '%[3]s  %[1]s' | sha256sum -c - && chmod 0755 %[1]s && mv %[1]s %[4]s",
				tmp, shellQuote(h.BinaryURL), h.BinarySHA256, HostBinary)},
			// The redirect replaces the file's content, keeping its mode
			// and owner.
			{"sh", "-ec", shellJoin(fetch) + " > " + HostTokenFile},
			{"systemctl", "daemon-reload"},
			{"systemctl", "enable", "--now", HostUnitName},
		},
	}
	var b bytes.Buffer
	fmt.Fprintf(&b, "#cloud-config\n# %s joins the Trellis mesh on this host: made by trellis inject systemd.\n", p.Name)
	fmt.Fprintf(&b, "# Needs curl and the AWS CLI, and an instance role that may read %s.\n", secret)
	enc := yaml.NewEncoder(&b)
	enc.SetIndent(2)
	if err := enc.Encode(cc); err != nil {
		return "", err
	}
	if err := enc.Close(); err != nil {
		return "", err
	}
	return b.String(), nil
}

func ensureNewline(s string) string {
	if s != "" && !strings.HasSuffix(s, "\n") {
		return s + "\n"
	}
	return s
}

// shellJoin quotes the words where a shell (or systemd, whose quoting is
// the same for these) would split or expand them.
func shellJoin(words []string) string {
	q := make([]string, len(words))
	for i, w := range words {
		q[i] = shellQuote(w)
	}
	return strings.Join(q, " ")
}

// systemdJoin is shellJoin for a unit's command lines, where % starts a
// specifier, $ a variable and \ an escape, even within quotes.
func systemdJoin(words []string) string {
	return strings.NewReplacer(`\`, `\\`, "%", "%%", "$", "$$").Replace(shellJoin(words))
}

func shellQuote(s string) string {
	if s != "" && !strings.ContainsFunc(s, func(r rune) bool {
		return !(r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' || r >= '0' && r <= '9' || strings.ContainsRune("-_./:=,@+", r))
	}) {
		return s
	}
	return "'" + strings.ReplaceAll(s, "'", `'\''`) + "'"
}

// Listing is the files one after another, each under a header line naming
// it, where it goes and its mode: the output on stdout.
func (fs HostFiles) Listing() []byte {
	var b bytes.Buffer
	for i, f := range fs {
		if i > 0 {
			b.WriteString("\n")
		}
		where := "user-data for cloud-init"
		if f.Path != "" {
			where = f.Path
		}
		fmt.Fprintf(&b, "==> %s (%s, mode %04o) <==\n", f.Name, where, f.Mode)
		b.WriteString(f.Content)
	}
	return b.Bytes()
}

// WriteDir writes the files into dir (made if missing), each whole or not
// at all, with its mode.
func (fs HostFiles) WriteDir(dir string) error {
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return err
	}
	for _, f := range fs {
		if err := writeFileAtomic(filepath.Join(dir, f.Name), []byte(f.Content), f.Mode); err != nil {
			return err
		}
	}
	return nil
}

func writeFileAtomic(path string, b []byte, mode os.FileMode) error {
	tmp, err := os.CreateTemp(filepath.Dir(path), ".trellis-inject-*")
	if err != nil {
		return err
	}
	defer os.Remove(tmp.Name())
	if _, err := tmp.Write(b); err != nil {
		tmp.Close()
		return fmt.Errorf("write %s: %w", path, err)
	}
	if err := tmp.Chmod(mode); err != nil {
		tmp.Close()
		return err
	}
	if err := tmp.Close(); err != nil {
		return err
	}
	return os.Rename(tmp.Name(), path)
}
