#!/usr/bin/env bash
# Offline checks of deploy/: the alert rules (`promtool check rules`, and their unit tests
# with `promtool test rules`), the Kubernetes manifests against the Kubernetes 1.30 API
# schemas (`kubernetes-validate --strict`, from PyPI: the schemas ship in the package, so
# no cluster and no network are needed), the compose file (`docker-compose config`), and
# that the dashboard and the alerts name only metrics a node exports. Installs
# prometheus (Debian) and kubernetes-validate (PyPI) when missing.
set -euo pipefail
cd "$(dirname "$0")/.."
sudo=""
[ "$(id -u)" -eq 0 ] || sudo="sudo"

if ! command -v promtool >/dev/null; then
  echo "installing prometheus (Debian package) for promtool"
  $sudo env DEBIAN_FRONTEND=noninteractive apt-get update -qq
  $sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends prometheus >/dev/null
fi
echo "== promtool check rules / test rules"
promtool check rules deploy/prometheus/alerts.yaml
(cd deploy/prometheus && promtool test rules alerts.test.yaml)
promtool check config --syntax-only deploy/prometheus/prometheus.yml

if ! command -v kubernetes-validate >/dev/null; then
  echo "installing kubernetes-validate (PyPI) for the manifests"
  python3 -m pip install -q --disable-pip-version-check kubernetes-validate
fi
echo "== kubernetes-validate --strict (Kubernetes 1.30 schemas)"
manifests=(deploy/k8s/secret.yaml deploy/k8s/services.yaml deploy/k8s/pdb.yaml deploy/k8s/statefulset.yaml)
kubernetes-validate --strict --quiet -k 1.30.0 "${manifests[@]}"
echo "${#manifests[@]} manifests valid"

if command -v docker-compose >/dev/null; then
  echo "== docker-compose config"
  docker-compose -f deploy/compose.yaml config -q && echo "compose.yaml valid"
fi

echo "== dashboard and alerts name only exported metrics"
python3 - <<'PY'
import json, pathlib, re, sys
exported = set()
for f in pathlib.Path("gateway/src").rglob("*.rs"):
    exported |= set(re.findall(r'"(concord_[a-z_]+)"', f.read_text()))
dash = json.loads(pathlib.Path("deploy/grafana/concord.json").read_text())
exprs = [t["expr"] for p in dash["panels"] for t in p["targets"]]
exprs.append(pathlib.Path("deploy/prometheus/alerts.yaml").read_text())
used = set()
for e in exprs:
    for m in re.findall(r"\b(concord_[a-z_]+)", e):
        # Histograms export _bucket, _count and _sum series.
        used.add(re.sub(r"_(bucket|count|sum)$", "", m))
missing = sorted(used - exported)
if missing:
    sys.exit(f"not exported by any node: {missing}")
ids = [p["id"] for p in dash["panels"]]
if len(ids) != len(set(ids)):
    sys.exit("dashboard panel ids repeat")
print(f"{len(dash['panels'])} panels and the alert rules use {len(used)} metrics, all exported")
PY
