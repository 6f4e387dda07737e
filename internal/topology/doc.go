// Package topology computes what one proxy needs to know — its snapshot —
// from the mesh's resources and registered instances. It is pure: the control
// plane feeds it what it read from the store, and proxies consume its output
// type, so both sides share one definition without the data plane importing
// the store.
package topology
