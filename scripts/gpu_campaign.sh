#!/usr/bin/env bash
# One command line for the lent GPU machine (and, with --smoke --device cpu, for CI):
#   bash scripts/gpu_campaign.sh [--smoke] [--device cpu|cuda] [--stages deepid resnet18 ...] [--out DIR]
# Reads the packs written by `python scripts/pack_training_data.py --out packs/all` (carry packs/ to
# the device); a smoke run without packs makes synthetic ones. Uses $PYTHON (default python3: the GPU
# machine's own, which has torch with CUDA) with PYTHONPATH=. -- nothing is installed there.
set -euo pipefail
cd "$(dirname "$0")/.."
PY="${PYTHON:-python3}"
export PYTHONPATH=".${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
PACKS="${FERKIT_PACKS:-packs/all}"
if [[ " $* " == *" --smoke "* ]] && [ ! -f "$PACKS/ckplus48/pack.json" ]; then
    PACKS="$(mktemp -d)/packs"
    "$PY" scripts/pack_training_data.py --synthetic --out "$PACKS" >/dev/null
fi
exec "$PY" scripts/gpu_campaign.py --packs "$PACKS" "$@"
