package control

import (
	"crypto"
	"crypto/x509"
	"encoding/pem"
)

func mustPKCS8(k crypto.Signer) []byte {
	der, err := x509.MarshalPKCS8PrivateKey(k)
	if err != nil {
		panic(err) // only for keys this package generated
	}
	return pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: der})
}
