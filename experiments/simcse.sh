#!/usr/bin/env bash
# SimCSE temperature x attention dropout, on top of one MNTP run (trained first if missing).
# For a search instead of a grid: python run.py -m +sweep=simcse_optuna stage.init_from=<MNTP run>
#   experiments/simcse.sh                                                    # SmolLM2 on this CPU
#   SIMCSE_STEPS=250 OUT=experiments/runs/simcse_250-smollm2_135m RESULTS=experiments/results/simcse_250-smollm2_135m \
#     experiments/simcse.sh                                                  # longer runs, results kept apart
#   MODEL=llama3_8b TRAINER=gpu MNTP_STEPS=1000 SIMCSE_STEPS=1000 RECIPE= MNTP_ARGS= SIMCSE_ARGS= experiments/simcse.sh
set -euo pipefail
cd "$(dirname "$0")/.."
MODEL=${MODEL:-smollm2_135m}
TRAINER=${TRAINER:-cpu}
MNTP_STEPS=${MNTP_STEPS:-100}
SIMCSE_STEPS=${SIMCSE_STEPS:-40}
TEMPERATURES=${TEMPERATURES:-0.02,0.05,0.1}
DROPOUTS=${DROPOUTS:-0.0,0.3}
RECIPE=${RECIPE-experiment=smollm2_cpu}
MNTP_ARGS=${MNTP_ARGS-stage.module.optimizer.lr=2e-4}
SIMCSE_ARGS=${SIMCSE_ARGS-data=stsb_train_sentences data.group_by_length=true stage.module.optimizer.lr=3e-4}
OUT=${OUT:-experiments/runs/simcse-$MODEL}
RESULTS=${RESULTS:-experiments/results/simcse-$MODEL}
MNTP_RUN=${MNTP_RUN:-experiments/runs/pooling_variant-$MODEL/mntp}
PYTHON=${PYTHON:-python}

if [ ! -f "$MNTP_RUN/metrics.json" ]; then
  $PYTHON run.py model="$MODEL" trainer="$TRAINER" $RECIPE stage=mntp trainer.max_steps="$MNTP_STEPS" $MNTP_ARGS \
    hydra.run.dir="$MNTP_RUN"
fi
$PYTHON run.py -m model="$MODEL" trainer="$TRAINER" $RECIPE stage=simcse stage.init_from="$MNTP_RUN" \
  trainer.max_steps="$SIMCSE_STEPS" $SIMCSE_ARGS stage.module.temperature="$TEMPERATURES" \
  stage.module.attention_dropout="$DROPOUTS" hydra.sweep.dir="$OUT/sweep"
$PYTHON -m llm2vec.compare "$OUT/sweep" --out "$RESULTS" \
  --title "SimCSE temperature x attention dropout ($MODEL, $SIMCSE_STEPS steps)"
