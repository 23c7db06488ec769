#!/usr/bin/env bash
# The paper's main ablation: {Uni, Bi, Bi+MNTP, Bi+MNTP+SimCSE} x {mean, weighted_mean, eos_token},
# plus the Echo-embeddings row. MNTP is trained once; every Bi+MNTP(+SimCSE) job builds on it.
#   MODEL=mistral7b TRAINER=gpu MNTP_STEPS=1000 SIMCSE_STEPS=1000 experiments/pooling_variant.sh   # the paper's scale
#   experiments/pooling_variant.sh                                                                 # SmolLM2 on this CPU
set -euo pipefail
cd "$(dirname "$0")/.."
MODEL=${MODEL:-smollm2_135m}
TRAINER=${TRAINER:-cpu}
MNTP_STEPS=${MNTP_STEPS:-100}
SIMCSE_STEPS=${SIMCSE_STEPS:-100}
OUT=${OUT:-experiments/runs/pooling_variant-$MODEL}
PYTHON=${PYTHON:-python}

if [ ! -f "$OUT/mntp/metrics.json" ]; then
  $PYTHON run.py model="$MODEL" trainer="$TRAINER" stage=mntp trainer.max_steps="$MNTP_STEPS" hydra.run.dir="$OUT/mntp"
fi
$PYTHON run.py -m model="$MODEL" trainer="$TRAINER" mntp_run="$OUT/mntp" trainer.max_steps="$SIMCSE_STEPS" \
  variant=uni,echo,bi,bi_mntp,bi_mntp_simcse pooling=mean,weighted_mean,eos_token \
  hydra.sweep.dir="$OUT/sweep"
$PYTHON -m llm2vec.compare "$OUT/sweep" --out "experiments/results/pooling_variant-$MODEL" \
  --title "Pooling x variant ($MODEL, MNTP $MNTP_STEPS steps, SimCSE $SIMCSE_STEPS steps)"
