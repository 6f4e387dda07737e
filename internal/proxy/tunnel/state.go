package tunnel

// streamState is where a stream is in its life cycle (RFC 9113 section
// 5.1), as this side sees it. It is guarded by Stream.mu. The RFC's states
// are combinations of its bits:
//
//	open                  0
//	half-closed (remote)  peerEnded
//	half-closed (local)   weEnded
//	closed                ended (with peerEnded|weEnded, or with aborted)
//
// and the transitions are:
//
//	peerEnded  set by the reader when the peer's END_STREAM arrives (DATA
//	           or trailers), after what came with it was delivered
//	weEnded    set by whoever sends our END_STREAM, before the frame can
//	           reach the peer, so that a frame the peer sends after it
//	           finds the stream closed here too
//	ended      set once both directions have ended, by the goroutine that
//	           ended the second (endedLocked), which then forgets the
//	           stream; or by abort
//	aborted    set with ended by abort: the stream was reset (by either
//	           side) or its connection failed; Stream.err says why, and
//	           Stream.stopped mirrors the bit for readers without the lock
//
// No bit is ever cleared.
type streamState uint8

const (
	peerEnded streamState = 1 << iota
	weEnded
	ended
	aborted
)

// has reports whether every bit of b is set.
func (st streamState) has(b streamState) bool { return st&b == b }

func (st streamState) String() string {
	switch {
	case st.has(aborted):
		return "reset"
	case st.has(ended):
		return "closed"
	case st.has(peerEnded | weEnded):
		return "closing"
	case st.has(peerEnded):
		return "half-closed (remote)"
	case st.has(weEnded):
		return "half-closed (local)"
	}
	return "open"
}
