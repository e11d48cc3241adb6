#!/usr/bin/env bash
# Download, on a machine with PyPI, the cp312 wheels the lent GPU machine needs (it reaches no
# index), into wheels/ (git-ignored), laid out for the device tool's 64 MiB-per-call carry:
#   wheels/base/            cuda-python (bindings + pathfinder), typer, rich, pytest and their pure deps
#   wheels/ort-00 .. ort-NN onnxruntime-gpu (CUDA 13 build, ~256 MB) split in 60 MB parts
# Carry wheels/ort-00, wheels/ort-01, ... one per call while the machine stays warm (it keeps
# ignored files between calls), then run gpu_check.sh with wheels/base carried: it joins the parts.
#   bash scripts/fetch_gpu_wheels.sh            # prints the carry plan at the end
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-3.12}
PLAT=(--platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64)
ORT=${ORT_VERSION:-1.31.1}          # CUDA 13 build, matching the GPU image's PyTorch (CUDA 13)
rm -rf wheels && mkdir -p wheels/base wheels/tmp
dl() { pip download -q --no-deps -d "$1" --python-version "$PY" --only-binary=:all: "${PLAT[@]}" "${@:2}"; }
dl wheels/base cuda-bindings==13.4.4 cuda-pathfinder typer rich click shellingham markdown-it-py mdurl \
   pygments typing_extensions annotated-doc pytest pluggy iniconfig
dl wheels/tmp "onnxruntime-gpu==$ORT"
whl=$(ls wheels/tmp/onnxruntime_gpu-*.whl)
split -b 60M -d -a 2 "$whl" "wheels/tmp/$(basename "$whl").part"
for part in wheels/tmp/*.part*; do
  n=${part##*.part}; mkdir -p "wheels/ort-$n"; mv "$part" "wheels/ort-$n/"
done
rm -rf wheels/tmp
du -sh wheels/* | sed 's/^/  /'
echo "carry plan: one call per wheels/ort-NN (e.g. command 'ls wheels'), then:"
echo "  OUT=\$OUT bash scripts/gpu_check.sh     with carry [\"wheels/base\"]"
