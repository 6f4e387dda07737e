package up

import (
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"

	v1 "github.com/trellis-mesh/trellis/api/v1"
)

// markerFile marks a directory as a data dir of trellis up; it holds the
// example directory's path. --fresh removes only directories that have
// it.
const markerFile = "up.dir"

// DataDirFor is the default data dir of the example in dir (an absolute
// path): home/up/<base name>-<hash of the path>. Each example keeps its
// own store, CA and tokens, so one example's services and tokens never
// show up in another's.
func DataDirFor(home, dir string) string {
	sum := sha256.Sum256([]byte(dir))
	base := strings.Map(func(r rune) rune {
		if r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' || r >= '0' && r <= '9' || r == '-' || r == '_' || r == '.' {
			return r
		}
		return '_'
	}, filepath.Base(dir))
	return filepath.Join(home, "up", base+"-"+hex.EncodeToString(sum[:4]))
}

// prepareDataDir makes dataDir for the example in dir (removing it first
// if fresh) and reports whether it made it.
func prepareDataDir(dataDir, dir string, fresh bool) (created bool, err error) {
	_, statErr := os.Stat(dataDir)
	exists := statErr == nil
	if fresh && exists {
		if _, err := os.Stat(filepath.Join(dataDir, markerFile)); err != nil {
			if empty, _ := isEmpty(dataDir); !empty {
				return false, fmt.Errorf("--fresh: %s is not a data dir of trellis up (no %s); remove it yourself if it should go", dataDir, markerFile)
			}
		}
		if err := os.RemoveAll(dataDir); err != nil {
			return false, fmt.Errorf("--fresh: %w", err)
		}
		exists = false
	}
	if err := os.MkdirAll(dataDir, 0o700); err != nil {
		return false, err
	}
	if err := os.WriteFile(filepath.Join(dataDir, markerFile), []byte(dir+"\n"), 0o600); err != nil {
		return false, err
	}
	return !exists, nil
}

func isEmpty(dir string) (bool, error) {
	ents, err := os.ReadDir(dir)
	return len(ents) == 0, err
}

// checkPorts fails, naming the port and what the file wants it for, when
// one of the fixed ports the example needs is taken: before anything is
// created or started. api is the API's address, "" when the control plane
// already holds it (a reload).
func checkPorts(f *File, api string) error {
	type want struct{ addr, what string }
	var wants []want
	if api != "" {
		wants = append(wants, want{api, "the API"})
	}
	for _, s := range f.Services {
		for r := 0; r < max(1, s.Replicas); r++ {
			inst := fmt.Sprintf("%s replica %d", s.Name, r+1)
			wants = append(wants, want{"127.0.0.1:" + strconv.Itoa(s.Port+r), inst + "'s app"})
			if s.Edge != nil {
				wants = append(wants, want{"127.0.0.1:" + strconv.Itoa(s.Edge.Port+r), inst + "'s edge listener"})
			}
		}
		for _, u := range s.Upstreams {
			if u.Port != 0 {
				wants = append(wants, want{"127.0.0.1:" + strconv.Itoa(u.Port), s.Name + "'s upstream " + u.Service})
			}
		}
	}
	if f.Client != nil {
		for _, u := range f.Client.Upstreams {
			wants = append(wants, want{"127.0.0.1:" + strconv.Itoa(u.Port), "the client's upstream " + u.Service})
		}
	}
	for _, r := range f.resources {
		if r.Kind == v1.KindGateway {
			for _, l := range r.Gateway.Listeners {
				wants = append(wants, want{"127.0.0.1:" + strconv.Itoa(l.Port), r.Name + "'s listener"})
			}
		}
	}
	if f.meshDNS() && api != "" {
		wants = append(wants, want{ServerDNS, "the mesh DNS server"})
	}
	seen := map[string]bool{}
	for _, w := range wants {
		if seen[w.addr] {
			continue
		}
		seen[w.addr] = true
		l, err := net.Listen("tcp", w.addr)
		if err != nil {
			if errors.Is(err, syscall.EADDRINUSE) {
				_, port, _ := net.SplitHostPort(w.addr)
				return fmt.Errorf("port %s (%s) is in use by another program; `ss -ltnp 'sport = :%s'` shows which", port, w.what, port)
			}
			return fmt.Errorf("%s (%s): %w", w.addr, w.what, err)
		}
		l.Close()
	}
	return nil
}
