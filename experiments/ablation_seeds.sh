#!/usr/bin/env bash
# The paper's main ablation with seeds: {Uni, Echo, Bi, Bi+MNTP, Bi+SimCSE (no MNTP), Bi+MNTP+SimCSE}
# x {mean, weighted_mean, eos_token} on STS-B, and the word-level probes (UPOS, deprel on UD English
# EWT: eval=probes_ud) of Uni, Bi, Bi+MNTP and Bi+MNTP+SimCSE (mean pooling; label shift after MNTP,
# and Bi+MNTP without it too).
# MNTP on WikiText, SimCSE on Wiki1M: no STS sentence is trained on. Untrained rows run once (they do
# not depend on the seed); every trained one once per seed. Settings: experiments/common.sh.
#   experiments/ablation_seeds.sh                                     # SmolLM2-135M, 3 seeds, 1,000 steps a stage
#   MNTP_STEPS=250 SIMCSE_STEPS=250 POOLINGS=mean experiments/ablation_seeds.sh    # a shorter cut
#   MNTP_STEPS=250 SIMCSE_STEPS=250 SIMCSE_POOLINGS=mean experiments/ablation_seeds.sh  # SimCSE rows with mean only
#   MODEL=gemma3_270m RECIPE="model.attn_implementation=eager model.lora.lora_dropout=0.0" experiments/ablation_seeds.sh
#   SMOKE=1 experiments/ablation_seeds.sh                             # the tiny model, 2 steps: a check in minutes
source "$(dirname "$0")/common.sh"
OUT=$RUNS/ablation-$MODEL
MNTP=$(mntp_dir "$MNTP_STEPS")
TEMPERATURE=${TEMPERATURE:-0.05}   # the paper's SimCSE temperature and attention dropout
DROPOUT=${DROPOUT:-0.3}
# The SimCSE rows (the costly ones) for these poolings only; the untrained and Bi+MNTP rows for all.
SIMCSE_POOLINGS=${SIMCSE_POOLINGS:-$POOLINGS}

train_mntp "$MNTP_STEPS"
sts_runs=()
for pooling in ${POOLINGS//,/ }; do
  for variant in uni echo bi; do
    # shellcheck disable=SC2086
    run_once "$OUT/untrained/$variant-$pooling" variant=$variant pooling=$pooling $EVAL_ARGS
    sts_runs+=("$OUT/untrained/$variant-$pooling")
  done
  for seed in $SEED_LIST; do
    # shellcheck disable=SC2086
    run_once "$OUT/bi_mntp-$pooling/seed$seed" variant=bi_mntp pooling=$pooling seed=$seed \
      "mntp_run=$MNTP/seed\${seed}" +mntp_steps="$MNTP_STEPS" $EVAL_ARGS
  done
  sts_runs+=("$OUT/bi_mntp-$pooling")
  if [[ ",$SIMCSE_POOLINGS," == *",$pooling,"* ]]; then
    train_simcse 0 "$pooling" "$TEMPERATURE" "$DROPOUT"
    train_simcse "$MNTP_STEPS" "$pooling" "$TEMPERATURE" "$DROPOUT"
    sts_runs+=("$(simcse_dir 0 "$pooling" "$TEMPERATURE" "$DROPOUT")"
               "$(simcse_dir "$MNTP_STEPS" "$pooling" "$TEMPERATURE" "$DROPOUT")")
  fi
done

# Word-level probes: pooling plays no part; MNTP-trained encoders are probed with the label shift.
SIMCSE_RUN=$(simcse_dir "$MNTP_STEPS" "$FIRST_POOLING" "$TEMPERATURE" "$DROPOUT")
# shellcheck disable=SC2086
{
  run_once "$OUT/probes/uni" variant=uni eval=probes_ud $PROBE_ARGS
  run_once "$OUT/probes/bi" variant=bi eval=probes_ud $PROBE_ARGS
  for seed in $SEED_LIST; do
    run_once "$OUT/probes/bi_mntp/seed$seed" variant=bi_mntp seed=$seed "mntp_run=$MNTP/seed\${seed}" \
      eval=probes_ud eval.shift_labels=true $PROBE_ARGS
    # ...and without the shift: each token's own state, as for the untrained rows
    run_once "$OUT/probes/bi_mntp_noshift/seed$seed" variant=bi_mntp seed=$seed "mntp_run=$MNTP/seed\${seed}" \
      eval=probes_ud $PROBE_ARGS
  done
  finish_runs  # the SimCSE runs probed next
  for seed in $SEED_LIST; do
    run_once "$OUT/probes/bi_mntp_simcse/seed$seed" variant=bi_mntp_simcse stage=eval seed=$seed \
      "stage.init_from=$SIMCSE_RUN/seed\${seed}" eval=probes_ud eval.shift_labels=true $PROBE_ARGS
  done
}

report ablation "Main ablation, STS-B ($MODEL; seeds $SEEDS; MNTP $MNTP_STEPS, SimCSE $SIMCSE_STEPS steps)" "${sts_runs[@]}"
report ablation_probes "Word-level probes, UD English EWT ($MODEL; seeds $SEEDS; MNTP $MNTP_STEPS, SimCSE $SIMCSE_STEPS steps)" \
  "$OUT/probes"
