"""The memory and compute model of a CEM plan (vitac_deploy.planning.memory) and `info --plan-*`."""

from __future__ import annotations

import io
import itertools
import math
import os
import subprocess
import sys
from dataclasses import fields

import pytest

from tests.conftest import SMALL, SMALL_SWIGLU_EXTR
from vitac_deploy.config import PRESETS, PredictorConfig
from vitac_deploy.contract import past_names, rope_rows
from vitac_deploy.errors import VitacError
from vitac_deploy.planning.memory import (
    DEVICES,
    GiB,
    PlanMemory,
    activation_terms,
    affine_terms,
    chunks_needed,
    frame_flops,
    largest_chunk,
    parse_bytes,
    plan_flops,
    plan_memory,
    upstream_plan_flops,
)

CONFIGS = [SMALL, SMALL_SWIGLU_EXTR, PRESETS["vitac-l384"], PRESETS["vjepa2-ac-vitg"]]
E = {"fp16": 2, "fp32": 4}


def _ids(cfgs):
    return [f"d{c.predictor_embed_dim}x{c.depth}{'-swiglu' if c.use_silu else ''}" for c in cfgs]


# -- memory: the exact terms -----------------------------------------------------------------------
@pytest.mark.parametrize("cfg", CONFIGS, ids=_ids(CONFIGS))
@pytest.mark.parametrize("precision", ["fp16", "fp32"])
def test_kv_term_is_the_runtimes_allocation(cfg, precision):
    """What the runtimes allocate: per past name (key/value of every block) a buffer of
    batch x heads x max_frames x L x head_dim elements, in two arenas (past and present)."""
    e = E[precision]
    for chunk, horizon, context in [(1, 1, 1), (7, 2, 1), (400, 2, 1), (3, 2, 2)]:
        F = context + horizon - 1
        if F > cfg.max_frames:
            continue
        one_arena = len(past_names(cfg)) * chunk * cfg.num_heads * F * cfg.tokens_per_step * cfg.head_dim * e
        for backend, engines in [("tensorrt", 1), ("tensorrt", 2), ("onnxruntime", 1)]:
            kw = {"horizon": horizon, "context": context, "precision": precision, "backend": backend,
                  "engines": engines}
            assert plan_memory(cfg, chunk, **kw).kv_cache == 2 * one_arena
            assert plan_memory(cfg, chunk, double_buffered=False, **kw).kv_cache == one_arena
            assert one_arena == chunk * F * cfg.kv_bytes_per_frame(e)


@pytest.mark.parametrize("cfg", CONFIGS, ids=_ids(CONFIGS))
def test_buffers_and_weights(cfg):
    B, N, D = 5, cfg.tokens_per_frame, cfg.embed_dim
    frame = B * N * D * 4
    cond = B * (2 * cfg.action_dim + (cfg.action_dim - 1 if cfg.use_extrinsics else 0)) * 4
    ort = plan_memory(cfg, B, 2, backend="onnxruntime")
    trt1 = plan_memory(cfg, B, 2, backend="tensorrt", engines=1)
    trt2 = plan_memory(cfg, B, 2, backend="tensorrt", engines=2)
    assert ort.frame_buffers == 4 * frame and ort.host_pinned == 0   # input features (staged context) too
    assert trt1.frame_buffers == 4 * frame and trt1.host_pinned == frame + cond   # input features + conditioning
    assert ort.weights == trt1.weights == cfg.num_parameters() * 2
    assert trt2.weights == 2 * trt1.weights
    assert plan_memory(cfg, B, 2, precision="fp32").weights == cfg.num_parameters() * 4
    rope = sum(t.nbytes for t in rope_rows(cfg, "float16"))   # the tables the runtimes upload, whole
    assert ort.small == rope + N * D * 4 + B * 4 + cond
    for m in (ort, trt1, trt2):
        assert m.device_total == m.weights + m.kv_cache + m.frame_buffers + m.activations + m.small
        assert m.total(unified=False) == m.device_total
        assert m.total(unified=True) == m.device_total + m.host_pinned
        assert [n for n, _ in m.rows()] and sum(b for _, b in m.rows()) == m.device_total + m.host_pinned


