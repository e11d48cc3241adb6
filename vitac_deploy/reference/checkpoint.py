"""Loading upstream checkpoints safely: no pickled code, every published layout, clear mismatches."""

from __future__ import annotations

import os
import pickle
import re
from pathlib import Path
from typing import Any, Mapping, Optional

from ..config import PredictorConfig
from ..errors import VitacError, first_line

_PREFIXES = ("module.", "backbone.", "_orig_mod.")
_NESTS = ("predictor", "state_dict", "model")
CHECKPOINT_PARTS = ("predictor", "encoder", "target_encoder")


def read_state_dict(path: str | os.PathLike, part: str = "predictor") -> dict[str, Any]:
    """Tensors of a `.pt`/`.pth` (weights_only) or `.safetensors` file, unnested, prefixes stripped.

    `part` picks the entry of a published V-JEPA 2-AC checkpoint, which holds `"encoder"`,
    `"target_encoder"` and `"predictor"` in one file."""
    import torch

    p = Path(path)
    if not p.is_file():
        raise VitacError(f"checkpoint not found: {p}")
    suffix = p.suffix.lower()
    try:
        if suffix == ".safetensors":
            from safetensors.torch import load_file

            raw: Any = load_file(str(p))
        elif suffix in (".pt", ".pth", ".bin", ".ckpt"):
            raw = torch.load(str(p), map_location="cpu", weights_only=True)
        else:
            raise VitacError(f"unsupported checkpoint type '{suffix}' for {p} (use .pt, .pth or .safetensors)")
    except VitacError:
        raise
    except pickle.UnpicklingError as e:
        # torch's safe loader names the GLOBAL it will not build; without one, the bytes are no
        # pickle it can read (an unknown opcode): a file of another kind, not a refused object
        found = re.search(r"GLOBAL ([\w.]+)", str(e))
        if found:
            raise VitacError(f"refusing to load {p}: it holds pickled objects other than tensors ({found.group(1)}), "
                             f"which could run code on load (weights_only=True)") from None
        raise VitacError(f"cannot read checkpoint {p}: not a PyTorch checkpoint or pickle of tensors") from None
    except Exception as e:  # corrupt zip, truncated file, bad header, ...
        raise VitacError(f"cannot read checkpoint {p}: {first_line(e)}") from None
    return normalize_state_dict(raw, source=str(p), part=part)


def normalize_state_dict(raw: Any, source: str = "checkpoint", part: str = "predictor") -> dict[str, Any]:
    """Unnest `{part: ...}`/`{"state_dict": ...}` and strip `module.`/`backbone.` prefixes."""
    import torch

    if part not in CHECKPOINT_PARTS:
        raise VitacError(f"unknown checkpoint part {part!r} (choose from {', '.join(CHECKPOINT_PARTS)})")
    nests = (part,) + tuple(n for n in _NESTS if n != "predictor")
    sd = raw
    while isinstance(sd, Mapping) and not any(isinstance(v, torch.Tensor) for v in sd.values()):
        nest = next((k for k in nests if isinstance(sd.get(k), Mapping)), None)
        if nest is None:
            others = [k for k in CHECKPOINT_PARTS if isinstance(sd.get(k), Mapping)]
            if others:   # e.g. an encoder asked of a predictor-only file
                raise VitacError(f"{source} has no {part!r} entry (it holds {', '.join(others)})")
            break
        sd = sd[nest]
    if not isinstance(sd, Mapping):
        raise VitacError(f"{source}: expected a state_dict (a mapping of names to tensors), got {type(sd).__name__}")
    if isinstance(sd.get(part), Mapping):  # a training checkpoint with other parts beside it
        sd = sd[part]
    out: dict[str, Any] = {}
    for key, value in sd.items():
        if not isinstance(value, torch.Tensor):
            continue
        k = str(key)
        stripped = True
        while stripped:
            stripped = False
            for prefix in _PREFIXES:
                if k.startswith(prefix):
                    k, stripped = k[len(prefix):], True
        out[k] = value
    if not out:
        raise VitacError(f"{source}: no tensors found")
    return out


def infer_config_fields(sd: Mapping[str, Any]) -> dict[str, Any]:
    """What can be read off the shapes of a state_dict (not heads, grid or max_frames)."""
    fit: dict[str, Any] = {}
    if "predictor_embed.weight" in sd:
        fit["predictor_embed_dim"], fit["embed_dim"] = (int(n) for n in sd["predictor_embed.weight"].shape)
    if "action_encoder.weight" in sd:
        fit["action_dim"] = int(sd["action_encoder.weight"].shape[1])
    blocks = {int(k.split(".")[1]) for k in sd if k.startswith("predictor_blocks.")}
    if blocks:
        fit["depth"] = max(blocks) + 1
    if "predictor_blocks.0.mlp.fc3.weight" in sd:
        fit["use_silu"] = True
    elif "predictor_blocks.0.mlp.fc1.weight" in sd:
        fit["use_silu"] = False
    if "predictor_blocks.0.attn.qkv.weight" in sd:
        fit["qkv_bias"] = "predictor_blocks.0.attn.qkv.bias" in sd
    return fit


