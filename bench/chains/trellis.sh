# Trellis two-hop chain for ../shared/bench/bench.sh (EXTRA_CHAINS_DIR=bench/chains):
#   client -> trellis proxy "client" (25081, plain) -> mTLS HTTP/2 CONNECT ->
#   trellis proxy "web" (25444) -> app mux 18081.
# A real mesh: a control plane issues the SVIDs and pushes the endpoints.
# The control plane is recorded as chain "trellis-cp" so that its CPU is not
# counted as sidecar cost. L7 (25080/25443) arrives with the L7 issue.
TRELLIS_SRC="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
register_chain trellis - - 127.0.0.1:25081
start_trellis() {
    local bin="$WORK/bin/trellis" proxy="$WORK/bin/trellis-proxy" data="$RUN/trellis-data" i
    # The sidecars run the proxy-only build, as sidecar images do.
    (cd "$TRELLIS_SRC" && go build -o "$bin" ./cmd/trellis &&
        CGO_ENABLED=0 go build -tags proxyonly -o "$proxy" ./cmd/trellis) || return 1
    rm -rf "$data" "$RUN/trellis-web" "$RUN/trellis-client"
    "$bin" server --data-dir "$data" --listen 127.0.0.1:25700 --log-level warn > "$RUN/trellis-cp.log" 2>&1 &
    echo "trellis-cp server $!" >> "$RUN/pids"
    wait_port 127.0.0.1:25700 || return 1
    for i in $(seq 100); do [[ -s $data/admin-token ]] && break; sleep 0.1; done
    export TRELLIS_ADDR=127.0.0.1:25700 TRELLIS_CACERT=$data/ca.pem TRELLIS_TOKEN=$(cat "$data/admin-token")
    "$bin" token create --service web > "$RUN/trellis-web.token" || return 1
    "$bin" token create --service client > "$RUN/trellis-client.token" || return 1
    spawn trellis in  env -u TRELLIS_TOKEN "$proxy" proxy --service web --app-port 18081 --public-port 25444 \
        --token-file "$RUN/trellis-web.token" --state-dir "$RUN/trellis-web" --log-level warn
    spawn trellis out env -u TRELLIS_TOKEN "$proxy" proxy --service client --app-port 18081 --upstream web:25081 \
        --token-file "$RUN/trellis-client.token" --state-dir "$RUN/trellis-client" --log-level warn
    wait_port 127.0.0.1:25444 && wait_port 127.0.0.1:25081 || return 1
    # Ready when the client sidecar has web's endpoint and both have SVIDs.
    for i in $(seq 100); do
        [[ $(curl -s -m 2 -o /dev/null -w '%{http_code}' http://127.0.0.1:25081/) == 200 ]] && return 0
        sleep 0.1
    done
    echo "trellis chain not ready" >&2; return 1
}
