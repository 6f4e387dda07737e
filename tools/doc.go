// Package tools holds the release tooling of Trellis: the third-party
// license notice (notices), the container images (image) and the Debian
// package (deb). It is a module of its own so that what the tools link
// (go-containerregistry, nfpm) never changes a version in the trellis
// binary's module graph; each tool builds trellis from the repository
// root with the same recipe (internal/release).
package tools
