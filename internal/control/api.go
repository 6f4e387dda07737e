package control

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"slices"
	"strings"
	"time"

	v1 "github.com/trellis-mesh/trellis/api/v1"
	"github.com/trellis-mesh/trellis/internal/ca"
	"github.com/trellis-mesh/trellis/internal/identity"
	"github.com/trellis-mesh/trellis/internal/store"
)

// maxBody bounds request bodies: resources and CSRs are small.
const maxBody = 1 << 20

// apiError is an error with its HTTP status.
type apiError struct {
	status int
	msg    string
	// outcome and writeKey, for a write that failed, say whether it may
	// still apply and under which idempotency key (write.go).
	outcome, writeKey string
}

func (e *apiError) Error() string { return e.msg }

func badRequest(format string, args ...any) error {
	return &apiError{status: http.StatusBadRequest, msg: fmt.Sprintf(format, args...)}
}

func notFound(format string, args ...any) error {
	return &apiError{status: http.StatusNotFound, msg: fmt.Sprintf(format, args...)}
}

// handler is an API handler: it returns the value to encode or an error.
type handler func(p principal, r *http.Request) (any, error)

// access says who may call a handler.
type access int

const (
	adminOnly access = iota
	anyToken
	// readers are admin and viewer tokens (and their dashboard sessions):
	// reads of the mesh.
	readers
)

// routes is the API port's handler (but gRPC's): every answer carries
// the security headers (secureHeaders).
func (s *Server) routes() http.Handler {
	mux := http.NewServeMux()
	h := func(pattern string, a access, fn handler) { mux.Handle(pattern, s.wrap(a, fn)) }
	h("GET /v1/services", readers, s.listServices)
	h("GET /v1/instances", readers, s.listInstances)
	h("GET /v1/proxies", readers, s.listProxies)
	h("GET /v1/stats", readers, s.getStats)
	h("GET /v1/topology", readers, s.getTopology)
	h("GET /v1/intentions", readers, func(principal, *http.Request) (any, error) {
		return s.state.listResources(v1.KindIntention), nil
	})
	h("GET /v1/resources/{kind}", readers, s.listResources)
	h("GET /v1/resources/{kind}/{name}", readers, s.getResource)
	h("GET /v1/routes/{name}/canary", readers, s.getCanary)
	h("DELETE /v1/resources/{kind}/{name}", adminOnly, s.deleteResource)
	h("POST /v1/resources", adminOnly, s.applyResources)
	h("GET /v1/ca/roots", anyToken, s.roots)
	h("POST /v1/ca/sign", anyToken, s.sign)
	h("POST /v1/ca/roots", adminOnly, s.addRoots)
	h("POST /v1/ca/roots/remove", adminOnly, s.removeRoot)
	h("GET /v1/ca/rotation", readers, s.rotation)
	h("POST /v1/ca/rotation", adminOnly, s.rotate)
	h("GET /v1/writes/{key}", adminOnly, s.getWrite)
	h("GET /v1/tokens", adminOnly, s.listTokens)
	h("POST /v1/tokens", adminOnly, s.createToken)
	h("DELETE /v1/tokens/{id}", adminOnly, s.deleteToken)
	mux.HandleFunc("GET /v1/backup", s.backup)
	mux.HandleFunc("GET /healthz", s.healthz)
	mux.Handle("GET /metrics", s.metricsHandler)
	// Servers authenticate to each other by certificate, not token.
	mux.HandleFunc("POST "+pushPath, s.receivePush)
	s.dashboardRoutes(mux)
	mux.HandleFunc("/v1/", func(w http.ResponseWriter, r *http.Request) {
		writeJSON(w, http.StatusNotFound, map[string]string{"error": "no such API: " + r.Method + " " + r.URL.Path})
	})
	return secureHeaders(mux)
}

