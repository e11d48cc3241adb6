#!/usr/bin/env bash
# Download, on a machine with PyPI, the one wheel the lent GPU machine lacks (it reaches no index):
# onnxruntime-gpu (the CUDA 13 build, matching the image's PyTorch; ~256 MB), split for the device
# tool, which carries at most 64 MiB a call INCLUDING the tracked tree (~9 MiB):
#   wheels/ort-00 .. ort-NN   48 MiB parts, one carried per call while the machine stays warm
# The image already has cuda-bindings, typer, rich, pytest and the CUDA/cuDNN libraries
# (the device machine's own notes), so nothing else travels. gpu_check.sh joins the parts.
#   bash scripts/fetch_gpu_wheels.sh            # prints the carry plan at the end
set -euo pipefail
cd "$(dirname "$0")/.."
ORT=${ORT_VERSION:-1.31.1}
PART=${PART_MIB:-48}
# wheels/ holds only what this script writes (ort-NN parts, tmp): anything else there is not ours
if [ -e wheels ]; then
  other=$(find wheels -mindepth 1 -maxdepth 1 ! -name 'ort-[0-9][0-9]' ! -name tmp -print -quit)
  [ -z "$other" ] || { echo "error: wheels/ holds $other, which this script did not write: move it away first" >&2; exit 2; }
  rm -rf wheels/ort-[0-9][0-9] wheels/tmp
fi
mkdir -p wheels/tmp
python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64 \
    -d wheels/tmp "onnxruntime-gpu==$ORT"
whl=$(ls wheels/tmp/onnxruntime_gpu-*.whl)
(cd wheels/tmp && sha256sum "$(basename "$whl")" > "$(basename "$whl").sha256")
split -b "${PART}M" -d -a 2 "$whl" "wheels/tmp/$(basename "$whl").part"
for part in wheels/tmp/*.part*; do
  n=${part##*.part}; mkdir -p "wheels/ort-$n"; mv "$part" "wheels/ort-$n/"
done
mv wheels/tmp/*.sha256 wheels/ort-00/
rm -rf wheels/tmp
du -sh wheels/* | sed 's/^/  /'
tree=$(git ls-files -z | xargs -0 du -cb 2>/dev/null | tail -1 | cut -f1)
echo "tracked tree: $((tree >> 20)) MiB; each call carries it plus one part (limit 64 MiB)"
echo "carry plan: one call per part, e.g. command 'ls wheels' with carry [\"wheels/ort-00\"], [\"wheels/ort-01\"], ..."
echo "then: OUT=\$OUT bash scripts/gpu_check.sh  (carry nothing; the parts stay on the warm machine)"
