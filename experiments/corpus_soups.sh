#!/usr/bin/env bash
# Soups of SimCSE runs on different data from one MNTP run (experiment=gemma3_wiki_soup and the soups
# it was chosen among): per seed, the SimCSE runs named in SOUPS start from that seed's MNTP run
# (trained when missing, shared with the other sweeps), `python -m llm2vec.soup` averages their
# weights, and `run.py stage=eval` scores the soup read at layer 13, without and with the STS
# instruction. Ingredients (make run's SimCSE, one change each): wiki1m (make run's), wikitext
# (data=wiki_sentences), rtd (DiffCSE, weight 0.005), max16 / min6 (Wiki1M sentences of at most 16 /
# at least 6 words), wiki1m_instr / wikitext_instr (wiki1m / wikitext with the STS instruction on one
# view of each sentence, stage.module.instruction). Settings: experiments/common.sh.
#   MODEL=gemma3_270m RECIPE="experiment=smollm2_cpu compile_layers=false" MNTP_STEPS=250 SIMCSE_STEPS=125 \
#     SOUPS="wiki1m+wikitext wiki1m+wikitext+rtd wiki1m+wikitext+max16+min6 wiki1m+wikitext+rtd+max16+min6" \
#     experiments/corpus_soups.sh
#   SMOKE=1 experiments/corpus_soups.sh
source "$(dirname "$0")/common.sh"
SOUPS=${SOUPS:-wiki1m+wikitext}
LAYER=${LAYER:-13}
INSTRUCTION=${INSTRUCTION:-Retrieve semantically similar text:}
if [ -n "${SMOKE:-}" ]; then
  LAYER=1
fi

# ingredient <name>: sets TAG and ARGS, the SimCSE run's dir suffix and overrides, and EXTRA, overrides
# with spaces in them
ingredient() {
  local wiki1m="data=wiki1m data.batch_size=32 data.group_by_length=false stage.module.optimizer.lr=3e-4"
  local wikitext="data=wiki_sentences data.batch_size=32 data.group_by_length=false stage.module.optimizer.lr=3e-4"
  if [ -n "${SMOKE:-}" ]; then  # the fixture sentences, the two corpora told apart by temperature
    wiki1m="data=tiny_sentences"
    wikitext="data=tiny_sentences stage.module.temperature=0.2"
  fi
  EXTRA=()
  case $1 in
    wiki1m) TAG=-random; ARGS=$wiki1m;;
    wikitext) TAG=-random-wikitext; ARGS=$wikitext;;
    rtd) TAG=-random-rtd0.005; ARGS="$wiki1m stage.module.replaced_token_weight=0.005";;
    max16) TAG=-random-max16; ARGS="$wiki1m data.max_words=16";;
    min6) TAG=-random-min6; ARGS="$wiki1m data.min_words=6";;
    wiki1m_instr|wikitext_instr) ingredient "${1%_instr}"; TAG=$TAG-instr
                                 EXTRA=("stage.module.instruction='$INSTRUCTION'");;
    *) echo "unknown ingredient $1: wiki1m, wikitext, rtd, max16, min6, wiki1m_instr or wikitext_instr" >&2
       exit 2;;
  esac
}

train_mntp "$MNTP_STEPS"
runs=()
for soup in $SOUPS; do
  dirs=()
  for name in ${soup//+/ }; do
    ingredient "$name"
    SIMCSE_TAG=$TAG SIMCSE_ARGS=$ARGS train_simcse "$MNTP_STEPS" mean 0.1 0.3 0.2 bert blank "${EXTRA[@]}"
    dirs+=("$(SIMCSE_TAG=$TAG simcse_dir "$MNTP_STEPS" mean 0.1 0.3)")
  done
  finish_runs
  OUT=$RUNS/wiki_recipe-$MODEL/soup-$soup
  for seed in $SEED_LIST; do
    if [ ! -f "$OUT/encoder/seed$seed/llm2vec_config.json" ]; then
      # shellcheck disable=SC2046
      $PYTHON -m llm2vec.soup $(for d in "${dirs[@]}"; do echo "$d/seed$seed"; done) --out "$OUT/encoder/seed$seed"
    fi
  done
  eval_saved "$OUT-layer$LAYER/no_instruction" "$OUT/encoder" "pooling_layers=[$LAYER]"
  eval_saved "$OUT-layer$LAYER/sts_instruction" "$OUT/encoder" "pooling_layers=[$LAYER]" "eval.instruction='$INSTRUCTION'"
  runs+=("$OUT-layer$LAYER/no_instruction" "$OUT-layer$LAYER/sts_instruction")
done
report corpus_soups "Soups of SimCSE runs on different data from one MNTP run, stage=eval on each seed's soup read at layer $LAYER ($MODEL; seeds $SEEDS; MNTP $MNTP_STEPS, SimCSE $SIMCSE_STEPS steps)" \
  "${runs[@]}"
