#!/usr/bin/env bash
# A local benchmark cluster: kind + cert-manager + metrics-server (for the HPA) + Knative
# Serving (Kourier) + KEDA (for KServe's keda autoscaler class) + KServe +
# kube-prometheus-stack (Prometheus, kube-state-metrics), scraping the KServe model pods,
# queue-proxy and the Knative autoscaler/activator.
#
# Idempotent: every step applies or upgrades, so running it again repairs a half-done
# install instead of failing. Versions are pinned below; override any of them from the
# environment (e.g. KSERVE_VERSION=v0.16.0 make cluster). Only the pinned set was checked
# against the upstream sources (docs/cluster.md); nothing here has run in CI.
#
# Order matters: KServe's controller looks for the Knative Service and KEDA ScaledObject
# CRDs once, when it starts, so both are installed before KServe; a KServe that was
# running before KEDA came is restarted once KEDA is there.
#
# GPUs: the LLM samples (manifests/samples/llm-*.yaml) ask for nvidia.com/gpu. A cluster
# offers it only on a GPU node with NVIDIA's driver and the NVIDIA device plugin (or the
# GPU Operator, which installs both); kind has no GPU, so this script installs neither and
# says at the end whether any node offers one.
#
# Needs: docker, kind (v0.27: the node image below is built for it), kubectl, helm on PATH.
# Uses the current directory's trained/ folder as the models volume (pvc://models/<model>
# in the cluster): run `make models` first.
set -euo pipefail
shopt -s inherit_errexit # command substitutions stop on errors too

CLUSTER_NAME=${CLUSTER_NAME:-kservebench}
KIND_VERSION=v0.27.0
# kind's release notes give each node image with its digest: the image is built for that
# kind release, and the digest pins exactly that build.
KIND_NODE_IMAGE=${KIND_NODE_IMAGE:-kindest/node:v1.32.2@sha256:f226345927d7e348497136874b6d207e0b32cc52154ad8323129352923a3142f}
CERT_MANAGER_VERSION=${CERT_MANAGER_VERSION:-v1.16.3}
KNATIVE_VERSION=${KNATIVE_VERSION:-knative-v1.18.0} # <= 1.18: OpenCensus metric names
KOURIER_VERSION=${KOURIER_VERSION:-$KNATIVE_VERSION}
KEDA_VERSION=${KEDA_VERSION:-2.17.2}                 # chart = app version; k8s 1.30-1.32
KSERVE_VERSION=${KSERVE_VERSION:-v0.16.0}            # >= 0.16: deploymentMode Standard|Knative
METRICS_SERVER_VERSION=${METRICS_SERVER_VERSION:-v0.7.2}
PROM_STACK_VERSION=${PROM_STACK_VERSION:-72.6.2}     # kube-prometheus-stack chart
BENCH_NAMESPACE=${BENCH_NAMESPACE:-kservebench}
MODELS_DIR=${MODELS_DIR:-$(pwd)/trained-cluster}  # make models-cluster: the runtimes' library versions
# Host ports kind.yaml maps: Kourier (knative mode) and the bench's balancer (hpa mode).
KOURIER_NODE_PORT=31080
BALANCER_NODE_PORT=31081
BALANCER_HOST_PORT=8081
RETRY_DELAY_S=${RETRY_DELAY_S:-10}

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
log() { printf '\n== %s\n' "$*"; }
fail() {
  echo "setup.sh: $*" >&2
  exit 1
}
need() { command -v "$1" >/dev/null || fail "'$1' is not on PATH"; }

# retry ATTEMPTS COMMAND...: run COMMAND until it succeeds, at most ATTEMPTS times.
# For calls that a webhook validates while it may not serve yet (failurePolicy: Fail).
retry() {
  local attempts=$1 n=1
  shift
  until "$@"; do
    if ((n >= attempts)); then
      echo "setup.sh: gave up after $attempts attempts: $*" >&2
      return 1
    fi
    echo "setup.sh: attempt $n of $attempts failed, again in ${RETRY_DELAY_S}s: $*" >&2
    sleep "$RETRY_DELAY_S"
    n=$((n + 1))
  done
}

# The minor version of a Knative tag (knative-v1.19.0 -> 19).
knative_minor() {
  [[ $1 =~ ^knative-v1\.([0-9]+)\.[0-9]+$ ]] || fail "KNATIVE_VERSION: expected knative-v1.N.M (got '$1')"
  echo "${BASH_REMATCH[1]}"
}

# The config-observability data that makes Knative export Prometheus metrics. Up to 1.18
# (OpenCensus) Prometheus is the default; from 1.19 (OpenTelemetry) the default protocol
# is "none", so nothing is exported unless both protocols are set. Queue-proxy's request
# metrics belong on 9091 (port http-usermetric): 1.19.0 put them on 9090, beside the
# autoscaler's port (knative/serving#16017, fixed in 1.19.1), so the endpoint is explicit.
observability_patch() {
  local minor
  minor=$(knative_minor "$1") || return 1
  if ((minor < 19)); then
    return 0
  fi
  printf '%s' '{"data":{"metrics-protocol":"prometheus","request-metrics-protocol":"prometheus","request-metrics-endpoint":":9091"}}'
}

