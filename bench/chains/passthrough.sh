# TLS pass-through chains for ../shared/bench/bench.sh (EXTRA_CHAINS_DIR=bench/chains),
# L4 mode only:
#   client -> HAProxy TLS originator (SNI web.mesh.local) -> LB -> Trellis
#   sidecar edge listener (terminates TLS, cert from files) -> app mux 18081.
# The LB is a Trellis gateway's tls-passthrough listener (chain trellis-pt,
# 25291) or HAProxy in mode tcp routing on req.ssl_sni (chain haproxy-sni,
# 25281). Everything but the LB is recorded as "pt-ends", so each chain's
# CPU and memory are its LB's alone; the ends are the same for both.
# close16 opens a TLS connection through the LB per request: new
# connections per second.
TRELLIS_SRC="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
TRELLIS_CONF="$TRELLIS_SRC/bench/conf"
register_chain trellis-pt - - 127.0.0.1:25291
register_chain haproxy-sni - - 127.0.0.1:25281

# pt_ends starts the shared ends once: a control plane (25701) for the
# sidecar "webtls" (edge 25294) and the gateway "lb", and the originators.
pt_ends() {
    [[ -n ${PT_ENDS:-} ]] && return 0
    local bin="$WORK/bin/trellis" proxy="$WORK/bin/trellis-proxy" data="$RUN/trellis-pt-data" i
    (cd "$TRELLIS_SRC" && go build -o "$bin" ./cmd/trellis &&
        CGO_ENABLED=0 go build -tags proxyonly,grpcnotrace -o "$proxy" ./cmd/trellis) || return 1
    rm -rf "$data" "$RUN/trellis-webtls" "$RUN/trellis-lb"
    spawn pt-ends cp "$bin" server --data-dir "$data" --listen 127.0.0.1:25701 --log-level warn
    wait_port 127.0.0.1:25701 || return 1
    for i in $(seq 100); do [[ -s $data/admin-token ]] && break; sleep 0.1; done
    local cp=(env TRELLIS_ADDR=127.0.0.1:25701 TRELLIS_CACERT=$data/ca.pem TRELLIS_TOKEN=$(cat "$data/admin-token"))
    "${cp[@]}" "$bin" token create --service webtls > "$RUN/trellis-webtls.token" || return 1
    "${cp[@]}" "$bin" token create --service lb > "$RUN/trellis-lb.token" || return 1
    cat > "$RUN/trellis-pt.yaml" <<'YAML'
kind: Gateway
name: lb
spec:
  listeners:
    - port: 25293
      protocol: tls-passthrough
      healthCheck: tcp
      targets: [{sni: web.mesh.local, service: webtls}]
YAML
    "${cp[@]}" "$bin" apply -f "$RUN/trellis-pt.yaml" || return 1
    spawn pt-ends webtls "${cp[@]}" TRELLIS_TOKEN= "$proxy" proxy --admin-port 0 --service webtls --app-port 18081 --public-port 25446 \
        --edge-port 25294 --edge-addr 127.0.0.1 --edge-cert "$PKI/web.pem" --edge-key "$PKI/web.key" \
        --token-file "$RUN/trellis-webtls.token" --state-dir "$RUN/trellis-webtls" --log-level warn
    render "$TRELLIS_CONF/pt-ends.cfg" "$RUN/pt-ends.cfg"
    haproxy -c -q -f "$RUN/pt-ends.cfg" || return 1
    spawn pt-ends originators haproxy -db -f "$RUN/pt-ends.cfg"
    wait_port 127.0.0.1:25294 && wait_port 127.0.0.1:25291 || return 1
    PT_ENDS=1
}

start_trellis-pt() {
    pt_ends || return 1
    local data="$RUN/trellis-pt-data" i
    spawn trellis-pt lb env TRELLIS_ADDR=127.0.0.1:25701 TRELLIS_CACERT="$data/ca.pem" TRELLIS_TOKEN= \
        "$WORK/bin/trellis-proxy" gateway --admin-port 0 --name lb --listen-addr 127.0.0.1 \
        --token-file "$RUN/trellis-lb.token" --state-dir "$RUN/trellis-lb" --log-level warn
    wait_port 127.0.0.1:25293 || return 1
    # Ready when the gateway has the healthy target.
    for i in $(seq 100); do
        [[ $(curl -s -m 2 -o /dev/null -w '%{http_code}' http://127.0.0.1:25291/) == 200 ]] && return 0
        sleep 0.1
    done
    echo "trellis-pt chain not ready" >&2; return 1
}

start_haproxy-sni() {
    pt_ends || return 1
    render "$TRELLIS_CONF/haproxy-sni.cfg" "$RUN/haproxy-sni.cfg"
    haproxy -c -q -f "$RUN/haproxy-sni.cfg" || return 1
    spawn haproxy-sni lb haproxy -db -f "$RUN/haproxy-sni.cfg"
    wait_port 127.0.0.1:25283
}