@pytest.mark.parametrize("cfg", CONFIGS, ids=_ids(CONFIGS))
@pytest.mark.parametrize("backend,engines", [("tensorrt", 1), ("tensorrt", 2), ("onnxruntime", 1)])
def test_memory_is_affine_in_chunk(cfg, backend, engines):
    kw = {"horizon": 2, "backend": backend, "engines": engines}
    ms = [plan_memory(cfg, c, **kw) for c in range(1, 7)]
    for f in fields(PlanMemory):
        values = [getattr(m, f.name) for m in ms]
        steps = {b - a for a, b in itertools.pairwise(values)}
        assert len(steps) == 1, (f.name, values)
    for unified in (False, True):
        fixed, per = affine_terms(cfg, unified=unified, **kw)
        for c in (1, 13, 400):
            assert plan_memory(cfg, c, **kw).total(unified) == fixed + per * c


@pytest.mark.parametrize("cfg", CONFIGS, ids=_ids(CONFIGS))
@pytest.mark.parametrize("unified", [False, True])
@pytest.mark.parametrize("fused", [False, True])
def test_largest_chunk_is_the_largest_that_fits(cfg, unified, fused):
    S = 400
    kw = {"horizon": 2, "engines": 2, "fused_attention": fused}
    fixed, per = affine_terms(cfg, unified=unified, **kw)
    budgets = [0, fixed, fixed + per - 1, fixed + per, fixed + 10 * per + per // 2, 3 * GiB, 8 * GiB,
               fixed + S * per, fixed + (S + 5) * per] + [d.budget for d in DEVICES.values()]
    for budget in budgets:
        c = largest_chunk(cfg, budget, samples=S, unified=unified, **kw)
        assert 0 <= c <= S
        if c:
            assert plan_memory(cfg, c, **kw).total(unified) <= budget
        if c < S:
            assert plan_memory(cfg, c + 1, **kw).total(unified) > budget
    assert largest_chunk(cfg, fixed + per - 1, samples=S, unified=unified, **kw) == 0
    assert largest_chunk(cfg, fixed + per, samples=S, unified=unified, **kw) == 1
    assert largest_chunk(cfg, 10**15, samples=S, unified=unified, **kw) == S
    assert chunks_needed(400, 56) == 8 and chunks_needed(400, 400) == 1 and chunks_needed(400, 0) == 0


@pytest.mark.parametrize("cfg", CONFIGS, ids=_ids(CONFIGS))
def test_fused_attention_removes_exactly_the_scores_term(cfg):
    for B, F, e in [(1, 1, 2), (4, 2, 2), (3, 3, 4)]:
        unfused = activation_terms(cfg, B, F, e)
        fused = activation_terms(cfg, B, F, e, fused_attention=True)
        L = cfg.tokens_per_step
        assert unfused["scores"] == 2 * B * cfg.num_heads * L * (F * L) * e
        assert fused["scores"] == 0
        assert {k: v for k, v in fused.items() if k not in ("scores", "peak")} == \
               {k: v for k, v in unfused.items() if k not in ("scores", "peak")}
        for t in (unfused, fused):   # the peak of the two phases plus what stays live
            assert t["peak"] == t["live"] + max(t["qkv"] + t["scores"] + t["attn_out"], t["mlp"])
    # plan_memory: activations at cache length F; every context shares one buffer, so a second
    # (first-frame) engine adds weights, not activations
    for engines in (1, 2):
        for fused_ in (False, True):
            m = plan_memory(cfg, 6, 2, engines=engines, fused_attention=fused_)
            assert m.activations == activation_terms(cfg, 6, 2, 2, fused_)["peak"]
        other = {f.name for f in fields(PlanMemory)} - {"activations"}
        a, b = plan_memory(cfg, 6, 2, engines=engines), plan_memory(cfg, 6, 2, engines=engines, fused_attention=True)
        assert all(getattr(a, n) == getattr(b, n) for n in other) and b.activations <= a.activations
        if cfg in PRESETS.values():   # there the score matrix is the peak: fusing lowers it
            assert b.activations < a.activations


def test_bad_options_are_one_line_errors():
    cfg = PRESETS["vitac-l384"]
    for kw in [{"chunk": 0, "horizon": 2}, {"chunk": 1, "horizon": 0}, {"chunk": 1, "horizon": 2, "precision": "int8"},
               {"chunk": 1, "horizon": 2, "backend": "tvm"}, {"chunk": 1, "horizon": 2, "engines": 3},
               {"chunk": 1, "horizon": 2, "backend": "onnxruntime", "engines": 2},
               {"chunk": 1, "horizon": 8, "context": 2}]:
        with pytest.raises(VitacError) as err:
            plan_memory(cfg, **kw)
        assert "\n" not in str(err.value)