# Whether the current cluster already has a thing (exit status only).
has() { kubectl get "$@" >/dev/null 2>&1; }

create_cluster() {
  log "kind cluster '$CLUSTER_NAME' ($KIND_NODE_IMAGE)"
  local version clusters
  version=$(kind version 2>/dev/null || true)
  if [[ $version != "kind ${KIND_VERSION%.*}."* ]]; then
    echo "setup.sh: warning: '$version' is not kind ${KIND_VERSION%.*}.x, which the node image is built for" >&2
  fi
  clusters=$(kind get clusters)
  if ! grep -qx "$CLUSTER_NAME" <<<"$clusters"; then
    # The trained/ folder is mounted into the node so pods read models from a hostPath volume.
    sed "s|@MODELS_DIR@|$MODELS_DIR|" "$HERE/kind.yaml" |
      kind create cluster --name "$CLUSTER_NAME" --image "$KIND_NODE_IMAGE" --config - --wait 120s
  elif ! docker port "$CLUSTER_NAME-control-plane" "$BALANCER_NODE_PORT/tcp" >/dev/null 2>&1; then
    fail "cluster '$CLUSTER_NAME' predates the balancer's port mapping (kind.yaml, node port" \
      "$BALANCER_NODE_PORT): kind cannot add it, so delete the cluster" \
      "(kind delete cluster --name $CLUSTER_NAME) and run make cluster again"
  fi
  kubectl config use-context "kind-$CLUSTER_NAME"
}

install_cert_manager() {
  log "cert-manager $CERT_MANAGER_VERSION (KServe's webhook certificates)"
  kubectl apply -f "https://github.com/cert-manager/cert-manager/releases/download/$CERT_MANAGER_VERSION/cert-manager.yaml"
  kubectl -n cert-manager rollout status deploy --timeout=300s
}

install_metrics_server() {
  log "metrics-server $METRICS_SERVER_VERSION (CPU metrics for the HPA)"
  kubectl apply -f "https://github.com/kubernetes-sigs/metrics-server/releases/download/$METRICS_SERVER_VERSION/components.yaml"
  # kind's kubelets serve self-signed certificates.
  kubectl -n kube-system patch deploy metrics-server --type=json -p \
    '[{"op":"replace","path":"/spec/template/spec/containers/0/args","value":["--cert-dir=/tmp","--secure-port=10250","--kubelet-preferred-address-types=InternalIP","--kubelet-use-node-status-port","--metric-resolution=15s","--kubelet-insecure-tls"]}]'
  kubectl -n kube-system rollout status deploy/metrics-server --timeout=300s
}

install_knative() {
  log "Knative Serving $KNATIVE_VERSION with Kourier $KOURIER_VERSION"
  local patch changed
  patch=$(observability_patch "$KNATIVE_VERSION")
  kubectl apply -f "https://github.com/knative/serving/releases/download/$KNATIVE_VERSION/serving-crds.yaml"
  kubectl wait --for=condition=Established --timeout=120s crd/services.serving.knative.dev
  retry 3 kubectl apply -f "https://github.com/knative/serving/releases/download/$KNATIVE_VERSION/serving-core.yaml"
  # Knative's config webhook validates every knative-serving ConfigMap (failurePolicy:
  # Fail): patch them only once it serves, and retry while its Service catches up.
  kubectl -n knative-serving rollout status deploy/webhook --timeout=300s
  retry 5 kubectl apply -f "https://github.com/knative-extensions/net-kourier/releases/download/$KOURIER_VERSION/kourier.yaml"
  retry 5 kubectl -n knative-serving patch configmap/config-network --type merge \
    -p '{"data":{"ingress-class":"kourier.ingress.networking.knative.dev"}}'
  # Knative URLs resolve to 127.0.0.1 (sslip.io), where kind maps port 80 to Kourier's
  # node port: the bench reaches InferenceServices at their status.url from the host.
  retry 5 kubectl -n knative-serving patch configmap/config-domain --type merge \
    -p '{"data":{"127.0.0.1.sslip.io":""}}'
  if [[ -n $patch ]]; then
    changed=$(retry 5 kubectl -n knative-serving patch configmap/config-observability --type merge -p "$patch")
    echo "$changed"
    # The components read config-observability once, at start.
    if [[ $changed != *"(no change)"* ]]; then
      kubectl -n knative-serving rollout restart deploy/activator deploy/autoscaler
    fi
  fi
  kubectl -n kourier-system patch service/kourier --type merge \
    -p "{\"spec\":{\"type\":\"NodePort\",\"ports\":[{\"name\":\"http2\",\"port\":80,\"protocol\":\"TCP\",\"targetPort\":8080,\"nodePort\":$KOURIER_NODE_PORT}]}}"
  kubectl -n knative-serving rollout status deploy --timeout=300s
  kubectl -n kourier-system rollout status deploy --timeout=300s
}

