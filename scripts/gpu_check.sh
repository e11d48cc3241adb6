#!/usr/bin/env bash
# Everything that needs a GPU, in one run (for a machine lent for a short time). Run from the
# repository root; results go to ${OUT:-gpu-results}/. Wheels found in ./wheels (onnxruntime-gpu,
# cuda-python, tensorrt-rtx, split parts joined first) are installed before anything runs.
#   bash scripts/gpu_check.sh                # all checks
#   QUICK=1 bash scripts/gpu_check.sh        # tests and batch-1 rows only
set -uo pipefail
OUT=${OUT:-gpu-results}
mkdir -p "$OUT"
log() { echo "== $*" | tee -a "$OUT/summary.txt"; }
if [ -d wheels ]; then
  for base in $(ls wheels | grep -E '\.part[0-9]+$' | sed -E 's/\.part[0-9]+$//' | sort -u); do
    cat $(ls wheels/"$base".part* | sort -V) > "/tmp/$base"; log "joined $base"
  done
  pip install -q --no-deps wheels/*.whl /tmp/*.whl 2>&1 | tail -3
fi
pip install -q --no-deps -e . 2>&1 | tail -1
nvidia-smi --query-gpu=name,compute_cap,driver_version,memory.total --format=csv | tee -a "$OUT/summary.txt"
python -c "import torch, onnxruntime as o; print('torch', torch.__version__, torch.cuda.is_available()); print('onnxruntime', o.__version__, o.get_available_providers())" 2>&1 | tee -a "$OUT/summary.txt"
python -c "import tensorrt_rtx as t; print('tensorrt_rtx', t.__version__)" 2>&1 | tail -1 | tee -a "$OUT/summary.txt"
python -c "import tensorrt as t; print('tensorrt', t.__version__)" 2>&1 | tail -1 | tee -a "$OUT/summary.txt"

log "1. GPU tests (TensorRT runtime where a TensorRT is importable)"
python -m pytest -q -ra -m "gpu or tensorrt" tests/ 2>&1 | tail -15 | tee -a "$OUT/summary.txt"

log "2. export the default model (seeded random weights)"
vitac-deploy export --preset vitac-l384 --random-init --out /tmp/art 2>&1 | tail -3

log "3. parity on CUDA: ONNX Runtime CUDA EP (I/O binding) and torch"
for b in onnxruntime torch; do
  vitac-deploy validate /tmp/art --random-init --backend "$b" --device cuda --precision fp32,fp16 \
      --report "$OUT/validate_$b.json" 2>&1 | tail -4 | tee -a "$OUT/summary.txt"
done

log "4. TensorRT for RTX on this GPU (its docs list 7.5/8.x/12.x, not Hopper): build and validate"
vitac-deploy build-engine /tmp/art --out /tmp/rtx.plan --flavour tensorrt-rtx --compute-capability \
    "$(nvidia-smi --query-gpu=compute_cap --format=csv,noheader | head -1)" 2>&1 | tail -3 | tee -a "$OUT/summary.txt"
vitac-deploy build-engine /tmp/art --out /tmp/rtx.plan --flavour tensorrt-rtx 2>&1 | tail -3 | tee -a "$OUT/summary.txt"
[ -f /tmp/rtx.plan ] && vitac-deploy validate /tmp/rtx.plan --random-init 2>&1 | tail -4 | tee -a "$OUT/summary.txt"

log "5. bench, fp16, batch 1 (and 300)"
BATCH=1,300; [ -n "${QUICK:-}" ] && BATCH=1
BACKENDS="--backend onnxruntime --backend torch --backend torch-compile"
python -c "import tensorrt" 2>/dev/null && BACKENDS="$BACKENDS --backend tensorrt"
vitac-deploy bench --preset vitac-l384 --device cuda --precision fp16 --batch $BATCH $BACKENDS \
    --repeats 10 --warmup 3 --json "$OUT/bench_gpu.json" --plot "$OUT/per_frame_gpu.png" 2>&1 | tail -25 | tee -a "$OUT/summary.txt"
vitac-deploy bench --preset vitac-l384 --device cuda --precision fp16 --batch 1 --backend onnxruntime \
    --no-cuda-graphs --repeats 10 --warmup 3 --json "$OUT/bench_gpu_nographs.json" 2>&1 | tail -8 | tee -a "$OUT/summary.txt"

if [ -z "${QUICK:-}" ]; then
  log "6. one CEM plan (300 x 30 x 6), fp16"
  vitac-deploy bench --preset vitac-l384 --device cuda --precision fp16 --plan $BACKENDS \
      --json "$OUT/bench_plan_gpu.json" 2>&1 | tail -12 | tee -a "$OUT/summary.txt"
fi
log "done"
