import json
import subprocess
import sys

from tests.conftest import SMALL


def test_bench_cli_measures_against_baseline(tmp_path):
    cfg = tmp_path / "c.json"
    cfg.write_text(SMALL.to_json())
    out = tmp_path / "b.json"
    p = subprocess.run([sys.executable, "-m", "vitac_deploy", "bench", "--config", str(cfg), "--batch", "1,3",
                        "--horizon", "3", "--repeats", "2", "--json", str(out), "--plot", str(tmp_path / "p.png")],
                       capture_output=True, text=True)
    assert p.returncode == 0, p.stderr
    r = json.loads(out.read_text())
    assert {(e["backend"], e["batch"]) for e in r["entries"]} == {(b, n) for b in ("onnxruntime", "torch") for n in (1, 3)}
    for e in r["entries"]:
        assert e["max_abs_vs_baseline"] < 1e-4
        assert abs(e["speedup_vs_baseline"] - e["baseline_rollout_ms"] / e["rollout_ms"]) < 1e-9
        assert len(e["per_frame_ms"]) == 3 and e["kv_cache_mib"] > 0
    assert (tmp_path / "p.png").stat().st_size > 1000
    bad = subprocess.run([sys.executable, "-m", "vitac_deploy", "bench", "--config", str(cfg), "--batch", "x"],
                         capture_output=True, text=True)
    assert bad.returncode == 2 and bad.stderr.startswith("error: --batch")


def test_bench_plan_times_the_upstream_planner_against_the_upstream_way(tmp_path):
    cfg = tmp_path / "c.json"
    cfg.write_text(SMALL.to_json())
    out = tmp_path / "plan.json"
    p = subprocess.run([sys.executable, "-m", "vitac_deploy", "bench", "--config", str(cfg), "--plan", "--samples", "12",
                        "--topk", "3", "--cem-steps", "2", "--horizon", "3", "--chunk", "5", "--backend", "onnxruntime",
                        "--json", str(out)], capture_output=True, text=True)
    assert p.returncode == 0, p.stderr
    assert "upstream CEM plan: 12 samples x top 3 x 2 steps x horizon 3" in p.stdout
    r = json.loads(out.read_text())
    assert r["mode"] == "plan" and r["options"]["plan"]["samples"] == 12 and r["options"]["plan"]["topk"] == 3
    assert r["plan"]["upstream_flops"] > r["plan"]["flops"] > 0
    (e,) = r["entries"]
    assert e["backend"] == "onnxruntime" and e["batch"] == 5
    assert abs(e["speedup_vs_baseline"] - r["baseline"]["plan"]["plan_s"] / e["plan_s"]) < 1e-9
    # same draws, float32: the cached runtime scores the same samples alike and reaches the same plan
    assert e["energy_max_abs_step0"] < 1e-5 and e["same_elites_every_step"]
    assert e["action_max_abs_vs_baseline"] < 1e-6
    assert e["kv_cache_mib"] > 0 and e["device_memory"] is None   # cpu: no device figures
    assert e["cuda_graphs_requested"] is False and e["cuda_graphs_used"] is False


def test_bench_plan_reports_flops_bytes_and_host_traffic_per_step(tmp_path):
    """Per row: its FLOP and byte counts (no peak known on a CPU), and the bytes that crossed the
    host boundary per CEM step: the samples' conditioning when the observation is staged, plus the
    [samples, N, D] broadcast the way before (`--context-staging host`), side by side."""
    cfg = tmp_path / "c.json"
    cfg.write_text(SMALL.to_json())
    out = tmp_path / "plan.json"
    p = subprocess.run([sys.executable, "-m", "vitac_deploy", "bench", "--config", str(cfg), "--plan", "--samples", "6",
                        "--topk", "2", "--cem-steps", "2", "--backend", "torch", "--backend", "torch-reference",
                        "--context-staging", "staged,host", "--baseline", "none", "--json", str(out)],
                       capture_output=True, text=True)
    assert p.returncode == 0, p.stderr
    rows = {e["backend"]: e for e in json.loads(out.read_text())["entries"]}
    assert set(rows) == {"torch", "torch host-context", "torch-reference", "torch-reference host-context"}
    cond = 6 * 2 * 2 * SMALL.action_dim * 4
    broadcast = 6 * SMALL.tokens_per_frame * SMALL.embed_dim * 4
    for name, e in rows.items():
        assert e["host_to_device_bytes_per_step"] == cond + (broadcast if "host-context" in name else 0), name
        assert e["device_to_host_bytes_per_step"] == 6 * 4
        assert e["flops"] > 0 and e["bytes_model"] > 0 and e["flop_fraction_of_peak"] is None
    assert rows["torch"]["runtime"].startswith("torch (cpu") and rows["torch-reference"]["cache"] == "reference"
    assert "host->dev B/step" in p.stdout and "peak is not known" in p.stdout


