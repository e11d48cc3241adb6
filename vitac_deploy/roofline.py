"""Named devices' published ceilings, and the roofline time of a graph cost on them (pure Python).

The roofline of one kernel is max(bytes it moves / memory bandwidth, FLOP / peak rate): no kernel
runs faster. A graph's roofline sums that over its kernels (`exporters.cost`): the time the graph
cannot beat as written, one kernel per node, on that device. Figures are vendors' datasheet or
whitepaper numbers (each entry cites its source), not measurements; a figure derived from a vendor
number says so. Measure the device's real ceilings (a large copy, a large fp16 GEMM) where one is
lent: `scripts/gpu_check.sh` does, beside the plan.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

from .errors import VitacError


@dataclass(frozen=True)
class RooflineDevice:
    """A device's memory bandwidth and dense matrix rates."""

    name: str
    bandwidth_tb_s: float                 # TB/s (10^12 bytes per second)
    fp16_dense_tflops: float              # tensor-core fp16, dense, fp32 accumulation where the vendor splits it
    fp32_tflops: Optional[float]          # plain fp32 (CUDA cores): what an fp32 graph with TF32 off gets
    source: str
    match: tuple[str, ...] = ()           # substrings of the GPU name (lower case) that mean this device

    def peak_tflops(self, precision: str) -> Optional[float]:
        """The dense rate of `precision` (None where the device's figure for it is not known)."""
        return {"fp16": self.fp16_dense_tflops, "fp32": self.fp32_tflops}.get(precision)


ROOFLINE_DEVICES: dict[str, RooflineDevice] = {
    "h100-pcie": RooflineDevice(
        "H100 PCIe", 2.0, 756.5, 51.2,
        "NVIDIA H100 Tensor Core GPU datasheet (PCIe): 2 TB/s HBM2e, FP16 tensor 1,513 TFLOPS with sparsity "
        "(756.5 dense), FP32 51 TFLOPS", ("h100 pcie", "h100-pcie")),
    "h100": RooflineDevice(
        "H100 SXM", 3.35, 989.4, 66.9,
        "NVIDIA H100 Tensor Core GPU datasheet (SXM5): 3.35 TB/s HBM3, FP16 tensor 1,979 TFLOPS with sparsity "
        "(989.4 dense), FP32 67 TFLOPS", ("h100",)),
    "h200": RooflineDevice(
        "H200 SXM", 4.8, 989.4, 66.9,
        "NVIDIA H200 Tensor Core GPU datasheet (SXM): 4.8 TB/s HBM3e, FP16 tensor 1,979 TFLOPS with sparsity "
        "(989.4 dense), FP32 67 TFLOPS: the H100's compute", ("h200",)),
    "rtx-4090": RooflineDevice(
        "GeForce RTX 4090", 1.008, 165.2, 82.6,
        "NVIDIA Ada Lovelace GPU architecture whitepaper, RTX 4090: 1,008 GB/s GDDR6X, peak FP16 tensor "
        "165.2 TFLOPS dense with FP32 accumulate (330.3 with FP16 accumulate), FP32 82.6 TFLOPS", ("4090",)),
    "agx-orin": RooflineDevice(
        "Jetson AGX Orin 64GB", 0.2048, 42.5, 5.3,
        "NVIDIA Jetson AGX Orin Series technical brief: 204.8 GB/s LPDDR5; GPU 5.3 FP32 TFLOPS and 170 sparse "
        "INT8 TOPS (64 third-generation tensor cores). The fp16 figure is DERIVED: 85 dense INT8 TOPS, halved "
        "for fp16 on Ampere tensor cores", ("orin",)),
    "thor": RooflineDevice(
        "Jetson AGX Thor (T5000)", 0.273, 258.8, None,
        "NVIDIA Jetson AGX Thor datasheet: 273 GB/s LPDDR5X, 2,070 FP4 TFLOPS (sparse). The fp16 figure is "
        "DERIVED: halved for dense, then halved per doubling of precision (FP8, FP16) on Blackwell tensor "
        "cores; no fp32 rate is published", ("thor",)),
}


def roofline_device(name: str) -> RooflineDevice:
    """A `ROOFLINE_DEVICES` entry by key, or one line naming the keys."""
    try:
        return ROOFLINE_DEVICES[name]
    except KeyError:
        raise VitacError(f"unknown roofline device {name!r} (known: {', '.join(ROOFLINE_DEVICES)})") from None


def device_for_gpu(gpu_name: Optional[str]) -> Optional[str]:
    """The `ROOFLINE_DEVICES` key of a GPU by its reported name ("NVIDIA H200" -> "h200"), or None."""
    if not gpu_name:
        return None
    low = gpu_name.lower()
    for key, dev in ROOFLINE_DEVICES.items():
        if any(m in low for m in dev.match):
            return key
    return None


def kernel_seconds(flops: float, nbytes: float, device: RooflineDevice, precision: str) -> Optional[float]:
    """max(bytes / bandwidth, FLOP / peak) of one kernel; None where the device has no rate for the
    precision and the kernel does arithmetic."""
    memory = nbytes / (device.bandwidth_tb_s * 1e12)
    if not flops:
        return memory
    peak = device.peak_tflops(precision)
    if peak is None:
        return None
    return max(memory, flops / (peak * 1e12))
