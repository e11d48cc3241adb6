"""The one device table (vitac_deploy.devices): the memory model's budgets and the roofline's
ceilings are views of it, old keys resolve as aliases, and a device without a figure a consumer
needs is refused in one line naming that figure (exit 2 from the CLI)."""

import json
import subprocess
import sys

import pytest

from tests.conftest import SMALL
from vitac_deploy import VitacError
from vitac_deploy.devices import ALIASES, DEVICES, FIGURES, device, device_for_gpu, need, with_figures
from vitac_deploy.planning import memory
from vitac_deploy.planning.traffic import peak_for
from vitac_deploy.roofline import ROOFLINE_DEVICES, device_for_gpu as roofline_key, kernel_seconds, roofline_device


def _cli(*args, cwd=None):
    return subprocess.run([sys.executable, "-m", "vitac_deploy", *map(str, args)], capture_output=True, text=True,
                          cwd=cwd, check=False)


def _one_line_exit_2(p: subprocess.CompletedProcess) -> str:
    assert p.returncode == 2, (p.stdout, p.stderr)
    assert p.stderr.startswith("error:") and len(p.stderr.strip().splitlines()) == 1, p.stderr
    assert "Traceback" not in p.stderr
    return p.stderr


def test_the_views_are_entries_of_the_one_table():
    """Every budget and every roofline device is an object of `DEVICES`, not a copy."""
    table = {id(d) for d in DEVICES.values()}
    assert all(id(d) in table for d in memory.DEVICES.values())
    assert all(id(d) in table for d in ROOFLINE_DEVICES.values())
    assert list(ROOFLINE_DEVICES) == list(with_figures("bandwidth_tb_s"))


@pytest.mark.parametrize("budget_key, roofline_key_", [("h100-80gb", "h100"), ("agx-orin-64gb", "agx-orin")])
def test_a_device_in_both_places_is_one_object_with_memory_and_peaks(budget_key, roofline_key_):
    dev = memory.DEVICES[budget_key]
    assert dev is ROOFLINE_DEVICES[roofline_key_] is device(budget_key) is device(roofline_key_)
    assert dev.total is not None and dev.budget == dev.total - dev.reserve
    assert dev.bandwidth_tb_s is not None and dev.peak_tflops("fp16") is not None
    assert memory.device(roofline_key_) is dev and roofline_device(budget_key) is dev


def test_every_old_key_resolves():
    old_budget = ("orin-nano-8gb", "orin-nx-16gb", "agx-orin-32gb", "agx-orin-64gb", "h100-80gb")
    old_roofline = ("h100-pcie", "h100", "h200", "rtx-4090", "agx-orin", "thor")
    assert tuple(memory.DEVICES) == old_budget and tuple(ROOFLINE_DEVICES) == old_roofline
    for k in old_budget:
        assert memory.device(k) is memory.DEVICES[k] and memory.device(k).budget > 0
    for k in old_roofline:
        assert roofline_device(k) is ROOFLINE_DEVICES[k]


def test_aliases_name_one_device_and_shadow_no_key():
    assert ALIASES == {"h100-80gb": "h100", "agx-orin-64gb": "agx-orin"}
    assert not set(ALIASES) & set(DEVICES)
    for alias, key in ALIASES.items():
        assert device(alias) is DEVICES[key] and alias in DEVICES[key].aliases and DEVICES[key].key == key


def test_memory_figures_come_together():
    """A budget needs all three: a device has total, reserve and kind, or none of them."""
    for d in DEVICES.values():
        assert len({d.total is None, d.reserve is None, d.unified is None}) == 1, d.key


def test_gpu_names_match_roofline_keys():
    for name, key in (("NVIDIA H100 PCIe", "h100-pcie"), ("NVIDIA H100 80GB HBM3", "h100"), ("NVIDIA H200", "h200"),
                      ("Orin (nvgpu)", "agx-orin"), ("NVIDIA A100-SXM4-80GB", None), ("", None)):
        assert device_for_gpu(name) == roofline_key(name) == key
    h200 = peak_for("NVIDIA H200")
    assert h200 is ROOFLINE_DEVICES["h200"]
    assert set(h200.ceilings()) == {"name", "bandwidth_tb_s", "fp16_dense_tflops", "fp32_tflops", "source", "match",
                                   "derived"}


