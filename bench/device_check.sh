#!/usr/bin/env bash
# Issue 14's accelerator checks in one run: the train step's speed and MFU by batch size, with
# and without the aux head, the candidate speed-ups against it and a profile of its top ops
# (bench/train_step.py); then the real training loop end to end on synthetic drops stored
# pre-scaled (configs/synthetic_599.py): input-bound or step-bound, and the device's idle share.
#
#   bench/device_check.sh            on the accelerator machine, from the repository root
#   bench/device_check.sh --dry-run  on a CPU: a tiny model at 151 px, a few steps, every stage
#
# Every result is a JSON line on stdout and in $OUT/device_check.jsonl ($OUT: the device tool's
# output folder; /tmp/marco_device_check when unset); each stage's log is $OUT/<stage>.log.
# Stages: env; wheels (.whl/*.whl, the packages the machine lacks, installed to a temporary
# --target; protobuf only where the machine's is older than the carried tensorflow_metadata
# needs); imports; train_step (bench/train_step.py; a deadline skips what would not fit);
# data (the carried .devdata/tfds, else built there); e2e (python -m marco_jax.main); summary.
# The run keeps to DEVICE_CHECK_BUDGET_S (400 s on the device; 470 s at worst) after the
# machine's start: bench/train_step.py gets what the end-to-end run's reserve (E2E_RESERVE_S,
# 150 s) leaves. For a second pass: DEVICE_CHECK_BENCH_ARGS is appended to bench/train_step.py's
# flags (e.g. "--per_device_batch=128 --variants=bn_one_pass --nono_aux_sweep"), and
# DEVICE_CHECK_SKIP_E2E=1 skips the data and end-to-end stages (the bench gets their time).
set -uo pipefail

emit() { echo "$1" | tee -a "$LINES"; }

# Runs a Python stage: its JSON lines to stdout and $LINES, all its output to $OUT/<name>.log.
stage() {
  local name=$1
  shift
  "$@" 2>"$OUT/$name.log" | tee -a "$OUT/$name.log" | grep --line-buffered '^{' | tee -a "$LINES"
  local rc=${PIPESTATUS[0]}
  [[ $rc -eq 0 ]] || emit "{\"stage\": \"$name\", \"exit_code\": $rc, \"log\": \"$OUT/$name.log\"}"
}

settings() {
  CONFIG=configs/synthetic_599.py
  if [[ $MODE == dry ]]; then
    # The release network's every block, shrunk: 151 px, depth x0.1, f32 (bf16 is slow on CPUs).
    MODEL=(--config.model.image_size=151 --config.model.depth_multiplier=0.1
      --config.model.min_depth=8 --config.model.compute_dtype=float32)
    DATA=(--config.dataset.config_overrides.num_train=16
      --config.dataset.config_overrides.num_test=4 --config.dataset.config_overrides.image_size=160)
    # 16 train images / 4 = 4 steps an epoch, as the training run has it (shared compile). No
    # variant: each is one more compile of the network (tests/bench checks them all cheaply).
    BENCH=(--compute_dtype=float32 --per_device_batch=4 --baseline_batch=4 --steps=2 --repeats=1
      --variants=none --nono_aux_sweep --profile_steps=1 --top_ops=5 --compile_threads=1
      --steps_per_epoch=4)
    # A dry run checks the plumbing, not the speed: XLA's cheapest CPU code generation.
    export XLA_FLAGS="${XLA_FLAGS:-} --xla_backend_optimization_level=0 \
--xla_llvm_disable_expensive_passes=true"
    E2E=(--config.input.global_batch_size=4 --config.input.eval_batch_size=4
      --config.num_train_steps=6 --config.log_every_steps=2 --config.eval_every_steps=6
      --config.checkpoint_every_steps=6 --config.input.num_workers=1)
    STEADY=4
    DATA_DIR="$WORK/tfds"
    BUDGET="${DEVICE_CHECK_BUDGET_S:-3600}" # CPU compiles take minutes on a busy machine
  else
    MODEL=()
    DATA=()
    # 640 train images / 128 = 5 steps an epoch, as the training run has it (shared compile).
    BENCH=(--compute_dtype=bfloat16 --per_device_batch=128,256,64,32 --baseline_batch=128
      --variants=all --profile_steps=3 --top_ops=25 --compile_threads=4 --steps_per_epoch=5)
    E2E=()
    STEADY=30
    DATA_DIR="$REPO/.devdata/tfds"
    [[ -d $DATA_DIR ]] || DATA_DIR="$WORK/tfds"
    BUDGET="${DEVICE_CHECK_BUDGET_S:-400}"
  fi
}