func (s *Server) wrap(a access, fn handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		p, err := s.authHTTP(r)
		if err != nil {
			code := http.StatusUnauthorized
			if ae := (*apiError)(nil); errors.As(err, &ae) {
				code = ae.status // a session's write without its CSRF proof
			} else {
				w.Header().Set("WWW-Authenticate", `Bearer realm="trellis"`)
			}
			s.refused(r, p, code, err.Error())
			writeJSON(w, code, map[string]string{"error": err.Error()})
			return
		}
		if why := p.refusal(a, r.Method); why != "" {
			s.refused(r, p, http.StatusForbidden, why)
			writeJSON(w, http.StatusForbidden, map[string]string{"error": why})
			return
		}
		r.Body = http.MaxBytesReader(w, r.Body, maxBody)
		// Answers may hold secrets (a new token's): never stored.
		w.Header().Set("Cache-Control", "no-store")
		if why := s.state.staleness(time.Now()); why != "" {
			w.Header().Set(staleHeader, why)
		}
		write := !readMethod(r.Method)
		if write {
			// The deadline holds whether or not the client waits: a
			// write it gave up on is still settled (write.go).
			ctx, cancel := context.WithTimeout(context.WithoutCancel(r.Context()), s.writeTimeout())
			defer cancel()
			r = r.WithContext(ctx)
		}
		v, err := fn(p, r)
		code := http.StatusOK
		if err != nil {
			v = nil
			var ae *apiError
			switch {
			case errors.As(err, &ae):
				code = ae.status
				if ae.outcome != "" {
					w.Header().Set(outcomeHeader, ae.outcome)
					v = map[string]string{"error": err.Error(), "outcome": ae.outcome, "writeKey": ae.writeKey}
				}
			case errors.Is(err, errForbidden):
				code = http.StatusForbidden
			default:
				code = http.StatusInternalServerError
				s.log.Error("api", "method", r.Method, "path", r.URL.Path, "err", err)
			}
			if code < 500 {
				s.refused(r, p, code, err.Error())
			}
			if v == nil {
				v = map[string]string{"error": err.Error()}
			}
		}
		if code < 400 || code >= 500 {
			s.metrics.api.WithLabelValues(fmt.Sprint(code)).Inc()
		}
		writeJSON(w, code, v)
	})
}

// refused counts and logs a refused call: who (the token's public ID and
// description, never its secret), what, and why.
func (s *Server) refused(r *http.Request, p principal, code int, why string) {
	s.metrics.api.WithLabelValues(fmt.Sprint(code)).Inc()
	s.logRefusal("api request refused", "remote", r.RemoteAddr, "token", p, "method", r.Method, "path", r.URL.Path, "code", code, "reason", why)
}

// refusalsPerSecond bounds the refusal lines the server logs a second: a
// client sending guesses must not flood the log (the counters count all).
const refusalsPerSecond = 50

// logRefusal logs a refused call or stream at info, within the budget;
// the first line after a suppressed run says how many were not written.
func (s *Server) logRefusal(msg string, args ...any) {
	n, ok := s.refusals.Take(time.Now(), refusalsPerSecond)
	if !ok {
		return
	}
	if n > 0 {
		args = append(args, "suppressed", n)
	}
	s.log.Info(msg, args...)
}

func writeJSON(w http.ResponseWriter, code int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(code)
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	_ = enc.Encode(v)
}

func decodeBody(r *http.Request, v any) error {
	b, err := io.ReadAll(r.Body)
	if err != nil {
		return badRequest("read body: %v", err)
	}
	dec := json.NewDecoder(bytes.NewReader(b))
	dec.DisallowUnknownFields()
	if err := dec.Decode(v); err != nil {
		return badRequest("decode body: %v", err)
	}
	return nil
}

func (s *Server) listServices(principal, *http.Request) (any, error) {
	m := s.state.mesh()
	byName := map[string]*v1.ServiceSummary{}
	get := func(n string) *v1.ServiceSummary {
		if byName[n] == nil {
			byName[n] = &v1.ServiceSummary{Name: n, Protocol: m.Services[n].EffectiveProtocol()}
		}
		return byName[n]
	}
	for n := range m.Services {
		get(n).Declared = true
	}
	for n, ins := range m.Instances {
		sum := get(n)
		for _, in := range ins {
			sum.Instances++
			if in.Healthy {
				sum.Healthy++
			}
		}
	}
	out := make([]v1.ServiceSummary, 0, len(byName))
	for _, v := range byName {
		out = append(out, *v)
	}
	slices.SortFunc(out, func(a, b v1.ServiceSummary) int { return strings.Compare(a.Name, b.Name) })
	return out, nil
}

