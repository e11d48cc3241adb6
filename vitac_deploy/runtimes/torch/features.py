"""Features that are already torch tensors on a torch runtime's device: taken as they are (no host
round trip), with the planner's checks and raw equivalent computed there (as planning.energy does
on the host, in float64)."""

from __future__ import annotations

from ...errors import VitacError
from ...contract import MEAN_TOL, VAR_TOL


def device_tensor(torch, x, device: str, name: str):
    """`x` as a float32 tensor on `device` if it is a tensor there (or a CUDA array when `device` is
    cuda), else None (a host array: the caller stages it and counts the copy)."""
    if isinstance(x, torch.Tensor):
        if x.device.type != torch.device(device).type:
            if x.device.type == "cpu":
                return None   # a host tensor: staged like a numpy array
            raise VitacError(f"{name} is a tensor on {x.device}, this runtime runs on {device}")
        t = x
    elif device == "cuda" and hasattr(x, "__cuda_array_interface__"):
        t = torch.as_tensor(x, device="cuda")
    else:
        return None
    if not t.is_floating_point():
        raise VitacError(f"{name} must be a float tensor, got {t.dtype}")
    return t.float()


def raw_equivalent(torch, normalized, eps: float):
    """contract.raw_equivalent on the device: features the graph's input LayerNorm (no
    affine, `eps`) maps back to `normalized`; refuses features that are not normalized."""
    x = normalized.double()
    mean, var = x.mean(-1), x.var(-1, unbiased=False)
    if float(mean.abs().max()) > MEAN_TOL or float(var.max()) > 1 + VAR_TOL:
        raise VitacError("current must be normalized features (LayerNorm without affine over the feature axis: "
                         "mean 0 and variance 1 per token), as the encoder path returns them")
    gap = (1.0 - var[..., None]).clamp_min(1e-12)
    return (x * torch.sqrt(eps / gap)).float()
