package control

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"strings"

	"github.com/trellis-mesh/trellis/internal/store"
)

// snapshotter is a store that can stream a snapshot of itself (etcd's).
type snapshotter interface {
	Snapshot(ctx context.Context) (io.ReadCloser, error)
}

var _ snapshotter = (*store.Etcd)(nil)

// backup streams a snapshot of the store to an admin: every resource,
// token (hashed), the CA's records. It is refused while the store holds
// a CA key in clear (a rotation's new key, before keys are kept
// encrypted): private keys leave the server encrypted or not at all.
func (s *Server) backup(w http.ResponseWriter, r *http.Request) {
	fail := func(code int, msg string) {
		writeJSON(w, code, map[string]string{"error": msg})
	}
	p, err := s.authHTTP(r)
	if err != nil {
		s.refused(r, p, http.StatusUnauthorized, err.Error())
		w.Header().Set("WWW-Authenticate", `Bearer realm="trellis"`)
		fail(http.StatusUnauthorized, err.Error())
		return
	}
	if why := p.refusal(adminOnly, r.Method); why != "" {
		s.refused(r, p, http.StatusForbidden, why)
		fail(http.StatusForbidden, why)
		return
	}
	st := s.store
	if l, ok := st.(*liveStore); ok {
		st = l.Store
	}
	snap, ok := st.(snapshotter)
	if !ok {
		fail(http.StatusNotImplemented, "this store cannot make snapshots")
		return
	}
	if kv, err := s.store.Get(r.Context(), keyIssuer); err == nil {
		var rec issuerRecord
		if json.Unmarshal(kv.Value, &rec) == nil && strings.Contains(rec.KeyPEM, "PRIVATE KEY-----") {
			fail(http.StatusConflict, "backup refused: the store holds a root rotation's CA key in clear, which must not leave the server; "+
				"back up etcd on the etcd host (etcdutl, see docs/operations.md) and keep that file as secret as the key")
			return
		}
	} else if !errors.Is(err, store.ErrNotFound) {
		fail(http.StatusServiceUnavailable, fmt.Sprintf("backup: store unavailable: %v", err))
		return
	}
	rc, err := snap.Snapshot(r.Context())
	if err != nil {
		fail(http.StatusServiceUnavailable, fmt.Sprintf("backup: %v", err))
		return
	}
	defer rc.Close()
	w.Header().Set("Content-Type", "application/octet-stream")
	w.Header().Set("Cache-Control", "no-store")
	n, err := io.Copy(w, rc)
	if err != nil {
		// The status is sent: abort the stream, so that the client sees
		// an error rather than a body that merely ends early.
		s.log.Error("backup cut short", "bytes", n, "err", err)
		panic(http.ErrAbortHandler)
	}
	s.metrics.api.WithLabelValues("200").Inc()
	s.log.Info("backup taken", "token", p, "bytes", n)
}
