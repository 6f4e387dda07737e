#!/bin/sh
# The delivery pipeline of the seed, runnable on a laptop: validate each
# manifest against the platform policy, inject the sidecar into every
# output format, and register what each service may call with the mesh.
#   trellis up examples/hello     # in another terminal: the mesh to apply to
#   examples/pipeline/pipeline.sh [VERSION]
# VERSION defaults to the first 8 characters of the current commit.
set -eu
cd "$(dirname "$0")"
TRELLIS=${TRELLIS:-trellis}
VERSION=${1:-$(git rev-parse --short=8 HEAD)}
OUT=${OUT:-out/$VERSION}
mkdir -p "$OUT"
for svc in hello-backend hello-web; do
    # Every problem at once, with file:line:col; exit 1 stops the pipeline
    # before anything is written.
    $TRELLIS inject validate -f "$svc.yaml" --policy policy.yaml --version "$VERSION"
    for fmt in ecs compose mesh; do
        $TRELLIS inject "$fmt" -f "$svc.yaml" --policy policy.yaml --version "$VERSION" -o "$OUT/$svc.$fmt"
    done
    # Allow exactly the backends the manifest lists.
    if [ -s "$OUT/$svc.mesh" ]; then $TRELLIS apply -f "$OUT/$svc.mesh"; fi
done
echo "outputs in $OUT"
# On AWS the pipeline goes on with:
#   aws ecs register-task-definition --cli-input-json "$(jq .registerTaskDefinition "$OUT/hello-web.ecs")"
#   aws ecs create-service --cli-input-json "$(jq .createService "$OUT/hello-web.ecs")"
