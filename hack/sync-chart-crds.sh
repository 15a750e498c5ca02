#!/usr/bin/env bash
# Copy the CRDs (single source: crds/*.yaml) into the Helm chart's crds/ directory.
# tests/unit/test_chart.py fails when the copies drift; run this after editing a CRD.
#   hack/sync-chart-crds.sh          copy
#   hack/sync-chart-crds.sh --check  exit 1 (and list the files) when the copies drift
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
src="$root/crds"
dst="$root/charts/diffusion-operator/crds"
mode="${1:-sync}"
mkdir -p "$dst"
drift=0
for f in "$src"/*.yaml; do
  name="$(basename "$f")"
  if [[ "$mode" == "--check" ]]; then
    if ! cmp -s "$f" "$dst/$name"; then echo "drift: charts/diffusion-operator/crds/$name"; drift=1; fi
  else
    cp "$f" "$dst/$name"
  fi
done
# Copies whose source is gone.
for f in "$dst"/*.yaml; do
  [[ -e "$f" ]] || continue
  name="$(basename "$f")"
  if [[ ! -e "$src/$name" ]]; then
    if [[ "$mode" == "--check" ]]; then echo "stale: charts/diffusion-operator/crds/$name"; drift=1; else rm "$f"; fi
  fi
done
if [[ "$mode" == "--check" ]]; then
  [[ $drift -eq 0 ]] && echo "chart CRDs in sync" || { echo "run hack/sync-chart-crds.sh"; exit 1; }
fi
