#!/usr/bin/env bash
# http-bulk.sh: bulk HTTP uploads through the HTTP chains, which
# ../shared/bench/bench.sh measures only with small requests (its bulk test
# is L4 only). Each round PUTs one BYTES-long body (1 GiB by default) with
# curl through every chain, to the harness's app, which reads and discards
# it: direct, HAProxy's two-hop HTTP chain, Trellis's (trellis) and the
# Trellis ingress (trellis-gw: gateway -> sidecar). It reuses the harness's
# app, certificates and HAProxy configs and our chain file, and prints
# medians: MB/s, and the chain's CPU seconds per GB (its processes'
# utime + stime from /proc).
#
#   bench/http-bulk.sh                      # ROUNDS=3 BYTES=1073741824
#   ROUNDS=1 BYTES=268435456 bench/http-bulk.sh
set -euo pipefail
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
SHARED=${SHARED:-$(cd "$HERE/../../shared/bench" && pwd)}
ROUNDS=${ROUNDS:-3}
BYTES=${BYTES:-1073741824}
WORKERS=${WORKERS:-2}
WORK=${BENCH_WORK:-${TMPDIR:-/tmp}/trellis-http-bulk}
RUN=$WORK/run PKI=$WORK/pki
rm -rf "$RUN" && mkdir -p "$RUN" "$WORK/bin"
: > "$RUN/pids"

# The harness's helpers, as its chain files expect them.
declare -A HTTP_URL SKIP
register_chain() { HTTP_URL[$1]=$2; }
render() { sed -e "s#@PKI@#$PKI#g" -e "s#@RUN@#$RUN#g" -e "s#@WORKERS@#$WORKERS#g" "$1" > "$2"; }
spawn() { local c=$1 r=$2; shift 2; "$@" > "$RUN/$c-$r.log" 2>&1 & echo "$c $r $!" >> "$RUN/pids"; }
wait_port() { local i; for i in $(seq 100); do (exec 3<>/dev/tcp/${1%:*}/${1#*:}) 2>/dev/null && return 0; sleep 0.1; done; echo "port $1 not up" >&2; return 1; }
cleanup() {
    local c r p
    while read -r c r p; do kill "$p" 2>/dev/null || true; done < "$RUN/pids"
    # The proxies drain before they exit: give them a few seconds.
    for _ in $(seq 50); do
        alive=0
        while read -r c r p; do kill -0 "$p" 2>/dev/null && alive=1; done < "$RUN/pids"
        ((alive)) || break
        sleep 0.1
    done
    while read -r c r p; do kill -9 "$p" 2>/dev/null || true; done < "$RUN/pids"
    rm -f "$WORK/body"
}
trap cleanup EXIT INT TERM

# cpu CHAIN: clock ticks used so far by the chain's processes.
cpu() {
    local p t=0
    for p in $(awk -v c="$1" '$1==c{print $3}' "$RUN/pids"); do
        [[ -r /proc/$p/stat ]] && t=$((t + $(awk '{print $14 + $15}' "/proc/$p/stat")))
    done
    echo $t
}

cd "$SHARED"
(cd app && go build -o "$WORK/bin/app" .)
PKI_DIR="$PKI" ./gen-certs.sh > /dev/null 2>&1
spawn app app "$WORK/bin/app" serve
wait_port 127.0.0.1:18080
source chains/direct.sh
source chains/haproxy.sh
source "$HERE/chains/trellis.sh"
start_haproxy
start_trellis
start_trellis-gw
chains=(direct haproxy trellis trellis-gw)

head -c "$BYTES" /dev/zero > "$WORK/body"
hz=$(getconf CLK_TCK)
for round in $(seq "$ROUNDS"); do
    for c in "${chains[@]}"; do
        before=$(cpu "$c")
        out=$(curl -sS -o /dev/null -w '%{http_code} %{size_upload} %{time_total}' -T "$WORK/body" "${HTTP_URL[$c]}bulk")
        after=$(cpu "$c")
        read -r code size secs <<< "$out"
        if [[ $code != 200 || $size != "$BYTES" ]]; then
            echo "$c: status $code, $size of $BYTES bytes sent" >&2
            exit 1
        fi
        echo "$c $(awk -v b="$BYTES" -v s="$secs" -v t=$((after - before)) -v hz="$hz" \
            'BEGIN { printf "%.0f %.2f", b / s / 1e6, t / hz / (b / 1e9) }')" | tee -a "$RUN/results"
    done
done

echo
echo "| chain | upload MB/s | x HAProxy | proxy CPU s/GB |"
echo "| --- | --- | --- | --- |"
median() { sort -n | awk '{v[NR] = $1} END { print (NR % 2) ? v[(NR + 1) / 2] : (v[NR / 2] + v[NR / 2 + 1]) / 2 }'; }
ha=$(awk '$1 == "haproxy" {print $2}' "$RUN/results" | median)
for c in "${chains[@]}"; do
    mbps=$(awk -v c="$c" '$1 == c {print $2}' "$RUN/results" | median)
    cpus=$(awk -v c="$c" '$1 == c {print $3}' "$RUN/results" | median)
    [[ $c == direct ]] && cpus=-
    echo "| $c | $mbps | $(awk -v a="$mbps" -v b="$ha" 'BEGIN { printf "%.2f", a / b }') | $cpus |"
done
