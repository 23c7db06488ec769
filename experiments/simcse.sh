#!/usr/bin/env bash
# SimCSE temperature x attention dropout, on top of one MNTP run (trained first if missing).
# For a search instead of a grid: python run.py -m +sweep=simcse_optuna stage.init_from=<MNTP run>
set -euo pipefail
cd "$(dirname "$0")/.."
MODEL=${MODEL:-smollm2_135m}
TRAINER=${TRAINER:-cpu}
MNTP_STEPS=${MNTP_STEPS:-100}
SIMCSE_STEPS=${SIMCSE_STEPS:-60}
OUT=${OUT:-experiments/runs/simcse-$MODEL}
MNTP_RUN=${MNTP_RUN:-experiments/runs/pooling_variant-$MODEL/mntp}
PYTHON=${PYTHON:-python}

if [ ! -f "$MNTP_RUN/metrics.json" ]; then
  $PYTHON run.py model="$MODEL" trainer="$TRAINER" stage=mntp trainer.max_steps="$MNTP_STEPS" hydra.run.dir="$MNTP_RUN"
fi
$PYTHON run.py -m model="$MODEL" trainer="$TRAINER" stage=simcse stage.init_from="$MNTP_RUN" \
  trainer.max_steps="$SIMCSE_STEPS" stage.module.temperature=0.02,0.05,0.1 stage.module.attention_dropout=0.0,0.3 \
  hydra.sweep.dir="$OUT/sweep"
$PYTHON -m llm2vec.compare "$OUT/sweep" --out "experiments/results/simcse-$MODEL" \
  --title "SimCSE temperature x attention dropout ($MODEL, $SIMCSE_STEPS steps)"
