package appmesh

// Plan returns the cutover plan as commands; dir is where the resources
// were written.
func Plan(r *Result, dir string) string { return "" }
