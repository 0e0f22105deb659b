#!/usr/bin/env bash
# A local benchmark cluster: kind + cert-manager + Knative Serving (Kourier) + KServe +
# metrics-server (for the HPA) + kube-prometheus-stack (Prometheus, kube-state-metrics),
# scraping the KServe model pods, queue-proxy and the Knative autoscaler/activator.
#
# Idempotent: every step applies or upgrades, so running it again repairs a half-done
# install instead of failing. Versions are pinned below; override any of them from the
# environment (e.g. KSERVE_VERSION=v0.16.0 make cluster).
#
# Needs: docker, kind, kubectl, helm on PATH. Uses the current directory's trained/ folder
# as the models volume (pvc://models/<model> in the cluster): run `make models` first.
set -euo pipefail

CLUSTER_NAME=${CLUSTER_NAME:-kservebench}
KIND_NODE_IMAGE=${KIND_NODE_IMAGE:-kindest/node:v1.32.2}
CERT_MANAGER_VERSION=${CERT_MANAGER_VERSION:-v1.16.3}
KNATIVE_VERSION=${KNATIVE_VERSION:-knative-v1.18.0}  # <= 1.18: OpenCensus metric names
KOURIER_VERSION=${KOURIER_VERSION:-knative-v1.18.0}
KSERVE_VERSION=${KSERVE_VERSION:-v0.16.0}           # >= 0.16: deploymentMode Standard|Knative
METRICS_SERVER_VERSION=${METRICS_SERVER_VERSION:-v0.7.2}
PROM_STACK_VERSION=${PROM_STACK_VERSION:-72.6.2}    # kube-prometheus-stack chart
BENCH_NAMESPACE=${BENCH_NAMESPACE:-kservebench}
MODELS_DIR=${MODELS_DIR:-$(pwd)/trained}

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
log() { printf '\n== %s\n' "$*"; }
need() { command -v "$1" >/dev/null || { echo "setup.sh: '$1' is not on PATH" >&2; exit 1; }; }
for tool in docker kind kubectl helm; do need "$tool"; done
mkdir -p "$MODELS_DIR"

log "kind cluster '$CLUSTER_NAME' ($KIND_NODE_IMAGE)"
if ! kind get clusters | grep -qx "$CLUSTER_NAME"; then
  # The trained/ folder is mounted into the node so pods read models from a hostPath volume.
  sed "s|@MODELS_DIR@|$MODELS_DIR|" "$HERE/kind.yaml" |
    kind create cluster --name "$CLUSTER_NAME" --image "$KIND_NODE_IMAGE" --config - --wait 120s
fi
kubectl config use-context "kind-$CLUSTER_NAME"

log "cert-manager $CERT_MANAGER_VERSION (KServe's webhook certificates)"
kubectl apply -f "https://github.com/cert-manager/cert-manager/releases/download/$CERT_MANAGER_VERSION/cert-manager.yaml"
kubectl -n cert-manager rollout status deploy --timeout=300s

log "metrics-server $METRICS_SERVER_VERSION (CPU metrics for the HPA)"
kubectl apply -f "https://github.com/kubernetes-sigs/metrics-server/releases/download/$METRICS_SERVER_VERSION/components.yaml"
# kind's kubelets serve self-signed certificates.
kubectl -n kube-system patch deploy metrics-server --type=json -p \
  '[{"op":"replace","path":"/spec/template/spec/containers/0/args","value":["--cert-dir=/tmp","--secure-port=10250","--kubelet-preferred-address-types=InternalIP","--kubelet-use-node-status-port","--metric-resolution=15s","--kubelet-insecure-tls"]}]'
kubectl -n kube-system rollout status deploy/metrics-server --timeout=300s

log "Knative Serving $KNATIVE_VERSION with Kourier $KOURIER_VERSION"
kubectl apply -f "https://github.com/knative/serving/releases/download/$KNATIVE_VERSION/serving-crds.yaml"
kubectl wait --for=condition=Established --timeout=120s crd/services.serving.knative.dev
kubectl apply -f "https://github.com/knative/serving/releases/download/$KNATIVE_VERSION/serving-core.yaml"
kubectl apply -f "https://github.com/knative/net-kourier/releases/download/$KOURIER_VERSION/kourier.yaml"
kubectl -n knative-serving patch configmap/config-network --type merge \
  -p '{"data":{"ingress-class":"kourier.ingress.networking.knative.dev"}}'
# Knative URLs resolve to 127.0.0.1 (sslip.io), where kind maps port 80 to Kourier's
# node port: the bench reaches InferenceServices at their status.url from the host.
kubectl -n knative-serving patch configmap/config-domain --type merge \
  -p '{"data":{"127.0.0.1.sslip.io":""}}'
kubectl -n kourier-system patch service/kourier --type merge \
  -p '{"spec":{"type":"NodePort","ports":[{"name":"http2","port":80,"protocol":"TCP","targetPort":8080,"nodePort":31080}]}}'
kubectl -n knative-serving rollout status deploy --timeout=300s
kubectl -n kourier-system rollout status deploy --timeout=300s

log "KServe $KSERVE_VERSION"
helm upgrade --install kserve-crd oci://ghcr.io/kserve/charts/kserve-crd \
  --version "$KSERVE_VERSION" --namespace kserve --create-namespace --wait
# Kourier instead of Istio: KServe must not create Istio VirtualServices.
helm upgrade --install kserve oci://ghcr.io/kserve/charts/kserve \
  --version "$KSERVE_VERSION" --namespace kserve --wait \
  --set kserve.controller.deploymentMode=Knative \
  --set kserve.controller.gateway.disableIstioVirtualHost=true
kubectl -n kserve rollout status deploy --timeout=300s

log "kube-prometheus-stack $PROM_STACK_VERSION (Prometheus, kube-state-metrics)"
helm repo add prometheus-community https://prometheus-community.github.io/helm-charts >/dev/null
helm repo update prometheus-community >/dev/null
helm upgrade --install monitoring prometheus-community/kube-prometheus-stack \
  --version "$PROM_STACK_VERSION" --namespace monitoring --create-namespace \
  --values "$HERE/prometheus-values.yaml" --wait --timeout 10m

log "benchmark namespace '$BENCH_NAMESPACE' and the models volume"
kubectl create namespace "$BENCH_NAMESPACE" --dry-run=client -o yaml | kubectl apply -f -
sed "s|@NAMESPACE@|$BENCH_NAMESPACE|" "$HERE/models-volume.yaml" | kubectl apply -f -

log "done"
cat <<EOF
Cluster '$CLUSTER_NAME' is ready.
  Prometheus:  kubectl -n monitoring port-forward svc/monitoring-kube-prometheus-prometheus 9090
               then --prometheus-url http://127.0.0.1:9090
  Models:      pvc://models/<model> (from $MODELS_DIR)
  Knative:     http://<isvc>-$BENCH_NAMESPACE.127.0.0.1.sslip.io (Kourier on host port 80)
  Operator:    make deploy
EOF
