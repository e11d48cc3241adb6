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


def test_bench_plan_times_one_cem_plan_against_baseline(tmp_path):
    cfg = tmp_path / "c.json"
    cfg.write_text(SMALL.to_json())
    out = tmp_path / "plan.json"
    p = subprocess.run([sys.executable, "-m", "vitac_deploy", "bench", "--config", str(cfg), "--plan", "--samples", "12",
                        "--iterations", "2", "--horizon", "3", "--backend", "onnxruntime", "--json", str(out)],
                       capture_output=True, text=True)
    assert p.returncode == 0, p.stderr
    assert "CEM plan: 12 samples x 2 iterations x horizon 3" in p.stdout
    r = json.loads(out.read_text())
    assert r["mode"] == "plan" and r["options"]["plan"] == {"samples": 12, "elites": 1, "iterations": 2,
                                                             "horizon": 3, "seed": 0}
    (e,) = r["entries"]
    assert e["backend"] == "onnxruntime" and e["batch"] == 12
    assert abs(e["speedup_vs_baseline"] - r["baseline"]["plan"]["plan_s"] / e["plan_s"]) < 1e-9
    # same seed, same samples, float32: the cached runtime reaches the same plan as the upstream way
    assert e["score_diff_vs_baseline"] < 1e-5
    assert e["kv_cache_mib"] > 0 and e["device_memory"] is None   # cpu: no device figures
    bad = subprocess.run([sys.executable, "-m", "vitac_deploy", "bench", "--config", str(cfg), "--plan",
                          "--samples", "4", "--elites", "5"], capture_output=True, text=True)
    assert bad.returncode == 2 and "--elites" in bad.stderr
    bad = subprocess.run([sys.executable, "-m", "vitac_deploy", "bench", "--config", str(cfg), "--backend", "jax"],
                         capture_output=True, text=True)
    assert bad.returncode == 2 and "unknown backend 'jax'" in bad.stderr
    bad = subprocess.run([sys.executable, "-m", "vitac_deploy", "bench", "--config", str(cfg), "--backend", "tensorrt"],
                         capture_output=True, text=True)
    assert bad.returncode == 2 and "runs on --device cuda" in bad.stderr and "Traceback" not in bad.stderr
    bad = subprocess.run([sys.executable, "-m", "vitac_deploy", "bench", "--config", str(cfg), "--json",
                          str(tmp_path / "no" / "b.json")], capture_output=True, text=True)
    assert bad.returncode == 2 and bad.stderr.startswith("error: cannot write --json")
