// Package l7 proxies HTTP between sidecars: the outbound side routes each
// request of the local app to a version and an endpoint (Route rules,
// weights, retries, timeouts) and sends it as an HTTP/2 request over a
// pooled mTLS connection; the inbound side authorizes it and hands it to the
// app in the protocol the app speaks (HTTP/1.1, or HTTP/2 for http2 and
// grpc services). It is policy: the listeners' HTTP/1.1 server, reader and
// response writer, and the HTTP/1.1 client to the app, are package h1's,
// wired here with l7's hooks (NewServer).
package l7