def check_state_dict(sd: Mapping[str, Any], cfg: PredictorConfig, source: str = "checkpoint",
                     expected: Optional[Mapping[str, tuple[int, ...]]] = None) -> None:
    """Refuse a state_dict that does not fit `cfg` (or the `expected` shapes), listing missing,
    unexpected and misshaped keys."""
    from .init import param_shapes

    check_tensors(sd, source)
    expected = param_shapes(cfg) if expected is None else expected
    missing = sorted(set(expected) - set(sd))
    unexpected = sorted(set(sd) - set(expected))
    misshaped = sorted(k for k in set(expected) & set(sd) if tuple(sd[k].shape) != expected[k])
    if not (missing or unexpected or misshaped):
        return

    def few(keys: list[str]) -> str:
        return ", ".join(keys[:6]) + (f", ... ({len(keys)} in all)" if len(keys) > 6 else "")

    parts = []
    if missing:
        parts.append(f"missing: {few(missing)}")
    if unexpected:
        parts.append(f"unexpected: {few(unexpected)}")
    if misshaped:
        parts.append("wrong shape: " + few(
            [f"{k} {list(sd[k].shape)} (config wants {list(expected[k])})" for k in misshaped]))
    fit = {k: v for k, v in infer_config_fields(sd).items() if getattr(cfg, k, v) != v}
    hint = ""
    if fit:
        hint = "; the checkpoint looks like " + ", ".join(f"{k}={v}" for k, v in fit.items())
    raise VitacError(f"{source} does not match the config: " + "; ".join(parts) + hint)


_FLOAT_DTYPES = ("float16", "bfloat16", "float32", "float64")


def check_tensors(sd: Mapping[str, Any], source: str = "checkpoint") -> None:
    """Refuse weights that would load as garbage: a non-float dtype (int, bool, complex: cast
    silently by load_state_dict), a sparse or meta tensor (no values), NaN or Inf (blamed on the
    inputs later, at the first prediction)."""
    import torch

    for key, t in sd.items():
        if t.layout != torch.strided or t.device.type == "meta":
            where = "meta (no data)" if t.device.type == "meta" else str(t.layout).replace("torch.", "")
            raise VitacError(f"{source}: weight {key} is a {where} tensor: save dense tensors (.to_dense())")
        dtype = str(t.dtype).replace("torch.", "")
        if dtype not in _FLOAT_DTYPES:
            raise VitacError(f"{source}: weight {key} has dtype {dtype}; weights must be floating point "
                             f"({', '.join(_FLOAT_DTYPES)})")
        if t.numel() and not bool(torch.isfinite(t).all()):
            raise VitacError(f"{source}: weight {key} contains NaN or Inf (a diverged or damaged checkpoint)")


def load_predictor(path: str | os.PathLike, config: Optional[PredictorConfig] = None):
    """The reference `Predictor` (eval mode, float32) with the weights of `path`.

    `config` defaults to the `vitac-l384` preset. Nothing in the file is executed.
    """
    import torch
    from .model import Predictor

    cfg = config or PredictorConfig.preset("vitac-l384")
    sd = read_state_dict(path)
    check_state_dict(sd, cfg, source=str(path))
    model = Predictor(cfg)
    model.load_state_dict({k: v.to(torch.float32) for k, v in sd.items()})
    return model.eval()


def load_encoder(path: str | os.PathLike, config=None, key: str = "encoder"):
    """The reference `Encoder` (eval, float32) from `path`: a published V-JEPA 2-AC checkpoint
    (its `key` entry: "encoder" or "target_encoder") or an encoder state_dict. `config` defaults to
    the `vit-l` preset. Nothing in the file is executed."""
    import torch

    from ..encoder.config import EncoderConfig
    from .encoder import Encoder, encoder_param_shapes

    if key not in ("encoder", "target_encoder"):
        raise VitacError(f"--encoder-key must be encoder or target_encoder, got {key!r}")
    cfg = config or EncoderConfig.preset("vit-l")
    sd = read_state_dict(path, part=key)
    check_state_dict(sd, cfg, source=f"{path} ({key})", expected=encoder_param_shapes(cfg))
    model = Encoder(cfg)
    model.load_state_dict({k: v.to(torch.float32) for k, v in sd.items()})
    return model.eval()


def _from_source(checkpoint: Optional[str | os.PathLike], random_init: bool, load, random):
    if checkpoint is not None and random_init:
        raise VitacError("give either --checkpoint or --random-init, not both")
    if checkpoint is not None:
        return load()
    if not random_init:
        raise VitacError("no weights: give --checkpoint PATH, or --random-init for seeded random weights")
    return random()


def predictor_from_source(checkpoint: Optional[str | os.PathLike] = None, config: Optional[PredictorConfig] = None,
                          random_init: bool = False, seed: int = 0):
    """The reference predictor from a checkpoint, or with seeded random weights (`random_init`),
    as `export` and `validate` take them (--checkpoint, or --random-init --seed N)."""
    from .init import random_predictor

    cfg = config or PredictorConfig.resolve()
    return _from_source(checkpoint, random_init, lambda: load_predictor(checkpoint, cfg),
                        lambda: random_predictor(cfg, seed))


def encoder_from_source(checkpoint: Optional[str | os.PathLike] = None, config=None, random_init: bool = False,
                        seed: int = 0, key: str = "encoder"):
    """The reference encoder from a checkpoint (its `key` part), or with seeded random weights."""
    from ..encoder.config import EncoderConfig
    from .encoder import random_encoder

    cfg = config or EncoderConfig.resolve()
    return _from_source(checkpoint, random_init, lambda: load_encoder(checkpoint, cfg, key),
                        lambda: random_encoder(cfg, seed))


def save_checkpoint(model, path: str | os.PathLike) -> None:
    """Write `model`'s weights (upstream key names) to `.safetensors` or `.pt`, atomically."""
    import torch

    p = Path(path)
    tmp = p.with_name(p.name + ".tmp")
    sd = {k: v.detach().contiguous() for k, v in model.state_dict().items()}
    if p.suffix == ".safetensors":
        from safetensors.torch import save_file

        save_file(sd, str(tmp))
    else:
        torch.save(sd, str(tmp))
    os.replace(tmp, p)
