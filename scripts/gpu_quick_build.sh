#!/usr/bin/env bash
# The whole quick build in one GPU run (issue 21): run on the device machine from the repository root,
# after the CIFAR-10 parts have arrived in data/parts/ (scripts/cifar_parts.py; one call per part).
#
#   bash scripts/gpu_quick_build.sh [WORKERS]      # default 8 jobs sharing the GPU
#   MODELS_ONLY=1 bash scripts/gpu_quick_build.sh  # train the models the bundle lacks, execute no chapter
#
# With $OUT set (the device tool), the models bundle under $OUT is rewritten after every model trained, so a
# run stopped at the device's time limit still brings back every model it finished.
# It joins and verifies the data, imports the committed models bundle (so only the models it lacks are
# trained), builds every model and executes every chapter into book/results (qadtr build --book), rewrites
# the models bundle, and copies what the repository keeps (the bundle, book/results, book/_static) under
# $OUT when the device tool sets it. Nothing else is written back. Prepared on the CPU (`--dry-run` lists the
# jobs without a GPU); not yet run on a GPU.
set -euo pipefail
cd "$(dirname "$0")/.."
workers=${1:-8}
py=${PY:-python3}
if [[ -f data/parts/manifest.json && ! -f data/cifar10-uint8.npz ]]; then
  "$py" scripts/cifar_parts.py join data/parts data/cifar10-uint8.npz
fi
export QADTR_CIFAR10=${QADTR_CIFAR10:-$PWD/data/cifar10-uint8.npz}
export QADTR_ARTIFACTS=${QADTR_ARTIFACTS:-$PWD/artifacts}
[[ -f "$QADTR_CIFAR10" ]] || { echo "gpu_quick_build: no CIFAR-10 at $QADTR_CIFAR10" >&2; exit 2; }
"$py" -m pip install -q --no-deps -e . >/dev/null
if [[ -f bundle/quick-models.tar.xz ]]; then "$py" -m qadtr_core.build.cli import --missing-only --profile quick bundle/quick-models.tar.xz; fi
start=$(date +%s)
what=(--book book/results); [[ "${MODELS_ONLY:-}" == 1 ]] && what=(--models-only)
keep=(); [[ -n "${OUT:-}" ]] && { mkdir -p "$OUT/bundle"; keep=(--bundle "$OUT/bundle/quick-models.tar.xz"); }
"$py" -m qadtr_core.build.cli build --profile quick --device cuda --workers "$workers" "${what[@]}" ${keep[@]+"${keep[@]}"} \
  ${DRY_RUN:+--dry-run}
[[ -n "${DRY_RUN:-}" ]] && exit 0
"$py" -m qadtr_core.build.cli export --profile quick --models-only bundle/quick-models.tar.xz
echo "gpu_quick_build: $(( $(date +%s) - start )) s for the build on $("$py" -c 'import torch; print(torch.cuda.get_device_name())')"
if [[ -n "${OUT:-}" ]]; then
  mkdir -p "$OUT/book" "$OUT/bundle"
  cp bundle/quick-models.tar.xz "$OUT/bundle/"
  [[ "${MODELS_ONLY:-}" == 1 ]] || cp -r book/results book/_static "$OUT/book/"
fi
