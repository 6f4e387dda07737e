package store

import (
	"fmt"
	"strings"

	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
)

// etcdLogger is the zap logger the embedded etcd logs through: its fatal
// messages go to stderr as before, and the connections its TLS listeners
// refuse are handed to onRefused, so that the server can count and log
// them in its own words.
func etcdLogger(onRefused func(Refusal)) (*zap.Logger, error) {
	zc := zap.NewProductionConfig()
	zc.Level = zap.NewAtomicLevelAt(zapcore.FatalLevel)
	zc.OutputPaths, zc.ErrorOutputPaths = []string{"stderr"}, []string{"stderr"}
	base, err := zc.Build()
	if err != nil {
		return nil, fmt.Errorf("embedded etcd logger: %w", err)
	}
	if onRefused == nil {
		return base, nil
	}
	return zap.New(zapcore.NewTee(base.Core(), &refusalCore{on: onRefused})), nil
}

// Refusal is one connection the embedded etcd refused at the TLS handshake:
// a process without the server's credentials tried it.
type Refusal struct {
	// Listener is "client" or "peer".
	Listener string
	// Remote is the caller's address.
	Remote string
	// Reason is the TLS error.
	Reason string
}

// refusalCore picks etcd's "rejected connection on client endpoint" and
// "... on peer endpoint" warnings out of everything etcd logs.
type refusalCore struct {
	on     func(Refusal)
	fields []zapcore.Field
}

var _ zapcore.Core = (*refusalCore)(nil)

func (c *refusalCore) Enabled(l zapcore.Level) bool { return l >= zapcore.WarnLevel }

func (c *refusalCore) With(fields []zapcore.Field) zapcore.Core {
	return &refusalCore{on: c.on, fields: append(append([]zapcore.Field(nil), c.fields...), fields...)}
}

func (c *refusalCore) Check(e zapcore.Entry, ce *zapcore.CheckedEntry) *zapcore.CheckedEntry {
	if c.Enabled(e.Level) && strings.HasPrefix(e.Message, "rejected connection on ") {
		return ce.AddCore(e, c)
	}
	return ce
}

func (c *refusalCore) Write(e zapcore.Entry, fields []zapcore.Field) error {
	enc := zapcore.NewMapObjectEncoder()
	for _, f := range append(append([]zapcore.Field(nil), c.fields...), fields...) {
		f.AddTo(enc)
	}
	r := Refusal{Listener: "client"}
	if strings.Contains(e.Message, "peer") {
		r.Listener = "peer"
	}
	r.Remote, _ = enc.Fields["remote-addr"].(string)
	r.Reason, _ = enc.Fields["error"].(string)
	c.on(r)
	return nil
}

func (c *refusalCore) Sync() error { return nil }