func (s *Server) listInstances(_ principal, r *http.Request) (any, error) {
	out := s.state.listInstances(r.URL.Query().Get("service"))
	if out == nil {
		out = []v1.Instance{}
	}
	return out, nil
}

func (s *Server) listProxies(principal, *http.Request) (any, error) { return s.state.listStatus(), nil }

func checkKind(kind string) error {
	if !slices.Contains(v1.Kinds, kind) {
		return notFound("unknown kind %q (want one of %v)", kind, v1.Kinds)
	}
	return nil
}

func (s *Server) listResources(_ principal, r *http.Request) (any, error) {
	kind := r.PathValue("kind")
	if err := checkKind(kind); err != nil {
		return nil, err
	}
	return s.state.listResources(kind), nil
}

func (s *Server) getResource(_ principal, r *http.Request) (any, error) {
	kind, name := r.PathValue("kind"), r.PathValue("name")
	if err := checkKind(kind); err != nil {
		return nil, err
	}
	res, ok := s.state.resource(kind, name)
	if !ok {
		return nil, notFound("%s %q not found", kind, name)
	}
	return res, nil
}

func (s *Server) deleteResource(p principal, r *http.Request) (any, error) {
	kind, name := r.PathValue("kind"), r.PathValue("name")
	if err := checkKind(kind); err != nil {
		return nil, err
	}
	if err := s.deleteKey(r, p, resourceKey(kind, name)); err != nil {
		if errors.Is(err, store.ErrNotFound) {
			return nil, notFound("%s %q not found", kind, name)
		}
		return nil, err
	}
	return map[string]string{"deleted": kind + "/" + name}, nil
}

// deleteKey deletes key as the request's write (commitWrite), guarded on
// the revision read, so that a retry of it never deletes what was put
// there since; store.ErrNotFound when it is not there.
func (s *Server) deleteKey(r *http.Request, p principal, key string) error {
	kv, err := s.store.Get(r.Context(), key)
	if err != nil {
		if !errors.Is(err, store.ErrNotFound) {
			err = writeFailed(outcomeNotApplied, "", "store unavailable, nothing deleted: %v", err)
		}
		return err
	}
	err = s.commitWrite(r, p, []store.Op{{Key: key, Delete: true, IfRev: kv.Rev}})
	if errors.Is(err, store.ErrConflict) {
		return &apiError{status: http.StatusConflict, msg: fmt.Sprintf("nothing deleted: %s changed meanwhile; try again", key)}
	}
	return err
}

