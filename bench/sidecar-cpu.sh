#!/usr/bin/env bash
# sidecar-cpu.sh: CPU per request of each process of the HTTP chain (the
# load generator, the app, the client's sidecar "out", the app's "in"),
# for two trees run in turn. The shared harness reports the two sidecars'
# CPU summed, from /proc at 10 ms ticks, and its figures move by a tenth
# from run to run with the machine; a change of a few per cent in one
# sidecar shows only when the two trees alternate and each run is
# measured the same way. This runs the harness's trellis chain alone
# (ONLY=trellis, one test, DUR seconds) from each tree in turn, counts
# each process's task-clock with perf stat over WINDOW seconds in the
# middle of the HTTP run, and prints microseconds per request.
#
#   bench/sidecar-cpu.sh BASE_TREE [NEW_TREE] [PAIRS]    # NEW_TREE: this one
#   T=h2 PAIRS=5 bench/sidecar-cpu.sh /work/wt-base
#
# A tree is a checkout (git worktree add DIR REV). Needs perf.
set -uo pipefail
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
SHARED=${SHARED:-$(cd "$HERE/../../shared/bench" && pwd)}
base=${1:?usage: sidecar-cpu.sh BASE_TREE [NEW_TREE] [PAIRS]}
new=${2:-$(cd "$HERE/.." && pwd)}
pairs=${3:-${PAIRS:-3}}
T=${T:-ka64} DUR=${DUR:-20} WINDOW=${WINDOW:-12}
work=${BENCH_WORK:-${TMPDIR:-/tmp}/trellis-bench}
out=$(mktemp -d "${TMPDIR:-/tmp}/sidecar-cpu.XXXXXX")
echo "results in $out"

run() { # run NAME TREE
    local name=$1 tree=$2 o=$out/$1 load p r line
    pkill -9 -f "$work/bin" 2>/dev/null; sleep 1
    OUT=$o ONLY=trellis ROUNDS=1 DUR=$DUR TESTS=$T EXTRA_CHAINS_DIR=$tree/bench/chains \
        "$SHARED/bench.sh" > "$o.log" 2>&1 &
    for _ in $(seq 600); do load=$(pgrep -x wrk || pgrep -x h2load) && break; sleep 0.5; done
    [[ -n ${load:-} ]] || { echo "$name: no load generator started (see $o.log)"; return; }
    sleep 4
    pids() { awk -v c="$1" -v r="$2" '$1==c && (r=="" || $2==r) {print $3}' "$work/run/pids" | paste -sd,; }
    perf stat -x, -e task-clock -p "$load" -- sleep "$WINDOW" 2> "$o.load.stat" &
    perf stat -x, -e task-clock -p "$(pids app app)" -- sleep "$WINDOW" 2> "$o.app.stat" &
    perf stat -x, -e task-clock -p "$(pids trellis out)" -- sleep "$WINDOW" 2> "$o.out.stat" &
    perf stat -x, -e task-clock -p "$(pids trellis in)" -- sleep "$WINDOW" 2> "$o.in.stat" &
    wait
    while pgrep -f "$SHARED/bench.sh" > /dev/null; do sleep 1; done
    r=$(grep -h 'Requests/sec\|finished in' "$o"/raw/*http_"$T"* 2>/dev/null | head -1 |
        grep -oE 'Requests/sec: +[0-9.]+|[0-9.]+ req/s' | grep -oE '[0-9]+(\.[0-9]+)?' | head -1)
    [[ -n $r ]] || { echo "$name: no rate (see $o.log)"; return; }
    line="$name $T req/s $r us/req"
    for p in load app out in; do
        line="$line $p $(awk -F, -v r="$r" -v w="$WINDOW" '{printf "%.2f", $1*1000/(r*w)}' "$o.$p.stat")"
    done
    echo "$line" | tee -a "$out/summary"
}

for i in $(seq "$pairs"); do
    run "base-$i" "$base"
    run "new-$i" "$new"
done
