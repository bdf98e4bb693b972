#!/bin/bash
# Net B's ablation (Net B / Net B_DAL / Net B_DAL_MSE, Zhai et al. Table 2) at the shipped 40-epoch
# recipe, 2 seeds each, all from ONE identity checkpoint (issue 23). About 6.7 h of a 2-core CPU, so
# it is resumable: run it again and finished runs are skipped, a stopped run continues (--resume).
#   RUNS (default runs/netb_ablation), DATA (default ../shared/data), THREADS (default auto)
# Then: ferkit eval --weights $RUNS/netb_<head>_<loss>_s<seed>/checkpoint.pt --data $DATA/ferplus --split PublicTest --json
set -u
cd "$(dirname "$0")/.."
RUNS=${RUNS:-runs/netb_ablation}; DATA=${DATA:-../shared/data}; THREADS=${THREADS:-auto}
PY=${PY:-.venv/bin/python}
mkdir -p "$RUNS"
run() {  # run folder name, then the `ferkit train` arguments
  local out=$RUNS/$1; shift
  [ -f "$out/done" ] && return 0
  local resume=""; [ -f "$out/checkpoint.pt" ] && resume="--resume"
  echo "$(date +%T) $out ${resume:-starts}"
  "$PY" -m ferkit.cli train "$@" --threads "$THREADS" --progress-interval 120 --out "$out" $resume \
    >> "$out.jsonl" 2>> "$out.err" && touch "$out/done"
}
run lcnn_id netb/lightcnn-identity --data "$DATA/identity" --input-size 48 --width 1.0 --epochs 25 || exit 1
for seed in 0 1; do
  for variant in "fc softmax" "dal softmax" "dal softmax-mse"; do
    set -- $variant
    run "netb_${1}_${2}_s$seed" netb/fer2013 --data "$DATA/ferplus" --identity-checkpoint "$RUNS/lcnn_id/checkpoint.pt" \
      --lr 0.05 --ema 0.999 --epochs 40 --head "$1" --loss "$2" --seed "$seed" || exit 1
  done
done
echo "$(date +%T) all six runs done in $RUNS"
