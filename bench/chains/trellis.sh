# Trellis two-hop chains for ../shared/bench/bench.sh (EXTRA_CHAINS_DIR=bench/chains):
#   L4:   client -> trellis proxy "client" (25081) -> mTLS HTTP/2 CONNECT ->
#         trellis proxy "web" (25444) -> app mux 18081.
#   HTTP: client -> trellis proxy "client" (25080, HTTP/1.1 or h2c) -> mTLS
#         HTTP/2 -> trellis proxy "webh" (25443) -> app 18080 (HTTP/1.1).
#   Ingress (chain trellis-gw, HTTP only): client -> trellis gateway "ingress"
#         (25180, one route "/" to webg) -> mTLS HTTP/2 -> trellis proxy
#         "webg" (25445) -> app 18080. The same two hops as HAProxy's HTTP
#         chain, so the two compare; it needs chain trellis (its control plane).
# A real mesh: a control plane issues the SVIDs and pushes the endpoints.
# The control plane is recorded as chain "trellis-cp" so that its CPU is not
# counted as sidecar cost.
TRELLIS_SRC="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
register_chain trellis http://127.0.0.1:25080/ http://127.0.0.1:25080/ 127.0.0.1:25081
start_trellis() {
    local bin="$WORK/bin/trellis" proxy="$WORK/bin/trellis-proxy" data="$RUN/trellis-data" i
    # The sidecars run the proxy-only build, as sidecar images do.
    (cd "$TRELLIS_SRC" && go build -o "$bin" ./cmd/trellis &&
        CGO_ENABLED=0 go build -tags proxyonly,grpcnotrace -o "$proxy" ./cmd/trellis) || return 1
    rm -rf "$data" "$RUN/trellis-web" "$RUN/trellis-webh" "$RUN/trellis-client"
    "$bin" server --data-dir "$data" --listen 127.0.0.1:25700 --log-level warn > "$RUN/trellis-cp.log" 2>&1 &
    echo "trellis-cp server $!" >> "$RUN/pids"
    wait_port 127.0.0.1:25700 || return 1
    for i in $(seq 100); do [[ -s $data/admin-token ]] && break; sleep 0.1; done
    export TRELLIS_ADDR=127.0.0.1:25700 TRELLIS_CACERT=$data/ca.pem TRELLIS_TOKEN=$(cat "$data/admin-token")
    "$bin" token create --service web > "$RUN/trellis-web.token" || return 1
    "$bin" token create --service webh > "$RUN/trellis-webh.token" || return 1
    "$bin" token create --service client > "$RUN/trellis-client.token" || return 1
    printf 'kind: Service\nname: webh\nspec: {protocol: http}\n' > "$RUN/trellis-webh.yaml"
    "$bin" apply -f "$RUN/trellis-webh.yaml" || return 1
    # A mesh denies what no intention allows.
    "$bin" intention allow client web >/dev/null && "$bin" intention allow client webh >/dev/null || return 1
    spawn trellis in  env -u TRELLIS_TOKEN "$proxy" proxy --admin-port 0 --service web --app-port 18081 --public-port 25444 \
        --token-file "$RUN/trellis-web.token" --state-dir "$RUN/trellis-web" --log-level warn
    spawn trellis in  env -u TRELLIS_TOKEN "$proxy" proxy --admin-port 0 --service webh --app-port 18080 --public-port 25443 \
        --token-file "$RUN/trellis-webh.token" --state-dir "$RUN/trellis-webh" --log-level warn
    spawn trellis out env -u TRELLIS_TOKEN "$proxy" proxy --admin-port 0 --service client --app-port 18081 --upstream web:25081 --upstream webh:25080 \
        --token-file "$RUN/trellis-client.token" --state-dir "$RUN/trellis-client" --log-level warn
    wait_port 127.0.0.1:25444 && wait_port 127.0.0.1:25443 && wait_port 127.0.0.1:25081 && wait_port 127.0.0.1:25080 || return 1
    # Ready when the client sidecar has web's endpoint and both have SVIDs.
    for i in $(seq 100); do
        [[ $(curl -s -m 2 -o /dev/null -w '%{http_code}' http://127.0.0.1:25081/) == 200 &&
           $(curl -s -m 2 -o /dev/null -w '%{http_code}' http://127.0.0.1:25080/) == 200 ]] && return 0
        sleep 0.1
    done
    echo "trellis chain not ready" >&2; return 1
}

register_chain trellis-gw http://127.0.0.1:25180/ http://127.0.0.1:25180/ -
start_trellis-gw() {
    local bin="$WORK/bin/trellis" proxy="$WORK/bin/trellis-proxy" i
    [[ -n ${TRELLIS_ADDR:-} ]] || { echo "trellis-gw needs chain trellis" >&2; return 1; }
    rm -rf "$RUN/trellis-webg" "$RUN/trellis-ingress"
    "$bin" token create --service webg > "$RUN/trellis-webg.token" || return 1
    "$bin" token create --service ingress > "$RUN/trellis-ingress.token" || return 1
    cat > "$RUN/trellis-gw.yaml" <<'YAML'
kind: Service
name: webg
spec: {protocol: http}
---
kind: Gateway
name: ingress
spec:
  listeners:
    - port: 25180
      protocol: http
      routes: [{pathPrefix: /, service: webg}]
YAML
    "$bin" apply -f "$RUN/trellis-gw.yaml" || return 1
    "$bin" intention allow ingress webg >/dev/null || return 1
    spawn trellis-gw in env -u TRELLIS_TOKEN "$proxy" proxy --admin-port 0 --service webg --app-port 18080 --public-port 25445 \
        --token-file "$RUN/trellis-webg.token" --state-dir "$RUN/trellis-webg" --log-level warn
    spawn trellis-gw gw env -u TRELLIS_TOKEN "$proxy" gateway --admin-port 0 --name ingress --listen-addr 127.0.0.1 \
        --token-file "$RUN/trellis-ingress.token" --state-dir "$RUN/trellis-ingress" --log-level warn
    wait_port 127.0.0.1:25445 && wait_port 127.0.0.1:25180 || return 1
    for i in $(seq 100); do
        [[ $(curl -s -m 2 -o /dev/null -w '%{http_code}' http://127.0.0.1:25180/) == 200 ]] && return 0
        sleep 0.1
    done
    echo "trellis-gw chain not ready" >&2; return 1
}
