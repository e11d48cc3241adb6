#!/usr/bin/env bash
# Every check that needs a GPU, in one run on a bare lent machine (python3 3.12 with PyTorch CUDA 13,
# cuda-bindings, typer, rich, pytest; onnxruntime CPU; no index reachable). Run from the repository
# root with the onnxruntime-gpu parts of scripts/fetch_gpu_wheels.sh under wheels/ort-*.
#
# Each step runs under a time limit cut to what is left of DEADLINE (seconds, default 480: eight
# minutes, inside the device tool's 600 s per command), so the summary is always written; steps
# that no longer fit are reported as skipped. Steps run in order of value: the plan's speed side by
# side (scripts/gpu_plan_speed.py: ceilings, the plan before and with each change, one rollout
# profiled, the ViT-g shape), the graph forms side by side (scripts/gpu_graph_forms.py) and the GPU
# tests first; the older benches after, as time allows.
# Every step's output goes to a log; $OUT gets summary.txt (the status of every step with the end of
# its log), plan_speed.json and graph_forms.json (the raw figures of the first two steps: the
# plan's speed, the graph forms) and gpu-results.tar.gz (all logs
# and JSON/PNG results): the device tool returns at most 8 files. Exit 1 when any step failed or
# was skipped for time.
#   OUT=$OUT bash scripts/gpu_check.sh
#   QUICK=1 ...   no batch-400 rollouts, no ViT-g-shaped plan;   SETUP=0 ...   the wheel is installed already
#   PLAN_SPEED_ARGS="--device cpu --tiny" ...   the plan-speed step's dry run on a CPU
set -uo pipefail
OUT=${OUT:-gpu-results}
DEADLINE=${DEADLINE:-480}
WORK=$(mktemp -d /tmp/gpu-check.XXXX)
mkdir -p "$OUT"
export PYTHONPATH="/tmp/site:$PWD" PYTHONUNBUFFERED=1 PY=${PY:-python3}
SUMMARY="$OUT/summary.txt"
: > "$SUMMARY"
failed=0
n=0
say() { echo "$*" | tee -a "$SUMMARY"; }

finish() {
  # logs and results only: the exported artifact (hundreds of MB) would push the archive past the
  # 16 MiB a file the device tool brings back
  tar -czf "$OUT/gpu-results.tar.gz" --exclude='./art' --exclude='*.onnx' --exclude='*.plan' --exclude='*.data' \
      -C "$WORK" . 2>/dev/null
  ls -l "$OUT/gpu-results.tar.gz" | awk '{print "gpu-results.tar.gz:", $5, "bytes"}' 
  say "== done in ${SECONDS} s: $([ "$failed" -eq 0 ] && echo 'every step passed' || echo 'SOME STEPS FAILED OR WERE SKIPPED')"
  exit "$failed"
}

# step NAME LIMIT_S COMMAND...: run under min(LIMIT_S, time left), log everything, record the status
step() {
  local name=$1 limit=$2; shift 2
  n=$((n + 1))
  local left=$((DEADLINE - SECONDS - 15))
  local log
  log=$(printf '%s/%02d-%s.log' "$WORK" "$n" "$name")
  if [ "$left" -lt 30 ]; then
    say "== $n. $name: SKIPPED (only ${left} s left of DEADLINE=$DEADLINE)"; failed=1; return 1
  fi
  [ "$limit" -gt "$left" ] && limit=$left
  local t0=$SECONDS
  timeout "$limit" bash -c '"$@"' _ "$@" > "$log" 2>&1   # bash -c: steps may be exported functions
  local rc=$?
  local status=PASS
  if [ "$rc" -ne 0 ]; then
    status="FAIL (exit $rc$([ "$rc" -eq 124 ] && echo ", stopped after ${limit} s"))"; failed=1
  fi
  say "== $n. $name: $status in $((SECONDS - t0)) s  [$(basename "$log")]"
  tail -n "${TAIL:-12}" "$log" | sed 's/^/   | /' | tee -a "$SUMMARY"
  return "$rc"
}

vd() { "$PY" -m vitac_deploy "$@"; }

