#!/usr/bin/env bash
# `make e2e-kind`: the operator e2e suite against a kind cluster with real images.
# Needs Docker, kind and kubectl, and a registry for kind's node image: never run on the
# development machines (no registry). The same Dockerfiles run on the real node there.
set -euo pipefail
cd "$(dirname "$0")/../.."
for tool in docker kind kubectl; do
  command -v "$tool" >/dev/null || { echo "make e2e-kind needs $tool on PATH" >&2; exit 2; }
done
name=${KIND_CLUSTER:-workerfleet-e2e}

make wheels
docker build -f worker_image/Dockerfile -t fleet-worker:0.1.0 .
for release in 1 2 3 crash; do
  docker build -f tests/apps/Dockerfile --build-arg RELEASE="$release" \
    -t "workerfleet.test/app:$release" .
done
docker build -f operator/Dockerfile -t workerfleet-operator:0.1.0 .

kind get clusters | grep -qx "$name" || kind create cluster --name "$name" --wait 180s
for image in workerfleet.test/app:1 workerfleet.test/app:2 workerfleet.test/app:3 \
             workerfleet.test/app:crash workerfleet-operator:0.1.0; do
  kind load docker-image --name "$name" "$image"
done
KUBECONFIG=$(mktemp)
export KUBECONFIG
kind get kubeconfig --name "$name" > "$KUBECONFIG"

kubectl apply -f scripts/e2e-kind/postgres.yaml
kubectl rollout status deployment/postgres --timeout=180s
node_ip=$(docker inspect -f '{{range .NetworkSettings.Networks}}{{.IPAddress}}{{end}}' \
  "$name-control-plane")
export DATABASE_URL="postgresql://postgres@$node_ip:30432/postgres"
export WORKERFLEET_E2E_BACKEND=kind

status=0
.venv/bin/python -m pytest tests/e2e \
  -m e2e "$@" || status=$?
[ "${KEEP_KIND:-}" = 1 ] || kind delete cluster --name "$name"
exit "$status"
