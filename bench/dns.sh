#!/usr/bin/env bash
# dns.sh: answers per second and p99 latency of the control plane's DNS
# (`trellis server --dns-listen`) beside CoreDNS serving the same zone from
# a file, on loopback, measured with dnsperf (Debian's package).
#
# A real mesh answers: a control plane with a Mesh declaring bench.local
# and two sidecars of service web with edge listeners. The CoreDNS zone is
# written from what trellis answers (the same A, SRV and target records).
# Each server gets, in turn: an unthrottled run (DURATION s, answers/s),
# then a run at LOAD queries/s with every query's latency recorded (p99).
# The query mix is A and SRV of web.bench.local, AAAA (NODATA) and an
# unknown name (NXDOMAIN).
#
#   bench/dns.sh                        # DURATION=10 LOAD=20000
#   COREDNS_VERSION=v1.15.0 DURATION=5 bench/dns.sh
#
# Needs dnsperf (apt-get install dnsperf), python3 (the app), go. CoreDNS
# is built once from its Go module into $WORK/bin.
set -euo pipefail
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
ROOT=$(cd "$HERE/.." && pwd)
DURATION=${DURATION:-10}
LOAD=${LOAD:-20000}
COREDNS_VERSION=${COREDNS_VERSION:-v1.15.0}
WORK=${BENCH_WORK:-${TMPDIR:-/tmp}/trellis-dns-bench}
RUN=$WORK/run
TRELLIS_PORT=17790 TDNS=15353 CDNS=15354 APP=18091
rm -rf "$RUN" && mkdir -p "$RUN" "$WORK/bin"
: > "$RUN/pids"
spawn() { local name=$1; shift; "$@" > "$RUN/$name.log" 2>&1 & echo "$name $!" >> "$RUN/pids"; }
cleanup() {
    local n p
    while read -r n p; do kill "$p" 2>/dev/null || true; done < "$RUN/pids"
    for _ in $(seq 50); do
        alive=0
        while read -r n p; do kill -0 "$p" 2>/dev/null && alive=1; done < "$RUN/pids"
        ((alive)) || break
        sleep 0.1
    done
    while read -r n p; do kill -9 "$p" 2>/dev/null || true; done < "$RUN/pids"
}
trap cleanup EXIT INT TERM
wait_port() { local i; for i in $(seq 100); do (exec 3<>/dev/tcp/${1%:*}/${1#*:}) 2>/dev/null && return 0; sleep 0.1; done; echo "port $1 not up" >&2; return 1; }
command -v dnsperf > /dev/null || { echo "dnsperf missing: apt-get install dnsperf" >&2; exit 1; }

(cd "$ROOT" && go build -o "$WORK/bin/trellis" ./cmd/trellis)
if [[ ! -x $WORK/bin/coredns-$COREDNS_VERSION ]]; then
    GOBIN=$WORK/bin/coredns-build GOFLAGS= go install "github.com/coredns/coredns@$COREDNS_VERSION"
    mv "$WORK/bin/coredns-build/coredns" "$WORK/bin/coredns-$COREDNS_VERSION"
fi
T=$WORK/bin/trellis

# The mesh: an app, a control plane with DNS, two sidecars with edge listeners.
spawn app python3 -m http.server "$APP" --bind 127.0.0.1
spawn server "$T" server --data-dir "$RUN/server" --listen "127.0.0.1:$TRELLIS_PORT" --dns-listen "127.0.0.1:$TDNS" --dns-rate -1
wait_port "127.0.0.1:$TRELLIS_PORT"
for _ in $(seq 100); do [[ -s $RUN/server/admin-token ]] && break; sleep 0.1; done
export TRELLIS_ADDR=127.0.0.1:$TRELLIS_PORT TRELLIS_CACERT=$RUN/server/ca.pem TRELLIS_TOKEN=$(cat "$RUN/server/admin-token")
cat > "$RUN/mesh.yaml" <<YAML
kind: Mesh
name: default
spec:
  dns: {domains: [bench.local]}
---
kind: Service
name: web
spec: {protocol: http, port: 80}
YAML
"$T" apply -f "$RUN/mesh.yaml" > /dev/null
"$T" token create --service web -o "$RUN/web.token" > /dev/null
for i in 1 2; do
    spawn "web-$i" "$T" proxy --admin-port 0 --service web --instance "web-$i" --app-port "$APP" --edge-port 0 --edge-addr 127.0.0.1 \
        --edge-dns-name web.bench.local --token-file "$RUN/web.token"
done
for _ in $(seq 200); do
    [[ $(dig +short @127.0.0.1 -p "$TDNS" web.bench.local SRV | wc -l) == 2 ]] && break
    sleep 0.1
done
dig +short @127.0.0.1 -p "$TDNS" web.bench.local SRV | grep -q . || { echo "trellis DNS does not answer web.bench.local" >&2; exit 1; }

# The same zone for CoreDNS, from trellis's answers.
{
    echo '$ORIGIN bench.local.'
    echo '@ 5 IN SOA ns.bench.local. hostmaster.bench.local. 1 60 10 600 5'
    echo '@ 5 IN NS ns.bench.local.'
    echo 'ns 5 IN A 127.0.0.1'
    dig +noall +answer @127.0.0.1 -p "$TDNS" web.bench.local A
    dig +noall +answer @127.0.0.1 -p "$TDNS" web.bench.local SRV
    for t in $(dig +short @127.0.0.1 -p "$TDNS" web.bench.local SRV | awk '{print $4}' | sort -u); do
        dig +noall +answer @127.0.0.1 -p "$TDNS" "$t" A
    done
} > "$RUN/bench.local.db"
cat > "$RUN/Corefile" <<CORE
bench.local:$CDNS {
    bind 127.0.0.1
    file $RUN/bench.local.db
}
CORE
spawn coredns "$WORK/bin/coredns-$COREDNS_VERSION" -conf "$RUN/Corefile"
for _ in $(seq 100); do dig +short @127.0.0.1 -p "$CDNS" web.bench.local A | grep -q . && break; sleep 0.1; done

printf '%s\n' "web.bench.local A" "web.bench.local SRV" "web.bench.local AAAA" "nothing.bench.local A" > "$RUN/queries"

# measure NAME PORT: answers/s unthrottled, then p99 at LOAD queries/s.
measure() {
    local name=$1 port=$2 qps p99 lost
    dnsperf -s 127.0.0.1 -p "$port" -d "$RUN/queries" -l "$DURATION" -c 4 -T 2 -q 256 > "$RUN/$name-qps.txt" 2>&1
    qps=$(awk '/Queries per second/{print $4}' "$RUN/$name-qps.txt")
    lost=$(awk '/Queries lost/{print $3}' "$RUN/$name-qps.txt")
    # -v prints one line per answer, its latency (s) last.
    dnsperf -v -s 127.0.0.1 -p "$port" -d "$RUN/queries" -l 5 -c 4 -T 2 -Q "$LOAD" > "$RUN/$name-lat.txt" 2>&1
    p99=$(awk '/^> /{print $NF}' "$RUN/$name-lat.txt" | sort -g | awk '{v[NR]=$1} END{i=int(NR*0.99); if(i<1)i=1; printf "%.3f", v[i]*1000}')
    printf '%-9s %12s answers/s  lost %-8s p99 %s ms at %s q/s\n' "$name" "$qps" "$lost" "$p99" "$LOAD"
}
echo "DNS on loopback, $(nproc) cores, $DURATION s per run:"
measure trellis "$TDNS"
measure coredns "$CDNS"
