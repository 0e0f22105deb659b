#!/usr/bin/env bash
# load-image.sh IMAGE [CLUSTER]: make the image `make image` built locally visible to the
# kind cluster CLUSTER (default kservebench). kind nodes run their own container runtime
# and do not see the host's Docker images; without this the operator and every Benchmark
# Job would try to pull IMAGE from its registry (imagePullPolicy IfNotPresent).
#
# On any other kubectl context it loads nothing and says so: such a cluster pulls IMAGE
# from a registry, so push it there (docker push IMAGE) first.
set -euo pipefail

image=${1:?usage: load-image.sh IMAGE [CLUSTER]}
cluster=${2:-kservebench}
context=$(kubectl config current-context 2>/dev/null || true)

if [[ $context != "kind-$cluster" ]]; then
  echo "load-image.sh: context is '${context:-none}', not kind-$cluster: not loading $image" \
    "(the cluster must pull it from its registry)"
  exit 0
fi
command -v kind >/dev/null || {
  echo "load-image.sh: 'kind' is not on PATH" >&2
  exit 1
}
docker image inspect "$image" >/dev/null 2>&1 || {
  echo "load-image.sh: no local image $image: build it first (make image)" >&2
  exit 1
}
kind load docker-image "$image" --name "$cluster"