// applyResources validates every resource, checks them against each other and
// the stored ones, and commits all in one transaction or none.
func (s *Server) applyResources(p principal, r *http.Request) (any, error) {
	var in []v1.Resource
	if err := decodeBody(r, &in); err != nil {
		return nil, err
	}
	if len(in) == 0 {
		return nil, badRequest("no resources")
	}
	// One op of the transaction is the write's record (write.go).
	if limit := store.MaxTxnOps - 1; len(in) > limit {
		return nil, badRequest("nothing applied: %d resources in one apply, over the limit of %d (one store transaction holds at most %d writes, one of them the write's record); apply them in several files", len(in), limit, store.MaxTxnOps)
	}
	var errs []string
	pairs := map[string]string{} // "src>dst" -> intention name
	for _, res := range s.state.listResources(v1.KindIntention) {
		pairs[res.Intention.Source+">"+res.Intention.Destination] = res.Name
	}
	seen := map[string]bool{}
	var ops []store.Op
	for i := range in {
		res := &in[i]
		where := fmt.Sprintf("resource %d (%s %q)", i+1, res.Kind, res.Name)
		if err := res.Validate(); err != nil {
			errs = append(errs, where+": "+strings.ReplaceAll(err.Error(), "\n", "; "))
			continue
		}
		key := resourceKey(res.Kind, res.Name)
		if seen[key] {
			errs = append(errs, where+": appears twice")
		}
		seen[key] = true
		switch res.Kind {
		case v1.KindMesh:
			if td := res.Mesh.TrustDomain; td != "" && td != s.signer().TrustDomain() {
				errs = append(errs, fmt.Sprintf("%s: spec.trustDomain: %q differs from the CA's %q (it is fixed when the CA is made)", where, td, s.signer().TrustDomain()))
			}
		case v1.KindIntention:
			pair := res.Intention.Source + ">" + res.Intention.Destination
			if other, ok := pairs[pair]; ok && other != res.Name {
				errs = append(errs, fmt.Sprintf("%s: intention %q already covers %s -> %s", where, other, res.Intention.Source, res.Intention.Destination))
			}
			pairs[pair] = res.Name
		}
		b, err := json.Marshal(res)
		if err != nil {
			return nil, err
		}
		ops = append(ops, store.Op{Key: key, Value: b})
	}
	if len(errs) == 0 {
		errs = append(checkEdgeSuffixes(in), checkEdgeClaims(s.state.mesh(), in)...)
		errs = append(errs, s.checkEdgeServerNames(in)...)
		errs = append(errs, checkHostnameClaims(s.state.mesh(), in)...)
		errs = append(errs, s.checkCanaryIntervals(in)...)
	}
	if len(errs) > 0 {
		return nil, badRequest("nothing applied: %s", strings.Join(errs, "; "))
	}
	if err := s.commitWrite(r, p, ops); err != nil {
		return nil, fmt.Errorf("commit: %w", err)
	}
	var res v1.ApplyResult
	for _, x := range in {
		res.Applied = append(res.Applied, x.Kind+"/"+x.Name)
	}
	return res, nil
}

func (s *Server) roots(principal, *http.Request) (any, error) {
	m := s.state.mesh()
	return v1.Roots{TrustDomain: m.TrustDomain, RootsPEM: m.RootsPEM, Certs: rootCerts(m.RootsPEM)}, nil
}

// addRoots adds roots to the trust bundle: the first step of a CA rotation.
func (s *Server) addRoots(_ principal, r *http.Request) (any, error) {
	var req v1.Roots
	if err := decodeBody(r, &req); err != nil {
		return nil, err
	}
	if err := addRoots(r.Context(), s.store, s.signer().TrustDomain(), []byte(req.RootsPEM)); err != nil {
		return nil, badRequest("add roots: %v", err)
	}
	m := s.state.mesh()
	return v1.Roots{TrustDomain: m.TrustDomain, RootsPEM: m.RootsPEM}, nil
}

func (s *Server) sign(p principal, r *http.Request) (any, error) {
	var req v1.SignRequest
	if err := decodeBody(r, &req); err != nil {
		return nil, err
	}
	id, err := identity.New(s.signer().TrustDomain(), req.Service)
	if err != nil {
		return nil, badRequest("%v", err)
	}
	if !p.mayActAs(req.Service) {
		return nil, fmt.Errorf("%w: identity %s", errForbidden, id)
	}
	if err := s.tokenStillStored(r.Context(), p); err != nil {
		return nil, err
	}
	if len(req.DNSNames) > 0 {
		return s.signEdge(p, id, req)
	}
	chain, err := s.signer().SignSVID(ca.SignRequest{CSR: []byte(req.CSR), ID: id, TTL: p.certTTL(s.cfg.SVIDTTL)})
	return s.signed(chain, err, slog.LevelDebug, "issued svid", "id", id.String())
}

// signed answers a sign request with the chain the CA issued (or its
// error), counted and logged with attrs.
func (s *Server) signed(chain []byte, err error, level slog.Level, msg string, attrs ...any) (any, error) {
	if err != nil {
		return nil, badRequest("%v", err)
	}
	certs, err := ca.ParseCertificates(chain)
	if err != nil {
		return nil, err
	}
	s.metrics.svids.Inc()
	s.log.Log(context.Background(), level, msg, append(attrs, "expires", certs[0].NotAfter)...)
	return v1.Signed{ChainPEM: string(chain), ExpiresAt: certs[0].NotAfter}, nil
}

