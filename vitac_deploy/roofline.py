"""The roofline time of a graph cost on named devices' published ceilings (pure Python).

The roofline of one kernel is max(bytes it moves / memory bandwidth, FLOP / peak rate): no kernel
runs faster. A graph's roofline sums that over its kernels (`exporters.cost`): the time the graph
cannot beat as written, one kernel per node, on that device. The ceilings are the one device table's
(`vitac_deploy.devices`): vendors' datasheet or whitepaper numbers (each entry cites its source), not
measurements; a figure derived from a vendor number says so. Measure the device's real ceilings (a
large copy, a large fp16 GEMM) where one is lent: `scripts/gpu_check.sh` does, beside the plan.
"""

from __future__ import annotations

from typing import Optional

from .devices import Device, device as _named, device_for_gpu as _device_for_gpu, need, with_figures

# The ceilings live in the one device table (vitac_deploy.devices); these are its roofline view.
RooflineDevice = Device

# Every device with a published memory bandwidth, by key, in the table's order.
ROOFLINE_DEVICES: dict[str, Device] = with_figures("bandwidth_tb_s")


def roofline_device(name: str) -> Device:
    """A device by key or alias (`vitac_deploy.devices`) that has a memory bandwidth, or one line saying
    which it is not."""
    return need(_named(name), "bandwidth_tb_s", purpose="a roofline")


def device_for_gpu(gpu_name: Optional[str]) -> Optional[str]:
    """The `ROOFLINE_DEVICES` key of a GPU by its reported name ("NVIDIA H200" -> "h200"), or None."""
    key = _device_for_gpu(gpu_name)
    return key if key in ROOFLINE_DEVICES else None


def kernel_seconds(flops: float, nbytes: float, device: Device, precision: str) -> Optional[float]:
    """max(bytes / bandwidth, FLOP / peak) of one kernel; None where the device has no rate for the
    precision and the kernel does arithmetic."""
    if device.bandwidth_tb_s is None:
        need(device, "bandwidth_tb_s", purpose="a roofline")
    memory = nbytes / (device.bandwidth_tb_s * 1e12)
    if not flops:
        return memory
    peak = device.peak_tflops(precision)
    if peak is None:
        return None
    return max(memory, flops / (peak * 1e12))
