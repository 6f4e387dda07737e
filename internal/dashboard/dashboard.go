package dashboard

import (
	"embed"
	"io/fs"
	"net/http"
)

//go:embed assets
var assets embed.FS

// Handler serves the pages under prefix (such as "/ui/"): index.html at
// the prefix itself, the script and style beside it. The caller adds the
// security headers.
func Handler(prefix string) http.Handler {
	sub, err := fs.Sub(assets, "assets")
	if err != nil {
		panic(err) // the embedded tree always has it
	}
	return http.StripPrefix(prefix, http.FileServerFS(sub))
}
