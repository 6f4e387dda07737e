#!/bin/sh
# The delivery pipeline of the seed, runnable on a laptop: validate each
# manifest against the platform policy, inject the sidecar into every
# output format, and register the new version with the mesh: the Service
# if new, what it may call, and a Route that gives it no traffic until the
# canary step (the first version of a service gets all of it).
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
    for fmt in ecs cloudformation kubernetes compose mesh; do
        $TRELLIS inject "$fmt" -f "$svc.yaml" --policy policy.yaml --version "$VERSION" -o "$OUT/$svc.$fmt"
    done
    # Register the version; its intentions allow exactly the backends the
    # manifest lists.
    $TRELLIS inject validate --apply -f "$svc.yaml" --policy policy.yaml --version "$VERSION"
done
echo "outputs in $OUT"
# The canary step, once the new version's tasks are healthy: edit the
# weights of the Route (trellis get route SERVICE -o yaml) and apply it.
# On AWS the pipeline goes on with:
#   aws ecs register-task-definition --cli-input-json "$(jq .registerTaskDefinition "$OUT/hello-web.ecs")"
#   aws ecs create-service --cli-input-json "$(jq .createService "$OUT/hello-web.ecs")"
# or: aws cloudformation deploy --stack-name hello-web-$VERSION --template-file "$OUT/hello-web.cloudformation"
# or, on Kubernetes: kubectl apply -f "$OUT/hello-web.kubernetes"
