package trellistest

import (
	"encoding/hex"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"strings"
)

// Listeners are the sockets a process listens on, as another local process
// would find them.
type Listeners struct {
	// TCP are "host:port" addresses, IPv4 and IPv6.
	TCP []string
	// Unix are socket paths; abstract ones start with "@".
	Unix []string
}

// ListenersOf returns the listening sockets that process pid holds, found as
// ss does: the socket inodes among its open files, looked up in the kernel's
// socket tables. Linux only.
func ListenersOf(pid int) (Listeners, error) {
	proc := filepath.Join("/proc", strconv.Itoa(pid))
	fds, err := os.ReadDir(filepath.Join(proc, "fd"))
	if err != nil {
		return Listeners{}, fmt.Errorf("open files of %d: %w", pid, err)
	}
	inodes := map[string]bool{}
	for _, fd := range fds {
		link, err := os.Readlink(filepath.Join(proc, "fd", fd.Name()))
		if err != nil {
			continue // closed meanwhile
		}
		if ino, ok := strings.CutPrefix(link, "socket:["); ok {
			inodes[strings.TrimSuffix(ino, "]")] = true
		}
	}
	var l Listeners
	for _, table := range []string{"tcp", "tcp6"} {
		b, err := os.ReadFile(filepath.Join(proc, "net", table))
		if err != nil {
			return Listeners{}, err
		}
		for _, line := range strings.Split(string(b), "\n")[1:] {
			f := strings.Fields(line)
			// sl local_address rem_address st ... inode is the 10th field.
			if len(f) < 10 || f[3] != "0A" || !inodes[f[9]] {
				continue
			}
			addr, err := procTCPAddr(f[1])
			if err != nil {
				return Listeners{}, fmt.Errorf("%s: %w", table, err)
			}
			l.TCP = append(l.TCP, addr)
		}
	}
	b, err := os.ReadFile(filepath.Join(proc, "net", "unix"))
	if err != nil {
		return Listeners{}, err
	}
	for _, line := range strings.Split(string(b), "\n")[1:] {
		// Num RefCount Protocol Flags Type St Inode Path; a listening
		// socket has __SO_ACCEPTCON (0x10000) in Flags.
		f := strings.Fields(line)
		if len(f) < 8 || !inodes[f[6]] {
			continue
		}
		flags, err := strconv.ParseUint(f[3], 16, 32)
		if err != nil || flags&0x10000 == 0 {
			continue
		}
		l.Unix = append(l.Unix, f[7])
	}
	return l, nil
}

// procTCPAddr decodes /proc/net/tcp's "0100007F:1F90": the address is in
// the kernel's byte order, 32 bits at a time; the port is big-endian hex.
func procTCPAddr(s string) (string, error) {
	h, p, ok := strings.Cut(s, ":")
	if !ok {
		return "", fmt.Errorf("address %q: no port", s)
	}
	raw, err := hex.DecodeString(h)
	if err != nil || len(raw) != 4 && len(raw) != 16 {
		return "", fmt.Errorf("address %q: bad host", s)
	}
	ip := make(net.IP, len(raw))
	for i := 0; i < len(raw); i += 4 {
		ip[i], ip[i+1], ip[i+2], ip[i+3] = raw[i+3], raw[i+2], raw[i+1], raw[i]
	}
	port, err := strconv.ParseUint(p, 16, 16)
	if err != nil {
		return "", fmt.Errorf("address %q: bad port", s)
	}
	return net.JoinHostPort(ip.String(), strconv.Itoa(int(port))), nil
}
