package handshake

import (
	"context"
	"crypto/tls"
	"log/slog"
	"net"
	"time"

	"github.com/trellis-mesh/trellis/internal/ratelog"
)

// Log writes failed handshakes to Logger at info level, at most PerSecond
// lines a second. It is safe for concurrent use; the zero value logs
// nothing (a nil Logger discards) and a nil *Log is valid and discards.
type Log struct {
	// Logger receives the lines; nil discards.
	Logger *slog.Logger
	// PerSecond bounds the lines written per second (10).
	PerSecond int
	// Now returns the time; nil means time.Now (tests).
	Now func() time.Time

	limit ratelog.Limit
}

// maxClaim bounds the identity quoted from a peer's certificate: it is the
// peer's to choose, and is logged only as a hint.
const maxClaim = 256

// Failed reports that the handshake of tc, on the connection raw, failed
// with err. tc's state tells the SNI, ALPN and certificate the handshake
// got as far as; attrs (such as a reason category) go into the line.
func (l *Log) Failed(raw net.Conn, tc *tls.Conn, err error, attrs ...slog.Attr) {
	l.Log("TLS handshake failed", raw, tc, err, attrs...)
}

// Log is Failed with its own message.
func (l *Log) Log(msg string, raw net.Conn, tc *tls.Conn, err error, extra ...slog.Attr) {
	if l == nil || l.Logger == nil || err == nil {
		return
	}
	suppressed, ok := l.take()
	if !ok {
		return
	}
	attrs := make([]slog.Attr, 0, 8+len(extra))
	attrs = append(attrs, slog.String("remote", raw.RemoteAddr().String()), slog.String("local", raw.LocalAddr().String()))
	if tc != nil {
		cs := tc.ConnectionState()
		if cs.ServerName != "" {
			attrs = append(attrs, slog.String("sni", cs.ServerName))
		}
		if cs.NegotiatedProtocol != "" {
			attrs = append(attrs, slog.String("alpn", cs.NegotiatedProtocol))
		}
		if len(cs.PeerCertificates) > 0 {
			if claim := claimed(cs); claim != "" {
				attrs = append(attrs, slog.String("claimed", claim))
			}
		}
	}
	attrs = append(attrs, extra...)
	attrs = append(attrs, slog.String("err", err.Error()))
	if suppressed > 0 {
		attrs = append(attrs, slog.Int("suppressed", suppressed))
	}
	l.Logger.LogAttrs(context.Background(), slog.LevelInfo, msg, attrs...)
}

// claimed is what the peer's leaf says it is: its first URI SAN, else its
// subject's common name, cut to maxClaim.
func claimed(cs tls.ConnectionState) string {
	leaf := cs.PeerCertificates[0]
	s := leaf.Subject.CommonName
	if len(leaf.URIs) > 0 {
		s = leaf.URIs[0].String()
	}
	if len(s) > maxClaim {
		s = s[:maxClaim] + "..."
	}
	return s
}

// take reports whether a line may be written now and, if so, how many
// were held back since the last one.
func (l *Log) take() (int, bool) {
	now := time.Now()
	if l.Now != nil {
		now = l.Now()
	}
	per := l.PerSecond
	if per <= 0 {
		per = 10
	}
	return l.limit.Take(now, per)
}
