package cli

import (
	"fmt"

	"github.com/trellis-mesh/trellis/internal/yamlfields"
)

// didYouMean is ` (did you mean "X"?)` for the known word nearest to word
// (within two edits), or "".
func didYouMean(word string, known []string) string {
	if s := yamlfields.Suggest(word, known); s != "" && s != word {
		return fmt.Sprintf(" (did you mean %q?)", s)
	}
	return ""
}