# -- compute -----------------------------------------------------------------------------------------
def _brute_force_frame_flops(cfg: PredictorConfig, cached_frames: int) -> int:
    """FLOPs of one frame of one sample by walking the reference model's Linear layers: each one
    costs 2 x in x out per token it is applied to; attention adds q k^T and p v per block."""
    from torch import nn

    from vitac_deploy.reference import random_predictor

    model = random_predictor(cfg, 0)
    N, L = cfg.tokens_per_frame, cfg.tokens_per_step
    tokens = {"predictor_embed": N, "predictor_proj": N, "action_encoder": 1, "state_encoder": 1,
              "extrinsics_encoder": 1 if cfg.use_extrinsics else 0}
    total = 0
    for name, module in model.named_modules():
        if isinstance(module, nn.Linear):
            n = L if name.startswith("predictor_blocks.") else tokens[name]
            total += 2 * module.in_features * module.out_features * n
    keys = (cached_frames + 1) * L
    for _ in model.predictor_blocks:
        for _head in range(cfg.num_heads):
            total += 2 * L * keys * cfg.head_dim   # q k^T
            total += 2 * L * keys * cfg.head_dim   # p v
    return total


def _counted_flops(cfg: PredictorConfig, cached_frames: int, new_frames: int = 1) -> int:
    """torch's FlopCounterMode on the reference model (math SDPA, so attention is plain matmuls)."""
    import torch
    from torch.nn.attention import SDPBackend, sdpa_kernel
    from torch.utils.flop_counter import FlopCounterMode

    from vitac_deploy.reference import random_predictor

    model = random_predictor(cfg, 0).eval()
    N, D, A = cfg.tokens_per_frame, cfg.embed_dim, cfg.action_dim
    T = cached_frames + new_frames
    g = torch.Generator().manual_seed(0)
    h, a, s = torch.randn(1, T, N, D, generator=g), torch.randn(1, T, A, generator=g), torch.randn(1, T, A, generator=g)
    x = torch.randn(1, T, A - 1, generator=g) if cfg.use_extrinsics else None
    with torch.no_grad():
        cache = None
        if cached_frames:
            _, cache = model.forward_frames(h[:, :cached_frames], a[:, :cached_frames], s[:, :cached_frames],
                                            None if x is None else x[:, :cached_frames])
        counter = FlopCounterMode(display=False)
        with counter, sdpa_kernel(SDPBackend.MATH):
            model.forward_frames(h[:, cached_frames:], a[:, cached_frames:], s[:, cached_frames:],
                                 None if x is None else x[:, cached_frames:], cache=cache, start=cached_frames)
    return counter.get_total_flops()


@pytest.mark.parametrize("cfg", [SMALL, SMALL_SWIGLU_EXTR], ids=_ids([SMALL, SMALL_SWIGLU_EXTR]))
def test_frame_flops_by_brute_force(cfg):
    for t in range(3):
        assert frame_flops(cfg, t) == _brute_force_frame_flops(cfg, t) == _counted_flops(cfg, t)


@pytest.mark.parametrize("cfg", [SMALL, SMALL_SWIGLU_EXTR], ids=_ids([SMALL, SMALL_SWIGLU_EXTR]))
def test_plan_flops(cfg):
    f = [_brute_force_frame_flops(cfg, t) for t in range(4)]
    # context 1, horizon 2: frames 0 and 1 of every sample, every step
    assert plan_flops(cfg, 400, 2, 10) == 10 * 400 * (f[0] + f[1])
    # context 2, horizon 2: frame 0 (shared history) once per runtime call at batch 1, then frames 1, 2
    assert plan_flops(cfg, 400, 2, 10, context=2) == 10 * (400 * (f[1] + f[2]) + f[0])
    assert plan_flops(cfg, 400, 2, 10, context=2, chunk=56) == 10 * (400 * (f[1] + f[2]) + 8 * f[0])
    # upstream: predicting frame C+h recomputes frames 0..C+h-1 with a dense masked score matrix
    dense = [_counted_flops(cfg, 0, T) for T in (1, 2, 3)]
    assert upstream_plan_flops(cfg, 400, 2, 10) == 10 * 400 * (dense[0] + dense[1])
    assert upstream_plan_flops(cfg, 400, 3, 10) == 10 * 400 * sum(dense)
    assert upstream_plan_flops(cfg, 400, 2, 10, dense_mask=False) == 10 * 400 * (f[0] + f[0] + f[1])
    assert upstream_plan_flops(cfg, 400, 2, 10, context=2) == 10 * 400 * (dense[1] + dense[2])


