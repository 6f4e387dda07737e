package v1

import (
	"errors"
	"fmt"
	"regexp"

	"github.com/trellis-mesh/trellis/internal/identity"
)

// FieldError is a problem with one field. Path is the field's path in the
// document ("spec.protocol"); the YAML decoder adds the file and line.
type FieldError struct {
	Path string
	Msg  string
}

func (e *FieldError) Error() string { return e.Path + ": " + e.Msg }

func fieldErr(path, format string, args ...any) error {
	return &FieldError{Path: path, Msg: fmt.Sprintf(format, args...)}
}

// intentionName allows service names joined by dots, so that "src.dst" names
// (what `trellis intention` makes) cannot collide with a service name.
var intentionName = regexp.MustCompile(`^[a-z0-9*]([a-z0-9.*-]{0,251}[a-z0-9])?$`)

// Validate reports every problem with r at once, each a *FieldError.
func (r *Resource) Validate() error {
	var errs []error
	add := func(err error) {
		if err != nil {
			errs = append(errs, err)
		}
	}
	specs := 0
	for _, set := range []bool{r.Mesh != nil, r.Service != nil, r.Intention != nil} {
		if set {
			specs++
		}
	}
	if specs > 1 {
		add(fieldErr("spec", "more than one spec is set"))
	}
	switch r.Kind {
	case KindMesh:
		if r.Name != MeshName {
			add(fieldErr("name", "the mesh must be named %q, not %q", MeshName, r.Name))
		}
		if r.Mesh == nil {
			r.Mesh = &MeshSpec{}
		}
		errs = append(errs, r.Mesh.validate()...)
	case KindService:
		if err := identity.ValidateServiceName(r.Name); err != nil {
			add(fieldErr("name", "%v", err))
		}
		if r.Service == nil {
			r.Service = &ServiceSpec{}
		}
		errs = append(errs, r.Service.validate()...)
	case KindIntention:
		if !intentionName.MatchString(r.Name) {
			add(fieldErr("name", "intention name %q must be lowercase letters, digits, '.', '-' or '*'", r.Name))
		}
		if r.Intention == nil {
			add(fieldErr("spec", "missing"))
			break
		}
		errs = append(errs, r.Intention.validate()...)
	case "":
		add(fieldErr("kind", "missing"))
	default:
		add(fieldErr("kind", "unknown kind %q (want one of %v)", r.Kind, Kinds))
	}
	return errors.Join(errs...)
}

func (m *MeshSpec) validate() []error {
	var errs []error
	if m.TrustDomain != "" {
		if err := identity.ValidateTrustDomain(m.TrustDomain); err != nil {
			errs = append(errs, fieldErr("spec.trustDomain", "%v", err))
		}
	}
	switch m.MTLS {
	case "", MTLSStrict, MTLSPermissive:
	default:
		errs = append(errs, fieldErr("spec.mtls", "%q is not %q or %q", m.MTLS, MTLSStrict, MTLSPermissive))
	}
	switch m.DefaultPolicy {
	case "", Allow, Deny:
	default:
		errs = append(errs, fieldErr("spec.defaultPolicy", "%q is not %q or %q", m.DefaultPolicy, Allow, Deny))
	}
	return errs
}

func (s *ServiceSpec) validate() []error {
	var errs []error
	switch s.Protocol {
	case "", ProtocolTCP, ProtocolHTTP, ProtocolHTTP2, ProtocolGRPC:
	default:
		errs = append(errs, fieldErr("spec.protocol", "%q is not one of tcp, http, http2, grpc", s.Protocol))
	}
	if s.Port < 0 || s.Port > 65535 {
		errs = append(errs, fieldErr("spec.port", "%d is not a port number", s.Port))
	}
	return errs
}

func (i *IntentionSpec) validate() []error {
	var errs []error
	if i.Source != "*" {
		if err := identity.ValidateServiceName(i.Source); err != nil {
			errs = append(errs, fieldErr("spec.source", "%v (or \"*\" for any)", err))
		}
	}
	if err := identity.ValidateServiceName(i.Destination); err != nil {
		errs = append(errs, fieldErr("spec.destination", "%v", err))
	}
	switch i.Action {
	case Allow, Deny:
	case "":
		errs = append(errs, fieldErr("spec.action", "missing (allow or deny)"))
	default:
		errs = append(errs, fieldErr("spec.action", "%q is not %q or %q", i.Action, Allow, Deny))
	}
	return errs
}

// EffectiveMTLS returns the mTLS mode with the default applied.
func (m *MeshSpec) EffectiveMTLS() string {
	if m == nil || m.MTLS == "" {
		return MTLSStrict
	}
	return m.MTLS
}

// EffectiveDefaultPolicy returns the default policy with the default applied.
func (m *MeshSpec) EffectiveDefaultPolicy() string {
	if m == nil || m.DefaultPolicy == "" {
		return Allow
	}
	return m.DefaultPolicy
}

// EffectiveProtocol returns the protocol with the default applied.
func (s *ServiceSpec) EffectiveProtocol() string {
	if s == nil || s.Protocol == "" {
		return ProtocolTCP
	}
	return s.Protocol
}
