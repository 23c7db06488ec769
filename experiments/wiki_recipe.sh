#!/usr/bin/env bash
# The Wikipedia-only recipe (experiment=smollm2_wiki: MNTP on WikiText-2, SimCSE on Wiki1M, no STS
# sentence trained on), scored as a user scores it: `run.py stage=eval` on each seed's saved encoder,
# STS-B dev/test without an instruction and with the paper's STS instruction. The trained runs are the
# Bi+MNTP+SimCSE (mean pooling) runs the other sweeps share (ablation_seeds.sh makes them at the
# paper's temperature 0.05, simcse_seeds.sh at others; trained here when missing). The recipe's
# temperature is 0.1 (chosen on STS-B dev); TEMPERATURE=0.05 scores the paper's setting.
# Settings: experiments/common.sh.
#   MNTP_STEPS=250 SIMCSE_STEPS=250 experiments/wiki_recipe.sh
#   MNTP_STEPS=250 SIMCSE_STEPS=250 TEMPERATURE=0.05 experiments/wiki_recipe.sh   # the paper's temperature
#   MNTP_STEPS=0 SIMCSE_STEPS=125 experiments/wiki_recipe.sh    # no MNTP: Bi + SimCSE
#   SOUP=1 MNTP_STEPS=250 SIMCSE_STEPS=125 experiments/wiki_recipe.sh  # and the seeds' model soup, scored too
#   SMOKE=1 experiments/wiki_recipe.sh
source "$(dirname "$0")/common.sh"
TEMPERATURE=${TEMPERATURE:-0.1}
DROPOUT=${DROPOUT:-0.3}
INSTRUCTION=${INSTRUCTION:-Retrieve semantically similar text:}
SETTING=""  # the paper's values keep the short names
if [ "$TEMPERATURE-$DROPOUT" != "0.05-0.3" ]; then
  SETTING=-t$TEMPERATURE-d$DROPOUT
fi
OUT=$RUNS/wiki_recipe-$MODEL/mntp$MNTP_STEPS-simcse$SIMCSE_STEPS$SETTING

train_mntp "$MNTP_STEPS"
train_simcse "$MNTP_STEPS" mean "$TEMPERATURE" "$DROPOUT"
finish_runs  # evaluated next
TRAINED=$(simcse_dir "$MNTP_STEPS" mean "$TEMPERATURE" "$DROPOUT")
eval_saved "$OUT/no_instruction" "$TRAINED"
eval_saved "$OUT/sts_instruction" "$TRAINED" "eval.instruction='$INSTRUCTION'"
runs=("$OUT/no_instruction" "$OUT/sts_instruction")
if [ -n "${SOUP:-}" ]; then
  # one encoder with the mean of the seeds' weights (llm2vec.soup), scored like each seed
  if [ ! -f "$OUT/soup_encoder/llm2vec_config.json" ]; then
    # shellcheck disable=SC2046
    $PYTHON -m llm2vec.soup $(for seed in $SEED_LIST; do echo "$TRAINED/seed$seed"; done) --out "$OUT/soup_encoder"
  fi
  # shellcheck disable=SC2086
  run_once "$OUT/soup/no_instruction" stage=eval "stage.init_from=$OUT/soup_encoder" $EVAL_ARGS
  # shellcheck disable=SC2086
  run_once "$OUT/soup/sts_instruction" stage=eval "stage.init_from=$OUT/soup_encoder" \
    "eval.instruction='$INSTRUCTION'" $EVAL_ARGS
  runs+=("$OUT/soup/no_instruction" "$OUT/soup/sts_instruction")
fi
report "wiki_recipe$SETTING" "Wikipedia-only recipe, stage=eval on the saved encoders ($MODEL; seeds $SEEDS; MNTP $MNTP_STEPS, SimCSE $SIMCSE_STEPS steps, temperature $TEMPERATURE, dropout $DROPOUT)" \
  "${runs[@]}"
