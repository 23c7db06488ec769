#!/usr/bin/env bash
# MNTP masking: ratio x strategy (BERT 80/10/10 vs all-mask) with the blank "_" token, and the mask
# token (blank, eos, a new <mask>) at the paper's 0.2/BERT recipe. Scored as Bi+MNTP (mean pooling).
set -euo pipefail
cd "$(dirname "$0")/.."
MODEL=${MODEL:-smollm2_135m}
TRAINER=${TRAINER:-cpu}
MNTP_STEPS=${MNTP_STEPS:-60}
RATIOS=${RATIOS:-0.1,0.2,0.4,0.6,0.8}
OUT=${OUT:-experiments/runs/masking-$MODEL}
PYTHON=${PYTHON:-python}

$PYTHON run.py -m model="$MODEL" trainer="$TRAINER" stage=mntp trainer.max_steps="$MNTP_STEPS" \
  model.mask_ratio="$RATIOS" model.mask_strategy=bert,all_mask hydra.sweep.dir="$OUT/ratio_strategy"
$PYTHON run.py -m model="$MODEL" trainer="$TRAINER" stage=mntp trainer.max_steps="$MNTP_STEPS" \
  model.mask_token_type=blank,eos,mask hydra.sweep.dir="$OUT/token"
$PYTHON -m llm2vec.compare "$OUT/ratio_strategy" --out "experiments/results/masking-$MODEL" \
  --title "MNTP mask ratio x strategy ($MODEL, $MNTP_STEPS steps)"
$PYTHON -m llm2vec.compare "$OUT/token" --out "experiments/results/mask_token-$MODEL" \
  --title "MNTP mask token ($MODEL, $MNTP_STEPS steps)"
