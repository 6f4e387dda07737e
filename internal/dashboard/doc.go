// Package dashboard holds the web dashboard's pages: plain HTML, CSS and
// JavaScript, embedded in the binary (no build step, nothing fetched from
// another origin). The control plane serves them under /ui/ on the API's
// port; the page reads and writes the mesh through the same /v1 API as
// the CLI, with a session made at login (see package control).
package dashboard
