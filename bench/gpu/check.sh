#!/usr/bin/env bash
# GPU proof kit: one command that proves every CUDA path of cxrkit and measures training
# speed on a borrowed GPU machine, in at most ~9 minutes, with no network.
#
#   bash bench/gpu/check.sh             # on the GPU machine, from the repository root
#   bash bench/gpu/check.sh --dry-run   # the same steps on a CPU, tiny sizes, <= 3 min
#
# No venv, no torch install: the image's own Python and CUDA torch are used; the wheels of
# .whl/ (bench/gpu/fetch_wheels.sh) go into a target folder, and PYTHONPATH is that folder
# plus src/. Steps (each time-boxed with `timeout`; a failure is recorded and the script
# goes on; later steps get less time if earlier ones ran long, so the whole stays in budget):
#   0 wheels   install .whl/ into the target folder (dry run: plan only unless they fit)
#   1 env      GPU, memory, driver, torch/CUDA/cuDNN versions, bf16 support, Python, cores
#   2 pytest   tests/test_cuda.py (pytest -m cuda and the CPU twins); pytest_slow: its
#              torch.compile and torchrun/NCCL tests, in a step of their own
#   3 cache    ~20,000-image 256-px phantom release (drawn, then replicated) prepared
#              with all cores: prepare's images/s
#   4 bench    bench/bench_train.py --device cuda with the real loader: densenet121 (batch
#              256), resnet50, mobilenet_v3_large, vit_small_patch16_224
#   5 train    2-epoch DenseNet121 (CheXNet recipe) training + evaluation through the CLI
#   6 serve    bench/bench_serve.py on that checkpoint with --device cuda: 1, 4 and 16 HTTP
#              clients against `cxrkit serve`, batched (the default) vs --max-batch 1
# Everything goes to $OUT/gpu_report.md and $OUT/gpu_report.json (+ each step's log in
# $OUT/logs/); each step's tail is printed. $OUT defaults to ./gpu-report (git-ignored).
# Environment: PYTHON (default python3), OUT, BUDGET_S (default 540; dry run 180), WHEELS
# (default ./.whl), STEP_SCALE (multiplies each step's limit: a busy CPU for the dry run),
# CXRKIT_GPU_WORK (scratch folder; default a new one under /tmp, removed at the end
# unless KEEP_WORK=1).
set -uo pipefail
cd "$(dirname "$0")/../.."
REPO="$PWD"
MODE=real
[[ "${1:-}" == "--dry-run" ]] && MODE=dry
[[ $# -gt 0 && "$MODE" != dry ]] && { echo "usage: bash bench/gpu/check.sh [--dry-run]" >&2; exit 2; }

export PY="${PYTHON:-python3}"
export OUT="${OUT:-$REPO/gpu-report}"
export WORK="${CXRKIT_GPU_WORK:-$(mktemp -d /tmp/cxrkit-gpu.XXXXXX)}"
export MODE REPO
mkdir -p "$OUT/logs" "$WORK"
OUT="$(cd "$OUT" && pwd)"
rm -f "$OUT/steps.tsv" "$OUT"/*.json "$OUT/gpu_report.md" "$OUT/pytest.xml"
CORES=$(nproc 2>/dev/null || echo 4)
export CORES
if [[ $MODE == real ]]; then BUDGET="${BUDGET_S:-540}"; else BUDGET="${BUDGET_S:-180}"; fi
RESERVE=15   # seconds kept for the report at the end
T0=$(date +%s)
export PYTHONUNBUFFERED=1 CUBLAS_WORKSPACE_CONFIG=:4096:8 MPLBACKEND=Agg
export TQDM_DISABLE=1 TQDM_MININTERVAL=30
export SITE="$WORK/site" WHEELS="${WHEELS:-$REPO/.whl}"
export PYTHONPATH="$SITE:$REPO/src${PYTHONPATH:+:$PYTHONPATH}"

echo "cxrkit GPU proof kit, mode $MODE, budget ${BUDGET}s, python $PY, out $OUT, work $WORK"

# step NAME LIMIT_S FUNCTION: run FUNCTION under `timeout`, log it, record the outcome
step() {
  local name=$1 limit=$(( $2 * ${STEP_SCALE:-1} )) fn=$3
  local left=$(( BUDGET - ($(date +%s) - T0) - RESERVE ))
  (( limit > left )) && limit=$left
  echo ""
  echo "=== step $name (limit ${limit}s, $(( $(date +%s) - T0 ))s elapsed) ==="
  if (( limit < 5 )); then
    echo "skipped: out of time"
    printf '%s\tskipped\t-\t0\t%s\n' "$name" "$limit" >> "$OUT/steps.tsv"
    return 1
  fi
  local t1 rc status
  t1=$EPOCHREALTIME
  timeout -k 10 "$limit" bash -c "$fn" > "$OUT/logs/$name.log" 2>&1
  rc=$?
  case $rc in
    0) status=ok ;;
    124|137) status=timeout ;;
    *) status=failed ;;
  esac
  local dt
  dt=$(awk -v a="$t1" -v b="$EPOCHREALTIME" 'BEGIN { printf "%.1f", b - a }')
  tail -n 25 "$OUT/logs/$name.log"
  echo "--- step $name: $status (exit $rc, ${dt%.*}s)"
  printf '%s\t%s\t%s\t%s\t%s\n' "$name" "$status" "$rc" "$dt" "$limit" >> "$OUT/steps.tsv"
  return $rc
}

# -- the steps (exported: each runs in its own `bash -c` under `timeout`) --------------------
wheels() {
  set -e
  local plan=""
  if [[ $MODE == dry ]]; then
    # a dev environment has everything already: install only where the wheels fit this Python
    "$PY" bench/gpu/install_wheels.py --target "$SITE" --wheels "$WHEELS" --plan-only \
      --json "$OUT/wheels.json" || plan=1
    if [[ -n $plan ]]; then
      echo "dry run: $WHEELS absent or for another Python; plan only"
      "$PY" - "$OUT/wheels.json" <<'PYEOF'
import json, sys
p = json.load(open(sys.argv[1])); p["dry_run_note"] = "plan only: no usable wheels here"
json.dump(p, open(sys.argv[1], "w"), indent=1)
PYEOF
      return 0
    fi
  fi
  "$PY" bench/gpu/install_wheels.py --target "$SITE" --wheels "$WHEELS" --json "$OUT/wheels.json"
  "$PY" -c "from cxrkit._compat import ensure_torchvision; ensure_torchvision()
import cv2, pydicom, pytorch_grad_cam, captum, fastapi, uvicorn, pytest, httpx
from torch.utils.tensorboard import SummaryWriter
print('imports ok: cv2', cv2.__version__, 'pydicom', pydicom.__version__)"
}
env_step() {
  set -e
  local req=""
  [[ $MODE == real ]] && req=--require-cuda
  "$PY" bench/gpu/env_report.py --out "$OUT/env.json" $req
  "$PY" -c "import cxrkit, sys; print('cxrkit from', cxrkit.__file__)"
}
# two pytest steps, so that slow compilation cannot cost the other tests their results
# (pytest writes its junit XML only at the end)
SLOW_TESTS="compile or torchrun"
pytest_run() {  # pytest_run NAME -k EXPR
  local mark=()
  [[ $MODE == dry ]] && mark=(-m cuda)   # on a CPU: collect everything, run the skips
  "$PY" -m pytest tests/test_cuda.py "${mark[@]}" "${@:2}" -q -rA -p no:cacheprovider \
    -o addopts="" --basetemp="$WORK/pytest-$1" --junitxml="$OUT/$1.xml" \
    -W ignore::DeprecationWarning
}
pytest_step() { pytest_run pytest -k "not ($SLOW_TESTS)"; }
pytest_slow_step() { pytest_run pytest_slow -k "$SLOW_TESTS"; }
cache_step() {
  set -e
  local patients=800 size=256 copies=10   # ~2,000 drawn (one core) -> ~20,000
  [[ $MODE == dry ]] && { patients=40; size=64; copies=2; }
  local t1 t2 t3
  t1=$EPOCHREALTIME
  "$PY" -m cxrkit.cli phantoms "$WORK/drawn" --patients "$patients" --size "$size" --seed 0
  t2=$EPOCHREALTIME
  "$PY" bench/gpu/replicate_release.py "$WORK/drawn" "$WORK/nih" --copies "$copies"
  t3=$EPOCHREALTIME
  "$PY" -m cxrkit.cli prepare "$WORK/nih" --out "$WORK/prepared" --size "$size" --workers "$CORES"
  local t4
  t4=$EPOCHREALTIME
  "$PY" - "$WORK" "$OUT/cache.json" "$t1" "$t2" "$t3" "$t4" "$copies" <<'PYEOF'
import json, sys
work, out, t1, t2, t3, t4, copies = sys.argv[1], sys.argv[2], *map(float, sys.argv[3:7]), int(sys.argv[7])
drawn = json.load(open(f"{work}/drawn/phantoms_manifest.json"))
rep = json.load(open(f"{work}/nih/replicate_manifest.json"))
man = json.load(open(f"{work}/prepared/manifest.json"))
res = {"drawn_images": drawn["n_images"], "draw_s": t2 - t1,
       "draw_images_per_s": drawn["n_images"] / (t2 - t1), "copies": copies,
       "release_images": rep["n_images"], "replicate_s": t3 - t2,
       "prepare_wall_s": t4 - t3, "prepare_images_per_s_wall": rep["n_images"] / (t4 - t3),
       "prepare_build": man.get("build"), "cache_counts": man.get("counts"),
       "source_png_px": drawn["settings"]["image_size"]}
json.dump(res, open(out, "w"), indent=1)
print(json.dumps(res, indent=1))
PYEOF
}
bench_step() {
  set -e
  if [[ $MODE == dry ]]; then
    "$PY" bench/bench_train.py --device cpu --loader "$WORK/prepared" --models cnn4:8 \
      --steps 1 --workers 0 --json "$OUT/bench_train.json"
    return 0
  fi
  local w=$(( CORES > 4 ? CORES - 2 : 2 ))
  "$PY" bench/bench_train.py --device cuda --loader "$WORK/prepared" \
    --models densenet121:256,resnet50:256,mobilenet_v3_large:256,vit_small_patch16_224:256 \
    --steps 20 --workers "$w" --json "$OUT/bench_train.json"
  # what cudnn.benchmark (off in cxrkit train) would give the headline model
  "$PY" bench/bench_train.py --device cuda --loader "$WORK/prepared" --models densenet121:256 \
    --steps 20 --workers "$w" --cudnn-benchmark on --json "$OUT/bench_train_cudnn_benchmark.json"
}
train_step() {
  set -e
  local run="$WORK/runs/densenet121"
  local extra=(model.pretrained=false train.epochs=2 data.batch_size=256
               "data.workers=$(( CORES > 4 ? CORES - 2 : 2 ))")
  [[ $MODE == dry ]] && extra=(model.pretrained=false train.epochs=2 model.name=cnn4
                               data.batch_size=16 data.workers=0 data.image_size=56
                               data.eval_resize=64 train.max_steps_per_epoch=3)
  "$PY" -m cxrkit.cli train configs/chexnet_densenet121.yaml "data.prepared=$WORK/prepared" \
    "out=$run" "${extra[@]}" --no-progress
  local t1
  t1=$EPOCHREALTIME
  local eval_opts=(--bootstrap 200 --subgroup-bootstrap 50)
  [[ $MODE == dry ]] && eval_opts=(--bootstrap 20 --subgroup-bootstrap 10 --no-report)
  "$PY" -m cxrkit.cli evaluate "$run" --split test "${eval_opts[@]}" --no-progress \
    --out "$run/eval_test"
  local t2
  t2=$EPOCHREALTIME
  mkdir -p "$OUT/train"
  cp "$run/run.json" "$run/metrics.csv" "$OUT/train/"
  cp "$run/eval_test/metrics.json" "$OUT/train/eval_metrics.json"
  [[ -f "$run/curves.png" ]] && cp "$run/curves.png" "$OUT/train/"
  awk -v a="$t1" -v b="$t2" 'BEGIN { printf "{\"evaluate_s\": %.2f}\n", b - a }' \
    > "$OUT/train/evaluate_time.json"
}
serve_step() {
  set -e
  local ck="$WORK/runs/densenet121/best.pt" dev=(--device cuda) n=96 secs=20 clients=1,4,16
  [[ $MODE == dry ]] && { dev=(); n=8; secs=10; clients=1,4; }
  "$PY" bench/bench_serve.py --checkpoint "$ck" "${dev[@]}" --configs fp32-unbatched,fp32 \
    --clients "$clients" --requests "$n" --seconds "$secs" --images 32 --json "$OUT/bench_serve.json"
}
export SLOW_TESTS
export -f wheels env_step pytest_run pytest_step pytest_slow_step cache_step bench_step train_step
export -f serve_step

if [[ $MODE == real ]]; then
  L_WHEELS=60 L_ENV=45 L_PYTEST=140 L_SLOW=120 L_CACHE=110 L_BENCH=120 L_TRAIN=120 L_SERVE=90
else
  L_WHEELS=60 L_ENV=60 L_PYTEST=90 L_SLOW=60 L_CACHE=90 L_BENCH=90 L_TRAIN=120 L_SERVE=90  # budget caps
fi
step wheels "$L_WHEELS" wheels
step env "$L_ENV" env_step
step pytest "$L_PYTEST" pytest_step
step pytest_slow "$L_SLOW" pytest_slow_step
step cache "$L_CACHE" cache_step
if [[ -f "$WORK/prepared/manifest.json" ]]; then
  step bench "$L_BENCH" bench_step
  step train "$L_TRAIN" train_step
  if [[ -f "$WORK/runs/densenet121/best.pt" ]]; then
    step serve "$L_SERVE" serve_step
  else
    echo "=== step serve: skipped (step train made no checkpoint) ==="
    printf '%s\tskipped\t-\t0\t0\n' serve >> "$OUT/steps.tsv"
  fi
else
  for s in bench train serve; do
    echo "=== step $s: skipped (step cache made no prepared folder) ==="
    printf '%s\tskipped\t-\t0\t0\n' "$s" >> "$OUT/steps.tsv"
  done
fi

echo ""
echo "=== report ($(( $(date +%s) - T0 ))s elapsed) ==="
"$PY" bench/gpu/report.py --out "$OUT" --mode "$MODE" --elapsed "$(( $(date +%s) - T0 ))"
rc=$?
[[ "${KEEP_WORK:-0}" == 1 || -n "${CXRKIT_GPU_WORK:-}" ]] || rm -rf "$WORK"
exit $rc
