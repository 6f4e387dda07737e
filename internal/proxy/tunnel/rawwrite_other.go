//go:build !unix

package tunnel

// rawWrite writes nothing: without non-blocking socket writes, the
// stream's flusher writes every DATA payload.
func rawWrite(fd uintptr, p []byte) (int, error) { return 0, nil }