// signEdge issues an edge certificate, for names the service is allowed.
func (s *Server) signEdge(p principal, id identity.ID, req v1.SignRequest) (any, error) {
	m := s.state.mesh()
	if err := checkEdgeNames(allowedEdgeNames(m, req.Service), req.DNSNames, req.Service); err != nil {
		return nil, fmt.Errorf("%w: %v", errForbidden, err)
	}
	// Names stored before these rules, or claimed twice through a race
	// between two applies, are refused here too.
	claims := edgeClaims(m)
	for _, n := range req.DNSNames {
		if err := v1.ValidateEdgeName(n); err != nil {
			return nil, fmt.Errorf("%w: DNS name: %v", errForbidden, err)
		}
		if err := checkPublicSuffix(n); err != nil {
			return nil, fmt.Errorf("%w: DNS name: %v", errForbidden, err)
		}
		if err := s.checkServerNames(n); err != nil {
			return nil, fmt.Errorf("%w: DNS name: %v", errForbidden, err)
		}
		for other, names := range claims {
			if other == req.Service {
				continue
			}
			for _, o := range names {
				if edgeOverlap(n, o) {
					return nil, fmt.Errorf("%w: DNS name %q overlaps %q of service %s", errForbidden, n, o, other)
				}
			}
		}
	}
	chain, err := s.signer().SignEdge(ca.EdgeRequest{CSR: []byte(req.CSR), Service: req.Service, DNSNames: req.DNSNames, TTL: p.certTTL(s.cfg.SVIDTTL)})
	return s.signed(chain, err, slog.LevelInfo, "issued edge certificate", "service", id.Service(), "names", req.DNSNames)
}

func (s *Server) createToken(p principal, r *http.Request) (any, error) {
	var req v1.TokenRequest
	if err := decodeBody(r, &req); err != nil {
		return nil, err
	}
	t := v1.Token{Admin: req.Admin, Services: req.Services, Description: req.Description, Viewer: req.Viewer}
	if req.TTL != "" {
		d, err := time.ParseDuration(req.TTL)
		if err != nil || d < 10*time.Second {
			return nil, badRequest("ttl %q: want a duration of at least 10s, such as 720h", req.TTL)
		}
		exp := time.Now().Add(d).UTC().Truncate(time.Second)
		t.ExpiresAt = &exp
	}
	commit := func(_ context.Context, ops []store.Op) error { return s.commitWrite(r, p, ops) }
	secret, t, err := createToken(r.Context(), commit, t)
	if ae := (*apiError)(nil); errors.As(err, &ae) {
		return nil, err
	}
	if err != nil {
		return nil, badRequest("%v", err)
	}
	return v1.NewToken{Token: t, Secret: secret}, nil
}

// listTokens reads the store, not its mirror, which may lag a token made
// a moment ago.
func (s *Server) listTokens(_ principal, r *http.Request) (any, error) {
	kvs, _, err := s.store.List(r.Context(), keyTokens)
	if err != nil {
		return nil, err
	}
	out := make([]v1.Token, 0, len(kvs))
	for _, kv := range kvs {
		var t tokenRecord
		if err := json.Unmarshal(kv.Value, &t); err != nil {
			s.log.Error("skip undecodable token in store", "key", kv.Key, "err", err)
			continue
		}
		out = append(out, t.Token)
	}
	slices.SortFunc(out, func(a, b v1.Token) int { return a.CreatedAt.Compare(b.CreatedAt) })
	return out, nil
}

func (s *Server) deleteToken(p principal, r *http.Request) (any, error) {
	// A token's ID is the start of the hash it is stored under; the store
	// (not the mirror, which may lag a token made a moment ago) finds it.
	id := r.PathValue("id")
	if len(id) < 12 {
		return nil, notFound("token %q not found", id)
	}
	kvs, _, err := s.store.List(r.Context(), tokenKey(id))
	if err != nil {
		return nil, err
	}
	if len(kvs) != 1 {
		return nil, notFound("token %q not found", id)
	}
	if err := s.deleteKey(r, p, kvs[0].Key); err != nil {
		if errors.Is(err, store.ErrNotFound) {
			return nil, notFound("token %q not found", id)
		}
		return nil, err
	}
	return map[string]string{"deleted": id}, nil
}
