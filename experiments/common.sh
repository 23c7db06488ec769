# Sourced by the seeded sweeps (ablation_seeds.sh, mntp_contribution.sh, masking_simcse.sh,
# simcse_seeds.sh): their settings from the environment, and the runs they share.
#
# Every run is one `python run.py ... hydra.run.dir=<dir>`, skipped when <dir>/metrics.json exists
# (continued from its checkpoint when it was killed), so a sweep can be stopped and restarted, and
# the sweeps share runs: the MNTP runs (by steps and masking) and the SimCSE runs (by MNTP run,
# pooling, temperature, dropout and steps) live under $RUNS/<model>/ whichever sweep made them.
# Seeded runs pass `seed=N` and name seed-dependent inputs through `${seed}` (e.g.
# 'mntp_run=<dir>/seed${seed}'), so the seeds of one setting have the same overrides but the seed
# and `python -m llm2vec.compare` makes them one row (mean, 95% CI).
#
# Environment (defaults: SmolLM2-135M on this CPU at the paper's 1,000 steps per stage):
#   MODEL, TRAINER, RECIPE      model and trainer configs; overrides for every run (RECIPE= for GPUs)
#   SEEDS=1,2,3                 seeds of every trained setting (untrained rows are deterministic: once)
#   MNTP_STEPS, SIMCSE_STEPS    steps per stage
#   MNTP_ARGS, SIMCSE_ARGS      per-stage overrides (data: WikiText for MNTP, Wiki1M for SimCSE)
#   SIMCSE_TAG                  appended to the SimCSE runs' dir names: set it with overrides that
#                               change training beyond what the names say (e.g. -lr1e-3)
#   EVAL_ARGS, PROBE_ARGS       overrides of the STS evaluation, of eval=probes_ud
#   RUNS, RESULTS               where runs and the compare reports go
#   JOBS=1                      runs at a time: on a GPU several small-model runs share it (each
#                               run's output then goes to <run dir>.log; the seeds of a stage run
#                               side by side, and a stage starts once the one it needs is done)
#   SMOKE=1                     the tiny random model, fixture data, 2 steps, 2 seeds: a script end to
#                               end in minutes, reports under experiments/runs/smoke (not committed)
set -euo pipefail
set -f  # overrides hold [ ] * : never file-name patterns
cd "$(dirname "${BASH_SOURCE[0]}")/.."

if [ -n "${SMOKE:-}" ]; then
  MODEL=${MODEL:-tiny_llama}
  RECIPE=${RECIPE-}
  SEEDS=${SEEDS:-1,2}
  MNTP_STEPS=${MNTP_STEPS:-2}
  SIMCSE_STEPS=${SIMCSE_STEPS:-2}
  MNTP_ARGS=${MNTP_ARGS-data=tiny_blocks}
  SIMCSE_ARGS=${SIMCSE_ARGS-data=tiny_sentences}
  EVAL_ARGS=${EVAL_ARGS-"eval.tasks=[{name:STSB-test,path:tests/fixtures/sts_tiny.tsv}]"}
  PROBE_ARGS=${PROBE_ARGS-eval.max_train_sentences=20 eval.max_eval_sentences=10}
  RUNS=${RUNS:-experiments/runs/smoke}
  RESULTS=${RESULTS:-experiments/runs/smoke/results}
