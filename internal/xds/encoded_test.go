package xds

import (
	"bytes"
	"testing"

	discoveryv3 "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"

	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/anypb"
)

// A shared encoding with its nonce is the very bytes the response would
// be, marshalled whole; anything else goes through the proto codec.
func TestEncodedIsTheResponse(t *testing.T) {
	res := &anypb.Any{TypeUrl: PatchType, Value: bytes.Repeat([]byte("x"), 300)}
	e, err := EncodeResponse("v42", res)
	if err != nil {
		t.Fatal(err)
	}
	for _, nonce := range []string{"", "1", "123456789", string(bytes.Repeat([]byte("n"), 200))} {
		want, err := proto.MarshalOptions{Deterministic: true}.Marshal(Respond("v42", nonce, res))
		if err != nil {
			t.Fatal(err)
		}
		got, err := Codec{}.Marshal(e.WithNonce(nonce))
		if err != nil {
			t.Fatal(err)
		}
		if !bytes.Equal(got.Materialize(), want) {
			t.Errorf("nonce %q: framed bytes differ from the marshalled response", nonce)
		}
	}
	plain := Respond("v1", "7", res)
	got, err := Codec{}.Marshal(plain)
	if err != nil {
		t.Fatal(err)
	}
	want, _ := proto.Marshal(plain)
	if !bytes.Equal(got.Materialize(), want) {
		t.Error("a plain message is not encoded as proto")
	}
	var back discoveryv3.DiscoveryResponse
	if err := (Codec{}).Unmarshal(got, &back); err != nil || !proto.Equal(&back, plain) {
		t.Errorf("Unmarshal: %v, equal %v", err, proto.Equal(&back, plain))
	}
}
