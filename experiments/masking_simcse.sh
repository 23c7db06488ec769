#!/usr/bin/env bash
# MNTP masking, each setting followed by SimCSE (the comparison that can tell the settings apart on a
# CPU, where MNTP alone barely moves STS-B): mask ratio x strategy with the blank token, then the mask
# token at 0.2 / BERT 80-10-10; MNTP_STEPS of MNTP, SIMCSE_STEPS of SimCSE, mean pooling, with seeds.
# Settings: experiments/common.sh. 13 MNTP + 13 SimCSE runs per seed at the defaults: cut with RATIOS.
#   experiments/masking_simcse.sh
#   RATIOS=0.2,0.8 MNTP_STEPS=250 SIMCSE_STEPS=250 experiments/masking_simcse.sh
#   SMOKE=1 RATIOS=0.2,0.8 experiments/masking_simcse.sh
source "$(dirname "$0")/common.sh"
RATIOS=${RATIOS:-0.1,0.2,0.4,0.6,0.8}
STRATEGIES=${STRATEGIES:-bert,all_mask}
TOKENS=${TOKENS:-blank,eos,mask}
TEMPERATURE=${TEMPERATURE:-0.05}
DROPOUT=${DROPOUT:-0.3}

grid=()
for ratio in ${RATIOS//,/ }; do
  for strategy in ${STRATEGIES//,/ }; do
    train_mntp "$MNTP_STEPS" "$ratio" "$strategy" blank
    train_simcse "$MNTP_STEPS" "$FIRST_POOLING" "$TEMPERATURE" "$DROPOUT" "$ratio" "$strategy" blank
    grid+=("$(simcse_dir "$MNTP_STEPS" "$FIRST_POOLING" "$TEMPERATURE" "$DROPOUT" "$ratio" "$strategy" blank)")
  done
done
tokens=()
for token in ${TOKENS//,/ }; do
  train_mntp "$MNTP_STEPS" 0.2 bert "$token"
  train_simcse "$MNTP_STEPS" "$FIRST_POOLING" "$TEMPERATURE" "$DROPOUT" 0.2 bert "$token"
  tokens+=("$(simcse_dir "$MNTP_STEPS" "$FIRST_POOLING" "$TEMPERATURE" "$DROPOUT" 0.2 bert "$token")")
done
report masking_simcse "MNTP mask ratio x strategy, then SimCSE ($MODEL; seeds $SEEDS; MNTP $MNTP_STEPS, SimCSE $SIMCSE_STEPS steps)" \
  "${grid[@]}"
report mask_token_simcse "MNTP mask token, then SimCSE ($MODEL; seeds $SEEDS; MNTP $MNTP_STEPS, SimCSE $SIMCSE_STEPS steps)" \
  "${tokens[@]}"