fi
MODEL=${MODEL:-smollm2_135m}
TRAINER=${TRAINER:-cpu}
RECIPE=${RECIPE-experiment=smollm2_cpu}
SEEDS=${SEEDS:-1,2,3}
MNTP_STEPS=${MNTP_STEPS:-1000}
SIMCSE_STEPS=${SIMCSE_STEPS:-1000}
# MNTP: WikiText-2 blocks of 8 x 128 tokens. SimCSE: 32 Wiki1M sentences a batch, grouped by length.
MNTP_ARGS=${MNTP_ARGS-data=wiki_blocks stage.module.optimizer.lr=2e-4}
SIMCSE_ARGS=${SIMCSE_ARGS-data=wiki1m data.batch_size=32 data.group_by_length=true stage.module.optimizer.lr=3e-4}
EVAL_ARGS=${EVAL_ARGS-}
PROBE_ARGS=${PROBE_ARGS-eval.max_train_sentences=1000 eval.max_eval_sentences=1000}
POOLINGS=${POOLINGS:-mean,weighted_mean,eos_token}
RUNS=${RUNS:-experiments/runs}
RESULTS=${RESULTS:-experiments/results}
PYTHON=${PYTHON:-python}
SHARED=$RUNS/$MODEL            # runs the sweeps share
SEED_LIST=${SEEDS//,/ }
FIRST_POOLING=${POOLINGS%%,*}
JOBS=${JOBS:-1}
FAILED_RUNS=0

# run_once <run dir> <overrides...>: one run.py run, unless <run dir> holds a finished one. With
# JOBS > 1 it starts the run in the background (once fewer than JOBS run) and returns.
run_once() {
  local dir=$1
  shift
  if [ -f "$dir/metrics.json" ]; then
    echo "== done already: $dir"
    return
  fi
  local resume=()
  if [ -f "$dir/checkpoints/last.ckpt" ]; then
    resume=(resume=true)
  fi
  echo "== $dir"
  # shellcheck disable=SC2086  # RECIPE and the *_ARGS are lists of overrides
  local command=($PYTHON run.py model="$MODEL" trainer="$TRAINER" $RECIPE "$@" "${resume[@]}" hydra.run.dir="$dir")
  if [ "$JOBS" -le 1 ]; then
    "${command[@]}"
    return
  fi
  while [ "$(jobs -rp | wc -l)" -ge "$JOBS" ]; do
    wait -n || FAILED_RUNS=$((FAILED_RUNS + 1))
  done
  mkdir -p "$(dirname "$dir")"
  "${command[@]}" >"$dir.log" 2>&1 &
}

# finish_runs: wait for the runs started in the background; stop the sweep if one failed.
finish_runs() {
  local pid
  for pid in $(jobs -p); do
    wait "$pid" || FAILED_RUNS=$((FAILED_RUNS + 1))
  done
  if [ "$FAILED_RUNS" -gt 0 ]; then
    echo "$FAILED_RUNS run(s) failed: see the <run dir>.log files" >&2
    exit 1
  fi
}

# mntp_dir <steps> [ratio strategy token]: where the MNTP runs of that recipe live (one per seed).
mntp_dir() {
  echo "$SHARED/mntp-$1steps-r${2:-0.2}-${3:-bert}-${4:-blank}"
}

# train_mntp <steps: 0 = none> [ratio strategy token]: the MNTP run of every seed (the model config's
# masking recipe is SmolLM2's and the paper's: 0.2, BERT 80/10/10, the blank token).
train_mntp() {
  if [ "$1" = 0 ]; then
    return  # Bi + SimCSE: train_simcse starts from the base model
  fi
  local dir
  dir=$(mntp_dir "$@")
  for seed in $SEED_LIST; do
    # shellcheck disable=SC2086
    run_once "$dir/seed$seed" stage=mntp seed="$seed" trainer.max_steps="$1" model.mask_ratio="${2:-0.2}" \
      model.mask_strategy="${3:-bert}" model.mask_token_type="${4:-blank}" $MNTP_ARGS $EVAL_ARGS
  done
  finish_runs  # what follows trains on or evaluates these runs
}

# train_simcse <mntp steps: 0 = none> <pooling> <temperature> <dropout> [ratio strategy token [overrides...]]:
# SimCSE for every seed, on the MNTP run of the same seed (Bi+MNTP+SimCSE) or on the base model
# (Bi+SimCSE, MNTP steps 0); overrides after the masking recipe are passed as they are (one word each,
# spaces allowed: name the run with SIMCSE_TAG). Prints nothing; simcse_dir says where.
simcse_dir() {
  echo "$SHARED/simcse-$SIMCSE_STEPS-mntp$1-r${5:-0.2}-${6:-bert}-${7:-blank}-$2-t$3-d$4${SIMCSE_TAG:-}"
}

train_simcse() {
  local dir mntp
  dir=$(simcse_dir "$@")
  local base=(trainer.max_steps="$SIMCSE_STEPS" pooling="$2" stage.module.temperature="$3"
              stage.module.attention_dropout="$4" +mntp_steps="$1")
  if [ "$1" = 0 ]; then
    base+=(variant=bi_simcse)
  else
    mntp=$(mntp_dir "$1" "${5:-0.2}" "${6:-bert}" "${7:-blank}")
    base+=(variant=bi_mntp_simcse "mntp_run=$mntp/seed\${seed}" model.mask_ratio="${5:-0.2}"
           model.mask_strategy="${6:-bert}" model.mask_token_type="${7:-blank}")
  fi
  for seed in $SEED_LIST; do
    # shellcheck disable=SC2086
    run_once "$dir/seed$seed" seed="$seed" "${base[@]}" $SIMCSE_ARGS $EVAL_ARGS "${@:8}"
  done
}

# eval_saved <out setting dir> <trained setting dir> [overrides...]: `stage=eval` of each seed's saved
# encoder, as a user scores it (the trained runs must be finished: finish_runs first).
eval_saved() {
  local out=$1 trained=$2
  shift 2
  for seed in $SEED_LIST; do
    # shellcheck disable=SC2086
    run_once "$out/seed$seed" stage=eval seed="$seed" "stage.init_from=$trained/seed\${seed}" "$@" $EVAL_ARGS
  done
}

# report <name> <title> <run dirs...>: the table, plots and HTML page in $RESULTS/<name>-$MODEL.
report() {
  local name=$1 title=$2
  shift 2
  finish_runs
  $PYTHON -m llm2vec.compare "$@" --out "$RESULTS/$name-$MODEL" --title "$title"
}
