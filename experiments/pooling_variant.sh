#!/usr/bin/env bash
# The paper's main ablation: {Uni, Bi, Bi+MNTP, Bi+MNTP+SimCSE} x {mean, weighted_mean, eos_token},
# plus the Echo-embeddings row. MNTP is trained once; every Bi+MNTP(+SimCSE) job builds on it.
#   experiments/pooling_variant.sh                                                        # SmolLM2 on this CPU
#   MODEL=mistral7b TRAINER=gpu MNTP_STEPS=1000 SIMCSE_STEPS=1000 RECIPE= SIMCSE_ARGS=data=wiki1m \
#     MNTP_ARGS=data=wikitext103_blocks experiments/pooling_variant.sh                     # the paper's scale
set -euo pipefail
cd "$(dirname "$0")/.."
MODEL=${MODEL:-smollm2_135m}
TRAINER=${TRAINER:-cpu}
MNTP_STEPS=${MNTP_STEPS:-100}
SIMCSE_STEPS=${SIMCSE_STEPS:-100}
RECIPE=${RECIPE-experiment=smollm2_cpu}    # overrides for every job (empty: the configs' defaults)
MNTP_ARGS=${MNTP_ARGS-stage.module.optimizer.lr=2e-4}
SIMCSE_ARGS=${SIMCSE_ARGS-data=stsb_train_sentences data.group_by_length=true stage.module.optimizer.lr=3e-4}
OUT=${OUT:-experiments/runs/pooling_variant-$MODEL}
PYTHON=${PYTHON:-python}
COMMON="model=$MODEL trainer=$TRAINER $RECIPE"

if [ ! -f "$OUT/mntp/metrics.json" ]; then
  $PYTHON run.py $COMMON stage=mntp trainer.max_steps="$MNTP_STEPS" $MNTP_ARGS hydra.run.dir="$OUT/mntp"
fi
# Untrained and MNTP-only rows are evaluations; the SimCSE rows train (with their own stage arguments).
$PYTHON run.py -m $COMMON mntp_run="$OUT/mntp" variant=uni,echo,bi,bi_mntp \
  pooling=mean,weighted_mean,eos_token hydra.sweep.dir="$OUT/sweep/eval"
$PYTHON run.py -m $COMMON mntp_run="$OUT/mntp" variant=bi_mntp_simcse trainer.max_steps="$SIMCSE_STEPS" \
  $SIMCSE_ARGS pooling=mean,weighted_mean,eos_token hydra.sweep.dir="$OUT/sweep/simcse"
$PYTHON -m llm2vec.compare "$OUT/sweep" --out "experiments/results/pooling_variant-$MODEL" \
  --title "Pooling x variant ($MODEL, MNTP $MNTP_STEPS steps, SimCSE $SIMCSE_STEPS steps)"
