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
