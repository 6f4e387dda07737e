package xds

import (
	"fmt"

	"google.golang.org/grpc/encoding"
	grpcproto "google.golang.org/grpc/encoding/proto"
	"google.golang.org/grpc/mem"
	"google.golang.org/protobuf/encoding/protowire"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/anypb"
)

// A server pushes one snapshot, or one patch, to every proxy of a view:
// thousands of streams. Encoded once and shared, a push costs each stream
// its nonce, not a copy of the snapshot held until its socket takes it
// (at 10,000 streams, 280 MB of copies in flight while they connected).

// Encoded is a response encoded but for its nonce, shared by the streams
// it goes to. Its bytes are never changed.
type Encoded struct {
	b []byte
}

// EncodeResponse encodes the response Respond(version, nonce, res) would
// be, without the nonce.
func EncodeResponse(version string, res *anypb.Any) (*Encoded, error) {
	b, err := proto.MarshalOptions{Deterministic: true}.Marshal(Respond(version, "", res))
	if err != nil {
		return nil, fmt.Errorf("encode response %s: %w", version, err)
	}
	return &Encoded{b: b}, nil
}

// nonceField is the number of DiscoveryResponse's nonce: the highest of the
// fields a response carries, so appended last it is where a marshaller
// would put it.
const nonceField = 5

// WithNonce is the message to send for e with nonce: give it to the
// stream's SendMsg of a server whose codec is Codec.
func (e *Encoded) WithNonce(nonce string) any { return &framed{e: e, nonce: nonce} }

type framed struct {
	e     *Encoded
	nonce string
}

// Codec is gRPC's proto codec, which sends a framed response as its shared
// bytes followed by its nonce, without copying the bytes.
type Codec struct{}

var protoCodec = encoding.GetCodecV2(grpcproto.Name)

func (Codec) Marshal(v any) (mem.BufferSlice, error) {
	f, ok := v.(*framed)
	if !ok {
		return protoCodec.Marshal(v)
	}
	tail := make([]byte, 0, 2+len(f.nonce))
	if f.nonce != "" {
		tail = protowire.AppendTag(tail, nonceField, protowire.BytesType)
		tail = protowire.AppendString(tail, f.nonce)
	}
	// SliceBuffers are not pooled: freeing them after the write leaves
	// the shared bytes to the other streams and the collector.
	return mem.BufferSlice{mem.SliceBuffer(f.e.b), mem.SliceBuffer(tail)}, nil
}

func (Codec) Unmarshal(data mem.BufferSlice, v any) error { return protoCodec.Unmarshal(data, v) }

func (Codec) Name() string { return grpcproto.Name }

var _ encoding.CodecV2 = Codec{}