install_keda() {
  log "KEDA $KEDA_VERSION (KServe's keda autoscaler class: the LLM samples)"
  helm repo add kedacore https://kedacore.github.io/charts --force-update >/dev/null
  helm upgrade --install keda kedacore/keda --version "$KEDA_VERSION" \
    --namespace keda --create-namespace --wait --timeout 10m
  kubectl wait --for=condition=Established --timeout=120s crd/scaledobjects.keda.sh
}

# One try at the KServe release. Its first install creates ClusterServingRuntimes in the
# same release as the webhook that validates them (failurePolicy: Fail), which may not
# serve yet (kserve/kserve#5037): after a failure, wait for the webhook, then try again
# (Helm >= 3.2 upgrades over a failed first install, helm/helm#7653).
kserve_release() {
  if helm upgrade --install kserve oci://ghcr.io/kserve/charts/kserve \
    --version "$KSERVE_VERSION" --namespace kserve --wait --timeout 10m \
    --set kserve.controller.deploymentMode=Knative \
    --set kserve.controller.gateway.disableIstioVirtualHost=true; then
    return 0
  fi
  kubectl -n kserve rollout status deploy/kserve-controller-manager --timeout=300s || true
  return 1
}

install_kserve() {
  local restart=$1
  log "KServe $KSERVE_VERSION"
  helm upgrade --install kserve-crd oci://ghcr.io/kserve/charts/kserve-crd \
    --version "$KSERVE_VERSION" --namespace kserve --create-namespace --wait
  # Kourier instead of Istio: KServe must not create Istio VirtualServices.
  retry 3 kserve_release
  if [[ $restart == yes ]]; then
    # It started before KEDA's CRD existed and will not look again.
    kubectl -n kserve rollout restart deploy/kserve-controller-manager
  fi
  kubectl -n kserve rollout status deploy --timeout=300s
}

install_prometheus() {
  log "kube-prometheus-stack $PROM_STACK_VERSION (Prometheus, kube-state-metrics)"
  helm repo add prometheus-community https://prometheus-community.github.io/helm-charts --force-update >/dev/null
  helm upgrade --install monitoring prometheus-community/kube-prometheus-stack \
    --version "$PROM_STACK_VERSION" --namespace monitoring --create-namespace \
    --values "$HERE/prometheus-values.yaml" --wait --timeout 10m
}

prepare_namespace() {
  log "benchmark namespace '$BENCH_NAMESPACE' and the models volume"
  kubectl create namespace "$BENCH_NAMESPACE" --dry-run=client -o yaml | kubectl apply -f -
  sed "s|@NAMESPACE@|$BENCH_NAMESPACE|" "$HERE/models-volume.yaml" | kubectl apply -f -
}

# What the LLM samples need that kind lacks: say it instead of leaving pods Pending.
report_gpus() {
  local gpus
  gpus=$(kubectl get nodes -o jsonpath='{range .items[*]}{.status.allocatable.nvidia\.com/gpu}{" "}{end}' | tr -d ' ')
  if [[ -z $gpus || $gpus =~ ^0+$ ]]; then
    cat <<EOF
  GPUs:        none. The LLM samples (manifests/samples/llm-*.yaml) ask for nvidia.com/gpu
               and would stay Pending here: they need a GPU node with NVIDIA's driver and
               the NVIDIA device plugin (or the GPU Operator). kind has no GPU; run the LLM
               experiment on the local target instead (make bench-llm).
EOF
  else
    echo "  GPUs:        nvidia.com/gpu offered by the nodes: the LLM samples can schedule."
  fi
}

main() {
  local keda_before kserve_before restart=no
  for tool in docker kind kubectl helm; do need "$tool"; done
  knative_minor "$KNATIVE_VERSION" >/dev/null # a bad version stops here, before any change
  mkdir -p "$MODELS_DIR"
  create_cluster
  install_cert_manager
  install_metrics_server
  install_knative
  # A KServe that started before KEDA's ScaledObject CRD existed never reconciles a keda
  # InferenceService: note it now, restart it after its upgrade.
  keda_before=no kserve_before=no
  if has crd scaledobjects.keda.sh; then keda_before=yes; fi
  if has -n kserve deploy/kserve-controller-manager; then kserve_before=yes; fi
  if [[ $kserve_before == yes && $keda_before == no ]]; then restart=yes; fi
  install_keda
  install_kserve "$restart"
  install_prometheus
  prepare_namespace
  log "done"
  cat <<EOF
Cluster '$CLUSTER_NAME' is ready.
  Prometheus:  kubectl -n monitoring port-forward svc/monitoring-kube-prometheus-prometheus 9090
               then --prometheus-url http://127.0.0.1:9090
  Models:      pvc://models/<model> (from $MODELS_DIR)
  Knative:     http://<isvc>-predictor.$BENCH_NAMESPACE.127.0.0.1.sslip.io (Kourier on host port 80)
  HPA:         http://127.0.0.1:$BALANCER_HOST_PORT/<isvc> (the bench's balancer, while a run is on)
  Operator:    make deploy (builds the image and loads it into this kind cluster)
EOF
  report_gpus
}

# Sourced (by the tests) it only defines the functions.
if [[ ${BASH_SOURCE[0]} == "$0" ]]; then
  main "$@"
fi