setup() {
  set -e
  shopt -s nullglob
  parts=(wheels/ort-*/onnxruntime_gpu-*.part*)
  if [ ${#parts[@]} -eq 0 ]; then
    echo "no wheels/ort-*/onnxruntime_gpu-*.part*: carry them first (scripts/fetch_gpu_wheels.sh)"; exit 1
  fi
  base=$(basename "${parts[0]}"); base=${base%.part*}
  cat $(printf '%s\n' "${parts[@]}" | sort -V) > "/tmp/$base"
  (cd /tmp && sha256sum -c "$OLDPWD"/wheels/ort-00/"$base".sha256)
  # into /tmp/site, first on PYTHONPATH: it shadows the image's CPU onnxruntime without touching it
  "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site "/tmp/$base"
}

probe() {
  nvidia-smi --query-gpu=name,compute_cap,driver_version,memory.total --format=csv
  "$PY" - <<'EOF'
import importlib.metadata as md
import sys
import onnxruntime as ort, torch
from vitac_deploy.runtimes.gpu import gpu_info
from vitac_deploy.runtimes.onnxruntime.backend import cuda_provider_failure
print("python", sys.version.split()[0], "| torch", torch.__version__, "cuda", torch.version.cuda, torch.cuda.is_available(),
      "| onnxruntime", ort.__version__, "from", ort.__file__)
for p in ("onnxruntime-gpu", "cuda-bindings", "numpy", "typer", "pytest"):
    try:
        print(" ", p, md.version(p))
    except md.PackageNotFoundError:
        print(" ", p, "not installed")
print("gpu_info:", gpu_info())
if hasattr(ort, "preload_dlls"):
    ort.preload_dlls()
print("providers:", ort.get_available_providers())
why = cuda_provider_failure(ort)   # or every ONNX Runtime CUDA row would silently be a CPU row
print("CUDA provider library:", why or "loads")
sys.exit(1 if why else 0)
EOF
}

gpu_tests() {
  "$PY" -m pytest -q -ra -p no:cacheprovider -m "gpu or tensorrt" tests/ --junitxml="$WORK/gpu-tests.xml" \
      | tee "$WORK/gpu-tests.txt"
  rc=${PIPESTATUS[0]}
  # on the GPU machine a test that skips did not run: no test passing is a failure, not a pass
  grep -qE '[0-9]+ passed' "$WORK/gpu-tests.txt" || { echo "no GPU test passed (all skipped?)"; exit 1; }
  exit "$rc"
}
plan_speed() {
  # its own budget ends before the step's limit, so it writes its JSON complete; a row that no
  # longer fits is listed as skipped there
  "$PY" scripts/gpu_plan_speed.py --out "$WORK" --budget "$1" ${PLAN_SPEED_ARGS:-}
  rc=$?
  cp "$WORK/plan_speed.json" "$OUT/plan_speed.json" 2>/dev/null
  exit "$rc"
}
graph_forms() {
  # the graph forms side by side (scripts/gpu_graph_forms.py): its JSON is written after every row,
  # so a step stopped by its limit keeps what it measured
  "$PY" scripts/gpu_graph_forms.py --out "$WORK/graph_forms.json" ${GRAPH_FORMS_ARGS:-}
  rc=$?
  cp "$WORK/graph_forms.json" "$OUT/graph_forms.json" 2>/dev/null
  exit "$rc"
}
export -f vd setup probe gpu_tests plan_speed graph_forms
export WORK OUT PLAN_SPEED_ARGS GRAPH_FORMS_ARGS

say "vitac-deploy GPU check, $(date -u +%FT%TZ), commit $(git rev-parse --short HEAD 2>/dev/null || echo '?'), DEADLINE ${DEADLINE} s"
# the torch steps need no wheel: a failed setup or probe leaves them running (the ONNX Runtime CUDA
# steps then fail, visibly: the runtime refuses to fall back to the CPU)
if [ "${SETUP:-1}" != 0 ]; then
  step setup 120 setup || say "setup failed: ONNX Runtime has no CUDA provider here; its steps will fail, the torch steps run"
fi
step probe 60 probe || say "the ONNX Runtime CUDA provider does not load (or no GPU): its steps will fail"

TAIL=40 step plan-speed 200 plan_speed 180
TAIL=40 step graph-forms 170 graph_forms
step gpu-tests 100 gpu_tests
step export 60 vd export --preset vitac-l384 --random-init --out "$WORK/art" --force
TAIL=24 step bench-plan-default 200 vd bench "$WORK/art" --plan --device cuda --precision fp16 \
     --backend onnxruntime --backend torch --backend torch-reference --cuda-graphs both \
     --context-staging staged,host --json "$WORK/bench_plan_gpu.json"
TAIL=40 step profile-ort-step 90 "$PY" scripts/profile_ort_step.py "$WORK/art" --device cuda --precision fp16 \
     --batch 400 --past-frames 1 --json "$WORK/profile_ort_step.json"
step validate-onnxruntime-cuda 120 vd validate "$WORK/art" --random-init --backend onnxruntime --device cuda \
     --precision fp32,fp16 --report "$WORK/validate_onnxruntime_cuda.json"
TAIL=30 step bench-rollout-b1 150 vd bench "$WORK/art" --device cuda --precision fp16 --batch 1 --horizon 7 \
     --backend onnxruntime --backend torch --cuda-graphs both --repeats 10 --warmup 3 \
     --json "$WORK/bench_rollout_b1_gpu.json" --plot "$WORK/per_frame_b1_gpu.png"
TAIL=16 step bench-encoder-vitg 150 vd bench --encoder vit-g --encoder-only --device cuda --precision fp16 \
     --backend onnxruntime --backend torch --repeats 10 --warmup 3 --json "$WORK/bench_encoder_vitg_gpu.json"
step validate-torch-cuda 120 vd validate "$WORK/art" --random-init --backend torch --device cuda \
     --precision fp32,fp16 --report "$WORK/validate_torch_cuda.json"
if [ -z "${QUICK:-}" ]; then
  TAIL=20 step bench-plan-vitg 300 vd bench --preset vjepa2-ac-vitg --plan --device cuda --precision fp16 \
       --backend onnxruntime --json "$WORK/bench_plan_vitg_gpu.json"
  # batch 400 x 8 frames: the full-recompute baseline alone is minutes at 10 repeats; the JSON is
  # written after every row, so a cut-off run keeps the rows it finished
  TAIL=30 step bench-rollout-b400 240 vd bench "$WORK/art" --device cuda --precision fp16 --batch 400 --horizon 7 \
       --backend onnxruntime --backend torch --cuda-graphs both --repeats 2 --warmup 1 \
       --json "$WORK/bench_rollout_b400_gpu.json"
fi
if [ -z "${QUICK:-}" ]; then
  # the serve goal: 8 robots batched at 4x or more the plans/s of one at a time, upstream sizes
  step export-encoder 150 vd export-encoder --preset vit-l --random-init --out "$WORK/art/encoder" --no-validate
  TAIL=20 step bench-serve 240 "$PY" -m vitac_deploy.benchmarks.serving --artifact "$WORK/art" --clients 1,8 --requests 2 \
       --samples 400 --topk 10 --cem-steps 10 --device cuda --backend onnxruntime --json "$WORK/bench_serve_gpu.json"
fi
cap=$(nvidia-smi --query-gpu=compute_cap --format=csv,noheader | head -1)
if "$PY" -c "import tensorrt" 2>/dev/null; then
  step tensorrt-build 240 vd build-engine "$WORK/art" --out "$WORK/eng.plan" --max-batch 400 --opt-batch 400 --max-frames 2
  step tensorrt-validate 120 vd validate "$WORK/eng.plan" --random-init
else
  say "== tensorrt: not importable here (no wheel reachable); the TensorRT runtime ran on fakes only"
fi
if "$PY" -c "import tensorrt_rtx as t, sys; sys.exit('SM' + '$cap'.replace('.', '') not in t.ComputeCapability.__members__)" 2>/dev/null; then
  step rtx-build 240 vd build-engine "$WORK/art" --out "$WORK/rtx.plan" --flavour tensorrt-rtx --compute-capability "$cap"
  step rtx-validate 120 vd validate "$WORK/rtx.plan" --random-init
else
  say "== tensorrt-rtx: not installed, or compute capability $cap is not one it targets (Hopper is not): skipped"
fi
finish
