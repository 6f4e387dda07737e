#!/usr/bin/env bash
# sidecar-rss.sh: peak RSS of each Trellis sidecar and gateway under the
# shared harness's load. ../shared/bench/bench.sh reports the peak of a
# chain's processes summed, which for the HTTP chain adds three sidecars
# (one of them idle in its HTTP tests); the 28 MiB target is per sidecar.
# This runs the harness with our chain files and samples VmRSS of every
# trellis-proxy process every 0.2 s while it runs.
#
#   bench/sidecar-rss.sh                        # ONLY="direct trellis" TESTS="ka64 h2"
#   ONLY="direct trellis trellis-gw" TESTS=h2 bench/sidecar-rss.sh
set -euo pipefail
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
SHARED=${SHARED:-$(cd "$HERE/../../shared/bench" && pwd)}
export EXTRA_CHAINS_DIR=$HERE/chains
export ONLY=${ONLY:-direct trellis} TESTS=${TESTS:-ka64 h2} ROUNDS=${ROUNDS:-1} DUR=${DUR:-8}

"$SHARED/bench.sh" > "${TMPDIR:-/tmp}/sidecar-rss-bench.log" 2>&1 &
bench=$!
declare -A peak name
while kill -0 "$bench" 2>/dev/null; do
    for p in $(pgrep -f 'trellis-proxy (proxy|gateway)' || true); do
        r=$(awk '/^VmRSS/{print $2}' "/proc/$p/status" 2>/dev/null) || continue
        [[ -n $r ]] || continue
        if [[ -z ${name[$p]:-} ]]; then
            name[$p]=$(tr '\0' ' ' < "/proc/$p/cmdline" 2>/dev/null | grep -o -- '--service [a-z0-9-]*\|--name [a-z0-9-]*' | head -1) || true
        fi
        (( r > ${peak[$p]:-0} )) && peak[$p]=$r
    done
    sleep 0.2
done
wait "$bench" || { echo "bench.sh failed; see ${TMPDIR:-/tmp}/sidecar-rss-bench.log" >&2; exit 1; }
echo "| process | peak RSS MiB | peak RSS kB |"
echo "| --- | ---: | ---: |"
for p in "${!peak[@]}"; do
    printf '| %s (pid %s) | %.1f | %d |\n' "${name[$p]:-?}" "$p" "$(echo "${peak[$p]} / 1024" | bc -l)" "${peak[$p]}"
done | sort
tail -n +1 "${TMPDIR:-/tmp}/sidecar-rss-bench.log" | grep -E '^\| (direct|trellis)[^ ]*/' || true