# -- parsing -----------------------------------------------------------------------------------------
def test_parse_bytes():
    good = {"8GiB": 8 * 2**30, "7.5GB": 7_500_000_000, "6000MiB": 6000 * 2**20, "512 mib": 512 * 2**20,
            " 1.5 GiB ": 3 * 2**29, "1024": 1024, "100B": 100, "2TB": 2 * 10**12, "0.5KiB": 512, ".5 MB": 500_000}
    for text, value in good.items():
        assert parse_bytes(text) == value, text
    for text in ["junk", "", "8 G", "8GiBs", "-1GiB", "0GiB", "GiB", "1e9", "8 GiB 2", "1,000MB", "0.0001B"]:
        with pytest.raises(VitacError) as err:
            parse_bytes(text)
        assert "\n" not in str(err.value)


# -- CLI ---------------------------------------------------------------------------------------------
def _cli(*args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "COLUMNS": "160"}
    return subprocess.run([sys.executable, "-m", "vitac_deploy", *args], capture_output=True, text=True, env=env,
                          check=False)


def test_cli_plan_with_budget():
    p = _cli("info", "--preset", "vjepa2-ac-vitg", "--samples", "400", "--budget", "8GiB")
    assert p.returncode == 0, p.stderr
    cfg = PRESETS["vjepa2-ac-vitg"]
    best = largest_chunk(cfg, 8 * GiB, horizon=2, samples=400, engines=2)
    line = next(ln for ln in p.stdout.splitlines() if "largest chunk that fits" in ln)
    assert line.split("│")[-2].strip() == str(best) and best > 0
    assert f"{math.ceil(400 / best)}" in next(ln for ln in p.stdout.splitlines() if "chunks per CEM step" in ln)
    assert "KV cache per frame" in p.stdout   # the config table is still there


def test_cli_device_budget_and_onnxruntime():
    p = _cli("info", "--samples", "400", "--device-budget", "h100-80gb", "--chunk", "100")
    assert p.returncode == 0, p.stderr
    assert "compute limit" in p.stdout and "989.4" in p.stdout
    p = _cli("info", "--samples", "8", "--backend", "onnxruntime", "--precision", "fp32")
    assert p.returncode == 0, p.stderr
    text = " ".join(p.stdout.split())   # the title wraps
    assert "(fp32, onnxruntime, 1 engine," in text and "largest chunk" not in text


@pytest.mark.parametrize("args", [
    ["--samples", "400", "--budget", "junk"],
    ["--samples", "400", "--device-budget", "nope"],
    ["--samples", "400", "--budget", "8GiB", "--device-budget", "h100-80gb"],
    ["--samples", "0"],
    ["--samples", "4", "--chunk", "0"],
    ["--samples", "4", "--precision", "int8"],
    ["--samples", "4", "--backend", "onnxruntime", "--engines", "2"],
    ["--samples", "4", "--horizon", "9"],
    ["--budget", "8GiB"],
])
def test_cli_bad_plan_options_are_one_line_exit_2(args):
    p = _cli("info", *args)
    assert p.returncode == 2, (args, p.stdout, p.stderr)
    assert p.stderr.startswith("error:") and len(p.stderr.strip().splitlines()) == 1, p.stderr
    assert p.stdout == ""   # nothing printed before the error


def test_cli_plain_info_unchanged():
    from rich.console import Console

    from vitac_deploy.cli.info import config_table

    p = _cli("info")
    assert p.returncode == 0, p.stderr
    buf = io.StringIO()
    Console(file=buf, width=160).print(config_table(PRESETS["vitac-l384"], "vitac-l384 (default)"))
    assert p.stdout == buf.getvalue()
    assert "CEM plan" not in p.stdout


def test_docs_tables_come_from_the_code():
    """docs/planning-memory.md's generated block is what scripts/plan_memory_table.py prints now."""
    import importlib.util
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    spec = importlib.util.spec_from_file_location("plan_memory_table", root / "scripts" / "plan_memory_table.py")
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    doc = (root / "docs" / "planning-memory.md").read_text(encoding="utf-8")
    assert script.replace_block(doc, script.render()) == doc, \
        "docs/planning-memory.md is stale: run python scripts/plan_memory_table.py --write"
