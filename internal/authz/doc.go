// Package authz decides whether a caller may reach a service, from the
// intentions that name the service and the mesh's default policy. It is pure
// (no I/O) so that proxies evaluate it per connection from their snapshot.
package authz
