#!/usr/bin/env bash
# MNTP masking: ratio x strategy (BERT 80/10/10 vs all-mask) with the blank "_" token, and the mask
# token (blank, eos, a new <mask>) at the paper's 0.2/BERT recipe. Scored as Bi+MNTP (mean pooling).
#   experiments/masking.sh                                                   # SmolLM2 on this CPU
#   MODEL=llama3_8b TRAINER=gpu MNTP_STEPS=1000 RECIPE= MNTP_ARGS= experiments/masking.sh
set -euo pipefail
cd "$(dirname "$0")/.."
MODEL=${MODEL:-smollm2_135m}
TRAINER=${TRAINER:-cpu}
MNTP_STEPS=${MNTP_STEPS:-60}
RATIOS=${RATIOS:-0.1,0.2,0.4,0.6,0.8}
RECIPE=${RECIPE-experiment=smollm2_cpu}
MNTP_ARGS=${MNTP_ARGS-stage.module.optimizer.lr=2e-4}
OUT=${OUT:-experiments/runs/masking-$MODEL}
PYTHON=${PYTHON:-python}
COMMON="model=$MODEL trainer=$TRAINER $RECIPE stage=mntp trainer.max_steps=$MNTP_STEPS $MNTP_ARGS"

$PYTHON run.py -m $COMMON model.mask_ratio="$RATIOS" model.mask_strategy=bert,all_mask \
  hydra.sweep.dir="$OUT/ratio_strategy"
$PYTHON run.py -m $COMMON model.mask_token_type=blank,eos,mask hydra.sweep.dir="$OUT/token"
$PYTHON -m llm2vec.compare "$OUT/ratio_strategy" --out "experiments/results/masking-$MODEL" \
  --title "MNTP mask ratio x strategy ($MODEL, $MNTP_STEPS steps)"
$PYTHON -m llm2vec.compare "$OUT/token" --out "experiments/results/mask_token-$MODEL" \
  --title "MNTP mask token ($MODEL, $MNTP_STEPS steps)"