def test_unknown_key_is_one_line():
    with pytest.raises(VitacError, match=r"unknown device 'nope' \(known: .*h100-80gb.*agx-orin-64gb"):
        device("nope")
    with pytest.raises(VitacError, match="unknown device 'nope'"):
        memory.device("nope")
    with pytest.raises(VitacError, match="unknown device 'nope'"):
        roofline_device("nope")


def test_a_missing_figure_is_named():
    with pytest.raises(VitacError, match=r"'h200' \(H200 SXM\) has no published memory size for a memory budget "
                                         r"\(devices with one: .*h100/h100-80gb"):
        memory.device("h200")
    with pytest.raises(VitacError, match=r"'orin-nx-16gb' .* has no published memory bandwidth for a roofline"):
        roofline_device("orin-nx-16gb")
    with pytest.raises(VitacError, match="has no published memory bandwidth"):
        kernel_seconds(1.0, 1.0, DEVICES["orin-nano-8gb"], "fp16")
    with pytest.raises(VitacError, match="has no published fp32 rate for a test"):
        need(DEVICES["thor"], "fp32_tflops", purpose="a test")
    assert need(DEVICES["h100"], *FIGURES) is DEVICES["h100"]


def test_cli_device_budget_by_alias_is_the_same_budget():
    old, new = (_cli("info", "--samples", "400", "--device-budget", k, "--json") for k in ("h100-80gb", "h100"))
    assert old.returncode == new.returncode == 0, (old.stderr, new.stderr)
    a, b = json.loads(old.stdout)["plan"]["budget"], json.loads(new.stdout)["plan"]["budget"]
    assert a["device"].pop("key") == "h100-80gb" and b["device"].pop("key") == "h100"
    assert a == b and a["bytes"] == memory.DEVICES["h100-80gb"].budget


@pytest.mark.parametrize("args, says", [
    (["info", "--samples", "4", "--device-budget", "nope"], "unknown device 'nope'"),
    (["info", "--samples", "4", "--device-budget", "h200"], "has no published memory size"),
    (["bench", "--plan", "--roofline-device", "nope"], "unknown device 'nope'"),
    (["bench", "--plan", "--roofline-device", "orin-nano-8gb"], "has no published memory bandwidth"),
])
def test_cli_refuses_a_device_in_one_line(args, says, tmp_path):
    assert says in _one_line_exit_2(_cli(*args, cwd=tmp_path))
    assert list(tmp_path.iterdir()) == []   # nothing written


def test_bench_roofline_device_by_alias_reports_its_key(tmp_path):
    cfg_path = tmp_path / "small.json"
    cfg_path.write_text(json.dumps(SMALL.to_dict()))
    out = tmp_path / "b.json"
    p = _cli("bench", "--config", cfg_path, "--plan", "--samples", "4", "--topk", "2", "--cem-steps", "1",
             "--backend", "onnxruntime", "--roofline-device", "h100-80gb", "--baseline", "none", "--json", out)
    assert p.returncode == 0, p.stderr
    data = json.loads(out.read_text())
    (row,) = data["entries"]
    per_device = next(iter(data["roofline"].values()))["per_device_s"]
    assert set(per_device) == set(ROOFLINE_DEVICES)
    assert row["roofline_device"] == "h100" and row["roofline_s"] == per_device["h100"] > 0



def test_a_derived_rate_says_so_where_it_is_shown():
    """The Jetsons' fp16 rates are computed from INT8/FP4 figures, not published: the budget's compute
    limit and the docs' table say so."""
    import subprocess
    import sys

    from vitac_deploy.devices import device

    assert device("agx-orin-64gb").derived == ("fp16_dense_tflops",) and device("h100").derived == ()
    orin, h100 = (subprocess.run([sys.executable, "-m", "vitac_deploy", "info", "--samples", "400", "--device-budget",
                                  key], capture_output=True, text=True) for key in ("agx-orin-64gb", "h100-80gb"))
    assert orin.returncode == h100.returncode == 0, orin.stderr + h100.stderr
    assert "42.5 TFLOP/s dense fp16 (derived, not published)" in orin.stdout, orin.stdout
    assert "989.4 TFLOP/s dense fp16" in h100.stdout and "derived" not in h100.stdout, h100.stdout
