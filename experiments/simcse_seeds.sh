#!/usr/bin/env bash
# SimCSE temperature x attention dropout at full length, with seeds, on the Bi+MNTP runs of the same
# seeds (MNTP_STEPS), mean pooling. The paper's cell (0.05, 0.3) is the main ablation's run, reused.
# Settings: experiments/common.sh.
#   experiments/simcse_seeds.sh                                  # 3 x 2 cells x 3 seeds, 1,000 steps each
#   TEMPERATURES=0.05,0.1 DROPOUTS=0.0,0.3 SIMCSE_STEPS=500 experiments/simcse_seeds.sh
#   SMOKE=1 TEMPERATURES=0.05,0.1 DROPOUTS=0.3 experiments/simcse_seeds.sh
source "$(dirname "$0")/common.sh"
TEMPERATURES=${TEMPERATURES:-0.02,0.05,0.1}
DROPOUTS=${DROPOUTS:-0.0,0.3}

train_mntp "$MNTP_STEPS"
runs=()
for dropout in ${DROPOUTS//,/ }; do
  for temperature in ${TEMPERATURES//,/ }; do
    train_simcse "$MNTP_STEPS" "$FIRST_POOLING" "$temperature" "$dropout"
    runs+=("$(simcse_dir "$MNTP_STEPS" "$FIRST_POOLING" "$temperature" "$dropout")")
  done
done
report simcse_seeds "SimCSE temperature x attention dropout ($MODEL; seeds $SEEDS; MNTP $MNTP_STEPS, SimCSE $SIMCSE_STEPS steps)" \
  "${runs[@]}"
