#!/usr/bin/env bash
# Every check that needs a GPU, in one run on a bare lent machine (Python 3.12, PyTorch with CUDA,
# onnxruntime CPU, no index reachable). Run from the repository root with the wheels of
# scripts/fetch_gpu_wheels.sh under wheels/. Every step's full output goes to $OUT/NN-step.log,
# its status to $OUT/summary.txt; the script exits 1 when any step failed (it never hides a
# failure behind a pipe). QUICK=1 skips the ViT-g-shaped plan and the batch-400 rows; SETUP=0 skips
# the install (a rerun on the same warm machine).
#   OUT=$OUT bash scripts/gpu_check.sh
set -uo pipefail
shopt -s nullglob
OUT=${OUT:-gpu-results}
mkdir -p "$OUT"
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
SUMMARY="$OUT/summary.txt"
: > "$SUMMARY"
failed=0
n=0
say() { echo "$*" | tee -a "$SUMMARY"; }

# step NAME TIMEOUT_S COMMAND...: run, log everything, record the status and the log's last lines
step() {
  local name=$1 limit=$2; shift 2
  n=$((n + 1))
  local log
  log=$(printf '%s/%02d-%s.log' "$OUT" "$n" "$name")
  local t0=$SECONDS
  timeout "$limit" bash -c '"$@"' _ "$@" > "$log" 2>&1   # bash -c: steps may be exported functions
  local rc=$?
  local status=PASS
  [ "$rc" -ne 0 ] && { status="FAIL (exit $rc$([ "$rc" -eq 124 ] && echo ", timed out after ${limit}s"))"; failed=1; }
  say "== $n. $name: $status in $((SECONDS - t0)) s  [$log]"
  tail -n "${TAIL:-12}" "$log" | sed 's/^/   | /' | tee -a "$SUMMARY"
  return "$rc"
}

vd() { python -m vitac_deploy "$@"; }
export -f vd

setup() {
  set -e
  shopt -s nullglob
  parts=(wheels/ort-*/onnxruntime_gpu-*.part*)
  if [ ${#parts[@]} -gt 0 ]; then
    base=$(basename "${parts[0]}"); base=${base%.part*}
    cat $(printf '%s\n' "${parts[@]}" | sort -V) > "/tmp/$base"
    echo "joined ${#parts[@]} parts into /tmp/$base"
    python -m pip uninstall -y -q onnxruntime || true      # the CPU build would shadow the GPU one
    python -m pip install -q --no-deps --no-index "/tmp/$base"
  fi
  wheels=(wheels/base/*.whl)
  [ ${#wheels[@]} -gt 0 ] && python -m pip install -q --no-deps --no-index "${wheels[@]}"
  nvidia-smi --query-gpu=name,compute_cap,driver_version,memory.total --format=csv
  python - <<'EOF'
import importlib.metadata as md
import onnxruntime as ort, torch
from vitac_deploy.runtimes.gpu import gpu_info
print("python", __import__("sys").version.split()[0], "| torch", torch.__version__, "cuda", torch.version.cuda,
      torch.cuda.is_available(), "| onnxruntime", ort.__version__, ort.get_available_providers())
for p in ("onnxruntime-gpu", "cuda-bindings", "typer", "numpy"):
    try:
        print(p, md.version(p))
    except md.PackageNotFoundError:
        print(p, "not installed")
print("gpu_info", gpu_info())
if hasattr(ort, "preload_dlls"):
    ort.preload_dlls()
# the CUDA provider must load, or every ONNX Runtime CUDA row would silently be a CPU row
from vitac_deploy.runtimes.onnxruntime.backend import cuda_provider_failure
why = cuda_provider_failure(ort)
print("CUDA provider library:", why or "loads")
assert not why, why
EOF
}

export -f setup
say "vitac-deploy GPU check, $(date -u +%FT%TZ), commit $(git rev-parse --short HEAD 2>/dev/null || echo '?')"
if [ "${SETUP:-1}" != 0 ]; then
  step setup 240 setup || { say "setup failed: nothing else can run"; exit 1; }
fi

step gpu-tests 420 python -m pytest -q -ra -m "gpu or tensorrt" -p no:cacheprovider tests/ \
     --junitxml="$OUT/gpu-tests.xml"
step export 300 vd export --preset vitac-l384 --random-init --out /tmp/art --force
step validate-onnxruntime-cuda 300 vd validate /tmp/art --random-init --backend onnxruntime --device cuda \
     --precision fp32,fp16 --report "$OUT/validate_onnxruntime_cuda.json"
step validate-torch-cuda 300 vd validate /tmp/art --random-init --backend torch --device cuda \
     --precision fp32,fp16 --report "$OUT/validate_torch_cuda.json"

BATCH=1,400; [ -n "${QUICK:-}" ] && BATCH=1
TAIL=30 step bench-rollout 420 vd bench /tmp/art --device cuda --precision fp16 --batch "$BATCH" --horizon 7 \
     --backend onnxruntime --backend torch --cuda-graphs both --repeats 10 --warmup 3 \
     --json "$OUT/bench_rollout_gpu.json" --plot "$OUT/per_frame_gpu.png"
TAIL=20 step bench-plan-default 420 vd bench /tmp/art --plan --device cuda --precision fp16 \
     --backend onnxruntime --backend torch --cuda-graphs both --json "$OUT/bench_plan_gpu.json"
if [ -z "${QUICK:-}" ]; then
  TAIL=20 step bench-plan-vitg 540 vd bench --preset vjepa2-ac-vitg --plan --device cuda --precision fp16 \
       --backend onnxruntime --cuda-graphs off --json "$OUT/bench_plan_vitg_gpu.json"
fi
cap=$(nvidia-smi --query-gpu=compute_cap --format=csv,noheader | head -1)
if python -c "import tensorrt" 2>/dev/null; then
  step tensorrt-build 420 vd build-engine /tmp/art --out /tmp/eng.plan --max-batch 400 --opt-batch 400 --max-frames 2
  step tensorrt-validate 300 vd validate /tmp/eng.plan --random-init
else
  say "== tensorrt: not importable here (no wheel reachable); the TensorRT runtime ran on fakes only"
fi
if python -c "import tensorrt_rtx as t, sys; sys.exit('SM' + '$cap'.replace('.', '') not in t.ComputeCapability.__members__)" 2>/dev/null; then
  step rtx-build 420 vd build-engine /tmp/art --out /tmp/rtx.plan --flavour tensorrt-rtx --compute-capability "$cap"
  step rtx-validate 300 vd validate /tmp/rtx.plan --random-init
else
  say "== tensorrt-rtx: not installed, or compute capability $cap is not one it targets (Hopper is not): skipped"
fi
say "== done: $([ "$failed" -eq 0 ] && echo 'every step passed' || echo 'SOME STEPS FAILED')"
exit "$failed"
