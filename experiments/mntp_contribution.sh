#!/usr/bin/env bash
# MNTP's contribution: SimCSE (the same steps, mean pooling) on Bi without MNTP and on Bi+MNTP after
# MNTP_GRID steps of MNTP; the STS-B score against MNTP steps, with seeds. Reuses the MNTP and
# SimCSE runs that ablation_seeds.sh made with the same settings. Settings: experiments/common.sh.
#   experiments/mntp_contribution.sh                         # MNTP 0 / 250 / 1000, SimCSE 1,000 steps, 3 seeds
#   MNTP_GRID=0,100 SIMCSE_STEPS=250 experiments/mntp_contribution.sh
#   SMOKE=1 MNTP_GRID=0,2 experiments/mntp_contribution.sh
source "$(dirname "$0")/common.sh"
MNTP_GRID=${MNTP_GRID:-0,250,1000}
TEMPERATURE=${TEMPERATURE:-0.05}
DROPOUT=${DROPOUT:-0.3}

runs=()
for steps in ${MNTP_GRID//,/ }; do
  train_mntp "$steps"
  train_simcse "$steps" "$FIRST_POOLING" "$TEMPERATURE" "$DROPOUT"
  runs+=("$(simcse_dir "$steps" "$FIRST_POOLING" "$TEMPERATURE" "$DROPOUT")")
done
report mntp_contribution "SimCSE after MNTP ${MNTP_GRID//,/ / } steps ($MODEL; seeds $SEEDS; SimCSE $SIMCSE_STEPS steps, $FIRST_POOLING pooling)" \
  "${runs[@]}"