install_wheels() {
  shopt -s nullglob
  local wheels=() protobuf=("$REPO"/.whl/protobuf-*.whl) wheel
  for wheel in "$REPO"/.whl/*.whl; do
    [[ $(basename "$wheel") == protobuf-* ]] || wheels+=("$wheel")
  done
  if [[ ${#wheels[@]} -eq 0 ]]; then
    emit '{"stage": "wheels", "skipped": "no .whl/*.whl"}'
    return
  fi
  if ! $PY -c 'import sys; sys.exit(sys.version_info[:2] != (3, 12))'; then
    emit '{"stage": "wheels", "skipped": "the wheels are for Python 3.12"}'
    return
  fi
  # tensorflow_metadata's generated code needs protobuf >= 6.31; a newer one stays.
  if [[ ${#protobuf[@]} -gt 0 ]] && $PY -c 'import sys, google.protobuf as p
sys.exit(tuple(map(int, p.__version__.split(".")[:2])) >= (6, 31))' 2>/dev/null; then
    wheels+=("${protobuf[@]}")
  fi
  local t0=$SECONDS
  if $PY -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
    --target "$WORK/site" "${wheels[@]}" >"$OUT/wheels.log" 2>&1; then
    export PYTHONPATH="$WORK/site:$PYTHONPATH"
    emit "{\"stage\": \"wheels\", \"installed\": ${#wheels[@]}, \"seconds\": $((SECONDS - t0))}"
  else
    emit "{\"stage\": \"wheels\", \"error\": \"pip failed\", \"log\": \"$OUT/wheels.log\"}"
  fi
}

main() {
  cd "$(dirname "$0")/.." || exit 2
  REPO=$PWD
  MODE=device
  if [[ "${1:-}" == "--dry-run" ]]; then
    MODE=dry
  elif [[ $# -gt 0 ]]; then
    echo "usage: bench/device_check.sh [--dry-run]" >&2
    exit 2
  fi
  OUT="${OUT:-/tmp/marco_device_check}"
  mkdir -p "$OUT"
  LINES="$OUT/device_check.jsonl"
  : >"$LINES"
  PY="${PYTHON:-python3}"
  E2E_RESERVE="${E2E_RESERVE_S:-150}"
  local skip_e2e="${DEVICE_CHECK_SKIP_E2E:-0}"
  [[ $skip_e2e == 1 ]] && E2E_RESERVE=0
  WORK="$(mktemp -d "${TMPDIR:-/tmp}/marco_device_check.XXXXXX")"
  trap 'rm -rf "$WORK"' EXIT
  SECONDS=0
  export PYTHONUNBUFFERED=1 PYTHONPATH="$REPO${PYTHONPATH:+:$PYTHONPATH}"
  # One compilation cache per run: the training run's step is the bench's baseline (same
  # config), and compile times stay cold however often the script runs on a warm machine.
  export JAX_COMPILATION_CACHE_DIR="$WORK/jax_cache"
  settings
  # shellcheck disable=SC2206  # word splitting wanted: extra flags for bench/train_step.py
  BENCH+=(${DEVICE_CHECK_BENCH_ARGS:-})

  local gpu
  gpu="$(nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.sm,clocks.max.sm \
    --format=csv,noheader 2>/dev/null | head -1 | tr -d '"')"
  emit "{\"stage\": \"env\", \"mode\": \"$MODE\", \"cpus\": $(nproc), \"gpu\": \"${gpu:-none}\", \
\"python\": \"$($PY -c 'import sys; print(sys.version.split()[0])')\", \"out\": \"$OUT\"}"

  install_wheels
  stage imports "$PY" bench/device_check.py imports

  # The bench starts no wave that would end after its deadline (by the longest wave so far);
  # its timeout is the hard stop, and the training run keeps at least its reserve.
  local deadline=$((BUDGET - E2E_RESERVE - SECONDS))
  ((deadline < 60)) && deadline=60
  stage train_step timeout $((deadline + 60)) "$PY" bench/train_step.py --config "$CONFIG" \
    "${MODEL[@]}" "${BENCH[@]}" --deadline_s="$deadline" --profile_dir="$WORK/trace"

  if [[ $skip_e2e == 1 ]]; then
    emit '{"stage": "e2e", "skipped": "DEVICE_CHECK_SKIP_E2E=1"}'
  else
    stage data "$PY" bench/device_check.py data --config "$CONFIG" "${MODEL[@]}" "${DATA[@]}" \
      --data_dir="$DATA_DIR"
    local left=$((BUDGET - SECONDS)) t0=$SECONDS rc
    ((left < E2E_RESERVE)) && left=$E2E_RESERVE
    timeout "$left" "$PY" -m marco_jax.main --config "$CONFIG" --workdir "$WORK/run" \
      --config.dataset.data_dir="$DATA_DIR" "${MODEL[@]}" "${DATA[@]}" "${E2E[@]}" \
      >"$OUT/e2e.log" 2>&1
    rc=$?
    emit "{\"stage\": \"e2e\", \"exit_code\": $rc, \"seconds\": $((SECONDS - t0)), \
\"log\": \"$OUT/e2e.log\"}"
  fi

  stage summary "$PY" bench/device_check.py summarize --config "$CONFIG" "${MODEL[@]}" \
    "${E2E[@]}" --workdir="$WORK/run" --bench_lines="$LINES" --steady_from=$STEADY
  emit "{\"stage\": \"done\", \"seconds\": $SECONDS}"
}

# Parsed whole before it runs, so that editing this file cannot change a run in progress.
main "$@"; exit
