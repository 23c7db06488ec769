#!/usr/bin/env bash
# Levers of the Wikipedia-only recipe (experiment=smollm2_wiki; experiments/wiki_recipe.sh), one change
# at a time against the recipe itself: MNTP MNTP_STEPS, SimCSE SIMCSE_STEPS steps on Wiki1M, batch 32,
# lr 3e-4, temperature 0.1, attention dropout 0.3, mean pooling. SEEDS defaults to 1 (a screen: the
# recipe keeps what wins on STS-B dev, then earns its seeds in wiki_recipe.sh). The SimCSE runs are
# shared with the other sweeps. LEVERS (comma-separated):
#   lr<x>        SimCSE peak learning rate x              dropout<x>  attention dropout x
#   temperature<x>  SimCSE temperature x
#   mntp0        SimCSE on Bi, no MNTP                    batch<n>    n sentences a batch (n/32 x the data,
#                                                                     embedded 32 at a time)
#   minwords<n>  SimCSE on the Wiki1M sentences of n or more words (names and headings dropped)
#   rank<n>      SimCSE LoRA rank n (alpha 2n, as the recipe's 16/32)
#   steps2x      twice the SimCSE steps, the STS-B scores every SIMCSE_STEPS/2 steps (the score-vs-minutes curve)
#   wr<x>        word repetition (ESimCSE) at rate x on the second view of each SimCSE sentence
#   hd<x>        hidden dropout x (BERT's, on each layer's attention and MLP outputs) besides the attention dropout
#   warmup<n>    n steps of linear learning-rate warmup (the recipe has none)
#   margin<x>    ArcCSE's angular margin of x radians on the positives
#   instruction  the STS instruction on the first view of each SimCSE sentence; it and the recipe are
#                also scored with the instruction (stage=eval on the saved encoders)
# Settings: experiments/common.sh.
#   MNTP_STEPS=250 SIMCSE_STEPS=250 experiments/wiki_levers.sh
#   MNTP_STEPS=250 SIMCSE_STEPS=250 LEVERS=lr1e-3 SEEDS=2,3 experiments/wiki_levers.sh
#   SMOKE=1 SEEDS=1 experiments/wiki_levers.sh
SEEDS=${SEEDS:-1}
source "$(dirname "$0")/common.sh"
TEMPERATURE=${TEMPERATURE:-0.1}
DROPOUT=${DROPOUT:-0.3}
if [ -n "${SMOKE:-}" ]; then
  LEVERS=${LEVERS:-lr1e-3,dropout0.1,temperature0.2,mntp0,steps2x,batch8,instruction,minwords2,rank4,wr0.32,hd0.1,warmup1,margin0.1}  # twelve fixture sentences
fi
LEVERS=${LEVERS:-lr1e-3,instruction,steps2x,dropout0.1,dropout0.5,mntp0,batch64,minwords5}
INSTRUCTION=${INSTRUCTION:-Retrieve semantically similar text:}

# seed_dirs <setting dir>: the setting's run of each seed in SEEDS (the recipe's own setting has more
# seeds than a screen: the rows compare the same seeds)
seed_dirs() {
  for seed in $SEED_LIST; do
    echo "$1/seed$seed"
  done
}

train_mntp "$MNTP_STEPS"
train_simcse "$MNTP_STEPS" mean "$TEMPERATURE" "$DROPOUT"
mapfile -t runs < <(seed_dirs "$(simcse_dir "$MNTP_STEPS" mean "$TEMPERATURE" "$DROPOUT")")
for lever in ${LEVERS//,/ }; do
  mntp=$MNTP_STEPS temperature=$TEMPERATURE dropout=$DROPOUT steps=$SIMCSE_STEPS tag="" extra=()
  case $lever in
    lr*) tag=-$lever extra=("stage.module.optimizer.lr=${lever#lr}") ;;
    dropout*) dropout=${lever#dropout} ;;
    temperature*) temperature=${lever#temperature} ;;
    mntp0) mntp=0 ;;
    batch*) tag=-b${lever#batch} extra=("data.batch_size=${lever#batch}")
            # past 32, gradient caching: the same batch in the memory of 32 (Gemma-3's batches of 64
            # passed 24 GB without it)
            if [ "${lever#batch}" -gt 32 ]; then extra+=(stage.module.mini_batch_size=32); fi ;;
    rank*) tag=-r${lever#rank} extra=("model.lora.r=${lever#rank}" "model.lora.lora_alpha=$((2 * ${lever#rank}))") ;;
    minwords*) tag=-mw${lever#minwords} extra=("data.min_words=${lever#minwords}") ;;
    steps2x) steps=$((2 * SIMCSE_STEPS))
             extra=(callbacks=sts_curve "callbacks.sts_curve.every_n_train_steps=$((SIMCSE_STEPS / 2))") ;;
    wr*) tag=-$lever extra=("stage.module.word_repetition=${lever#wr}") ;;
    hd*) tag=-$lever extra=("stage.module.hidden_dropout=${lever#hd}") ;;
    warmup*) tag=-$lever extra=("stage.module.scheduler.num_warmup_steps=${lever#warmup}") ;;
    margin*) tag=-$lever extra=("stage.module.margin=${lever#margin}") ;;
    instruction) tag=-instruction extra=("stage.module.instruction='$INSTRUCTION'") ;;
    *) echo "unknown lever: $lever (see the header of $0)" >&2; exit 2 ;;
  esac
  SIMCSE_STEPS=$steps SIMCSE_TAG=$tag train_simcse "$mntp" mean "$temperature" "$dropout" 0.2 bert blank "${extra[@]}"
  mapfile -t -O "${#runs[@]}" runs < <(seed_dirs \
    "$(SIMCSE_STEPS=$steps SIMCSE_TAG=$tag simcse_dir "$mntp" mean "$temperature" "$dropout")")
done
if [[ ",$LEVERS," == *,instruction,* ]]; then
  # both encoders scored with the instruction, as a user evaluating on sts7 would
  finish_runs
  for trained in "$(simcse_dir "$MNTP_STEPS" mean "$TEMPERATURE" "$DROPOUT")" \
                 "$(SIMCSE_TAG=-instruction simcse_dir "$MNTP_STEPS" mean "$TEMPERATURE" "$DROPOUT")"; do
    eval_saved "$trained-eval_instruction" "$trained" "eval.instruction='$INSTRUCTION'"
    mapfile -t -O "${#runs[@]}" runs < <(seed_dirs "$trained-eval_instruction")
  done
fi
report "wiki_levers-s${SEEDS//,/}" "Wikipedia-only recipe, one lever at a time ($MODEL; seeds $SEEDS; MNTP $MNTP_STEPS, SimCSE $SIMCSE_STEPS steps, temperature $TEMPERATURE, dropout $DROPOUT)" \
  "${runs[@]}"
