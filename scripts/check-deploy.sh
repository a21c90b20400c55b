#!/usr/bin/env bash
# Validates what can be validated of deploy/ without a cluster: the
# Prometheus rules with promtool, every Kubernetes manifest and the
# kustomization as YAML, and the ConfigMap's configuration with
# `meridian check`. Installs promtool (Debian package prometheus) and PyYAML
# when missing.
set -euo pipefail
cd "$(dirname "$0")/.."

sudo=""
if [ "$(id -u)" -ne 0 ]; then
  sudo="sudo"
fi
if ! command -v promtool >/dev/null 2>&1; then
  echo "== installing prometheus (promtool) to check the alert rules"
  $sudo apt-get update
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y --no-install-recommends prometheus
fi
promtool check rules deploy/prometheus/alerts.yml

if ! python3 -c "import yaml" 2>/dev/null; then
  python3 -m pip install --quiet pyyaml
fi
python3 - deploy/kubernetes/base/*.yaml <<'PY'
import sys, yaml
kinds = {}
for path in sys.argv[1:]:
    with open(path) as f:
        for doc in yaml.safe_load_all(f):
            if doc is None:
                continue
            kind = doc.get("kind")
            if not kind or not (doc.get("apiVersion")):
                sys.exit(f"{path}: a document without kind or apiVersion")
            kinds.setdefault(kind, []).append(doc)
            if kind == "Kustomization":
                for r in doc.get("resources", []):
                    if not __import__("os").path.exists(f"deploy/kubernetes/base/{r}"):
                        sys.exit(f"{path}: resource {r} does not exist")
for needed in ["Kustomization", "Deployment", "Service", "PodDisruptionBudget", "Namespace"]:
    if needed not in kinds:
        sys.exit(f"no {needed} in deploy/kubernetes/base")
spec = kinds["Deployment"][0]["spec"]
assert spec["replicas"] >= 2, "at least two replicas"
pod = spec["template"]["spec"]
anti = pod["affinity"]["podAntiAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"]
assert any(t["topologyKey"] == "kubernetes.io/hostname" for t in anti), "replicas on distinct nodes"
assert pod["topologySpreadConstraints"][0]["topologyKey"] == "topology.kubernetes.io/zone"
c = pod["containers"][0]
for probe in ["readinessProbe", "livenessProbe"]:
    assert c[probe]["httpGet"]["path"] == "/healthz", probe
for kind in ["requests", "limits"]:
    assert {"cpu", "memory"} <= set(c["resources"][kind]), kind
print("ok: deploy/kubernetes/base parses and keeps replicas apart")
PY

MERIDIAN_ADMIN_TOKEN=check-only cargo run --locked --quiet -- check -c deploy/kubernetes/base/meridian.toml >/dev/null
echo "ok: deploy/kubernetes/base/meridian.toml"
