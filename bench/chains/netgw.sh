# Network gateway chain for ../shared/bench/bench.sh (EXTRA_CHAINS_DIR=bench/chains):
# the same two sidecars as chain trellis, with a network gateway in the
# mTLS path, as between two networks joined only through gateways:
#   L4:   client -> trellis proxy "clientn" (network a, 25381) -> mTLS ->
#         trellis gateway "ngw" (network b, 25393; reads the SNI, forwards
#         the stream unopened) -> trellis proxy "webn" (network b, 25447)
#         -> app mux 18081.
#   HTTP: the same through proxy "webnh" (25448, protocol http) -> app
#         18080; client side 25380.
# Its own control plane (25702) is recorded as chain "trellis-ngw-cp"; the
# gateway and both sidecars are chain trellis-ngw, so its CPU and memory
# minus chain trellis's are the gateway's. On loopback every address routes,
# so only the declared gateway makes the path: the client's snapshot lists
# webn through ngw (checked before the run with `trellis get proxies`).
TRELLIS_SRC="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
register_chain trellis-ngw http://127.0.0.1:25380/ http://127.0.0.1:25380/ 127.0.0.1:25381
start_trellis-ngw() {
    local bin="$WORK/bin/trellis" proxy="$WORK/bin/trellis-proxy" data="$RUN/trellis-ngw-data" i
    (cd "$TRELLIS_SRC" && go build -o "$bin" ./cmd/trellis &&
        CGO_ENABLED=0 go build -tags proxyonly,grpcnotrace -o "$proxy" ./cmd/trellis) || return 1
    rm -rf "$data" "$RUN/trellis-webn" "$RUN/trellis-webnh" "$RUN/trellis-clientn" "$RUN/trellis-ngw"
    spawn trellis-ngw-cp server "$bin" server --data-dir "$data" --listen 127.0.0.1:25702 --log-level warn
    wait_port 127.0.0.1:25702 || return 1
    for i in $(seq 100); do [[ -s $data/admin-token ]] && break; sleep 0.1; done
    local cp=(env TRELLIS_ADDR=127.0.0.1:25702 TRELLIS_CACERT=$data/ca.pem TRELLIS_TOKEN=$(cat "$data/admin-token"))
    local s
    for s in webn webnh clientn ngw; do
        "${cp[@]}" "$bin" token create --service $s > "$RUN/trellis-$s.token" || return 1
    done
    cat > "$RUN/trellis-ngw.yaml" <<'YAML'
kind: Service
name: webnh
spec: {protocol: http}
---
kind: Gateway
name: ngw
spec:
  listeners:
    - {port: 25393, protocol: network, network: b}
YAML
    "${cp[@]}" "$bin" apply -f "$RUN/trellis-ngw.yaml" || return 1
    "${cp[@]}" "$bin" intention allow clientn webn >/dev/null && "${cp[@]}" "$bin" intention allow clientn webnh >/dev/null || return 1
    local run=(env TRELLIS_ADDR=127.0.0.1:25702 TRELLIS_CACERT=$data/ca.pem "$proxy")
    spawn trellis-ngw gw "${run[@]}" gateway --admin-port 0 --name ngw --network b --listen-addr 127.0.0.1 \
        --token-file "$RUN/trellis-ngw.token" --state-dir "$RUN/trellis-ngw" --log-level warn
    spawn trellis-ngw in "${run[@]}" proxy --admin-port 0 --service webn --network b --app-port 18081 --public-port 25447 \
        --token-file "$RUN/trellis-webn.token" --state-dir "$RUN/trellis-webn" --log-level warn
    spawn trellis-ngw in "${run[@]}" proxy --admin-port 0 --service webnh --network b --app-port 18080 --public-port 25448 \
        --token-file "$RUN/trellis-webnh.token" --state-dir "$RUN/trellis-webnh" --log-level warn
    spawn trellis-ngw out "${run[@]}" proxy --admin-port 0 --service clientn --network a --app-port 18081 --upstream webn:25381 --upstream webnh:25380 \
        --token-file "$RUN/trellis-clientn.token" --state-dir "$RUN/trellis-clientn" --log-level warn
    wait_port 127.0.0.1:25393 && wait_port 127.0.0.1:25447 && wait_port 127.0.0.1:25448 &&
        wait_port 127.0.0.1:25381 && wait_port 127.0.0.1:25380 || return 1
    for i in $(seq 100); do
        if [[ $(curl -s -m 2 -o /dev/null -w '%{http_code}' http://127.0.0.1:25381/) == 200 &&
              $(curl -s -m 2 -o /dev/null -w '%{http_code}' http://127.0.0.1:25380/) == 200 ]]; then
            "${cp[@]}" "$bin" get proxies | grep -q 'webn: via gateway network b' && return 0
            echo "trellis-ngw: clientn does not go through the gateway" >&2; return 1
        fi
        sleep 0.1
    done
    echo "trellis-ngw chain not ready" >&2; return 1
}
