// Package cli turns the command line into role configurations and API
// calls. It holds no mesh logic: each subcommand parses its flags (and files)
// into a role's Config, or a client call, and reports errors in one line.
package cli