def test_bench_option_errors(tmp_path):
    cfg = tmp_path / "c.json"
    cfg.write_text(SMALL.to_json())

    def run(*args):
        return subprocess.run([sys.executable, "-m", "vitac_deploy", "bench", "--config", str(cfg), *args],
                              capture_output=True, text=True)

    for args, msg in ((["--plan", "--samples", "4", "--topk", "5"], "topk"),
                      (["--plan", "--context", "2"], "--context does not apply"),
                      (["--plan", "--chunk", "0"], "--chunk"),
                      (["--backend", "jax"], "unknown backend 'jax'"),
                      (["--backend", "tensorrt"], "runs on --device cuda"),
                      (["--cuda-graphs", "on"], "--cuda-graphs needs --device cuda"),
                      (["--cuda-graphs", "sometimes"], "--cuda-graphs must be off, on or both"),
                      (["--json", str(tmp_path / "no" / "b.json")], "cannot write --json"),
                      (["--json", str(tmp_path)], "is a directory"),
                      (["--samples", "8"], "--samples does not apply without --plan"),
                      (["--plan", "--batch", "4", "--plot", str(tmp_path / "p.png")], "--batch, --plot do not apply with --plan"),
                      (["--plan", "--horizon", "9"], "exceeds the model's max_frames"),
                      (["--plan", "--samples", "x"], "Invalid value for '--samples'"),
                      (["--compile-mode", "fastest"], "--compile-mode takes a comma list of default"),
                      (["--plan", "--context-staging", "sometimes"], "--context-staging takes a comma list"),
                      (["--context-staging", "host"], "--context-staging applies with --plan")):
        bad = run(*args)
        assert bad.returncode == 2 and msg in bad.stderr, (args, bad.stderr)
        assert len(bad.stderr.strip().splitlines()) == 1 and "Traceback" not in bad.stderr


def test_bench_rows_reach_disk_one_by_one_and_misfits_are_named():
    """A bench cut off midway keeps its finished rows (on_row after each), and a batch the memory
    model says cannot fit the free GPU memory is skipped with the reason, not attempted."""
    import numpy as np

    from vitac_deploy.benchmarks.rollouts import BenchOptions, does_not_fit, run_bench
    from vitac_deploy.config import PredictorConfig
    from vitac_deploy.exporters.artifact import ExportOptions, export_artifact
    from vitac_deploy.planning.memory import plan_memory
    from vitac_deploy.reference.init import random_predictor
    import tempfile
    from pathlib import Path

    model = random_predictor(SMALL, 0)
    snapshots = []
    with tempfile.TemporaryDirectory() as tmp:
        art = Path(tmp) / "a"
        export_artifact(model, art, ExportOptions(precisions=["fp32"], validate=False))
        r = run_bench(model, art, BenchOptions(backends=["onnxruntime"], batches=[1, 2], horizon=2, repeats=1,
                                               warmup=0),
                      on_row=lambda res: snapshots.append(json.loads(json.dumps(res))))
    # baseline, runtime, baseline, runtime: each snapshot one row longer, none complete
    assert [len(s["entries"]) + len(s["baseline"]) for s in snapshots] == [1, 2, 3, 4]
    assert not any(s["complete"] for s in snapshots) and r["complete"] is True
    assert snapshots[-1]["entries"] == json.loads(json.dumps(r["entries"]))

    cfg = PredictorConfig.preset("vitac-l384")
    need = plan_memory(cfg, 400, 7, 1, "fp16", backend="onnxruntime").device_total
    assert does_not_fit(cfg, "onnxruntime", 400, 7, 1, "fp16", need) is None
    assert does_not_fit(cfg, "onnxruntime", 400, 7, 1, "fp16", None) is None   # unknown: try it
    why = does_not_fit(cfg, "onnxruntime", 400, 7, 1, "fp16", need - 1)
    assert why.startswith("does not fit: needs about") and f"{need / 2**30:.1f} GiB" in why
    # what the H200 run allocated successfully in run 2 (62.7 GiB), plus the input-features buffer a
    # staged context is broadcast into since (400 x 256 x 1024 float32)
    assert np.isclose(need / 2**30, 62.7 + 400 * 256 * 1024 * 4 / 2**30, atol=0.1)


def test_bench_both_cache_contracts_side_by_side(tmp_path):
    """`--cache concat,static`: a row per contract for onnxruntime (torch once), each with the cache
    bytes its runtime allocated (static: one arena, half) and its own peak RSS, both exact."""
    cfg = tmp_path / "c.json"
    cfg.write_text(SMALL.to_json())
    out = tmp_path / "b.json"
    p = subprocess.run([sys.executable, "-m", "vitac_deploy", "bench", "--config", str(cfg), "--batch", "2",
                        "--horizon", "3", "--repeats", "1", "--warmup", "0", "--cache", "concat,static",
                        "--json", str(out)], capture_output=True, text=True)
    assert p.returncode == 0, p.stderr
    r = json.loads(out.read_text())
    rows = {(e["backend"], e["cache"]): e for e in r["entries"]}
    assert set(rows) == {("onnxruntime", "concat"), ("onnxruntime static", "static"), ("torch", "in-place")}
    concat, static = rows[("onnxruntime", "concat")], rows[("onnxruntime static", "static")]
    assert static["cache_bytes"] * 2 == concat["cache_bytes"] > 0
    assert all(e["max_abs_vs_baseline"] < 1e-4 and e["peak_host_rss_mib"] > 0 for e in rows.values())
    assert "onnxruntime static" in p.stdout
    bad = subprocess.run([sys.executable, "-m", "vitac_deploy", "bench", "--config", str(cfg), "--cache", "ring"],
                         capture_output=True, text=True)
    assert bad.returncode == 2 and "--cache takes" in bad.stderr
