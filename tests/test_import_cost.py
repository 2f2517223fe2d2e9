"""What ``import fusedkat`` and the CLI's help/error paths load (issue 20: they used to pull in timm
and inductor): checked in fresh subprocesses through ``sys.modules``.  The KAT models still
appear in timm's registry whichever of ``fusedkat`` / ``timm`` is imported first."""
from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

HEAVY = ("timm", "torch._inductor", "torch._dynamo", "cutlass", "matplotlib", "scipy", "sklearn")


def _py(code: str) -> dict:
    env = dict(os.environ, CUDA_VISIBLE_DEVICES="")
    r = subprocess.run([sys.executable, "-W", "error", "-c", code], capture_output=True, text=True, env=env, timeout=300)
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout.strip().splitlines()[-1])


def _loaded_after(prelude: str) -> dict:
    return _py(prelude + "\nimport sys, json\n"
               f"print(json.dumps({{m: any(k == m or k.startswith(m + '.') for k in sys.modules) for m in {HEAVY + ('torch',)!r}}}))")


def test_import_fusedkat_loads_only_the_standard_library():
    loaded = _loaded_after("import fusedkat")
    assert not any(loaded.values()), loaded


def test_import_fusedkat_and_torch_registers_the_ops_without_heavy_modules():
    loaded = _loaded_after("import fusedkat, torch\nassert hasattr(torch.ops.fusedkat, 'rational_linear')")
    assert loaded["torch"] and not any(loaded[m] for m in HEAVY), loaded


@pytest.mark.parametrize("argv", [["--help"], ["demo", "--help"], ["--version"], ["convert"], ["fit", "--form"],
                                  ["nosuchcommand"]])
def test_cli_help_and_usage_errors_load_nothing_heavy(argv):
    code = ("import sys, fusedkat.cli\n"
            "try:\n    fusedkat.cli.main(%r)\nexcept SystemExit:\n    pass\n" % (argv,))
    loaded = _loaded_after(code)
    assert not any(loaded[m] for m in HEAVY), loaded
    assert not loaded["torch"], loaded  # argparse alone: not even torch


@pytest.mark.parametrize("order", ["import fusedkat, timm", "import timm, fusedkat", "import timm\nimport torch\nimport fusedkat",
                                   # a spec lookup without an import (transformers probes for timm so)
                                   # must not use up the registration
                                   "import fusedkat, importlib.util\nimportlib.util.find_spec('timm')\nimport timm"])
def test_kat_models_registered_in_timm_in_either_import_order(order):
    out = _py(order + "\nimport json\n"
              "m = timm.create_model('kat_tiny_patch16_224', num_classes=3)\n"
              "print(json.dumps({'names': timm.list_models('kat_*'), 'type': type(m).__name__}))")
    assert out["type"] == "KAT"
    assert "kat_tiny_patch16_224" in out["names"] and "kat_base_gelu_patch16_224" in out["names"]


def test_lazy_attributes():
    out = _py("import fusedkat, json, sys\n"
              "before = 'fusedkat.nn' in sys.modules\n"
              "mods = [fusedkat.nn.GRKAN.__name__, fusedkat.init.__name__, fusedkat.group_rational.__name__]\n"
              "try:\n    fusedkat.no_such_thing\n    missing = False\nexcept AttributeError:\n    missing = True\n"
              "print(json.dumps({'before': before, 'mods': mods, 'missing': missing, 'dir': 'nn' in dir(fusedkat)}))")
    assert out == {"before": False, "mods": ["GRKAN", "fusedkat.init", "group_rational"], "missing": True, "dir": True}


def test_ctrl_c_during_start_up_is_one_line():
    """SIGINT while the command's modules import (torch, timm): "interrupted", no traceback.
    Simulated deterministically by raising KeyboardInterrupt from the import of the command module."""
    code = ("import sys, builtins\n"
            "real = builtins.__import__\n"
            "def imp(name, *a, **k):\n"
            "    if name.endswith('app.info') or name == 'torch':\n        raise KeyboardInterrupt\n"
            "    return real(name, *a, **k)\n"
            "builtins.__import__ = imp\n"
            "import fusedkat.cli\n"
            "sys.exit(fusedkat.cli.main(['info']))\n")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert r.returncode == 130, r.stderr
    assert r.stderr.strip() == "fusedkat info: interrupted"


def test_ctrl_c_while_parsing_is_one_line():
    code = ("import sys, argparse\n"
            "import fusedkat.cli\n"
            "def boom(*a, **k):\n    raise KeyboardInterrupt\n"
            "argparse.ArgumentParser.parse_args = boom\n"
            "sys.exit(fusedkat.cli.main(['info']))\n")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert r.returncode == 130 and r.stderr.strip() == "fusedkat: interrupted", r.stderr


def test_real_sigint_while_torch_imports_is_one_line():
    """A real SIGINT 0.3 s after start: ``fusedkat info`` is then importing torch (seconds)."""
    import signal
    import time

    proc = subprocess.Popen([sys.executable, "-m", "fusedkat.cli", "info"], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    time.sleep(0.3)
    proc.send_signal(signal.SIGINT)
    _out, err = proc.communicate(timeout=300)
    assert proc.returncode == 130, err
    assert err.strip() == "fusedkat info: interrupted", err


def test_import_time_benchmark_runs_and_help_is_cheaper_than_torch(tmp_path):
    """bench.import_time end to end (1 round): the JSON has every case; ``fusedkat --help`` does
    not import torch, so it is far below the 1.5x goal (a wide margin: a loaded machine is noisy)."""
    js = tmp_path / "t.json"
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    r = subprocess.run([sys.executable, "-m", "bench.import_time", "--runs", "1", "--json", str(js)],
                       capture_output=True, text=True, timeout=600, cwd=root)
    assert r.returncode == 0, r.stderr
    s = json.loads(js.read_text())["summary"]
    assert set(s) >= {"import torch", "fusedkat --help", "import fusedkat, timm"}
    assert s["fusedkat --help"]["ratio_to_import_torch"] < 1.0


def test_compile_time_benchmark_runs_cold_and_reports_the_ratio(tmp_path):
    """bench.compile_time end to end on 1-block KAT-T / ViT-T at 32x32 (1 round): each model is
    compiled cold in its own interpreter, the JSON holds both first-step times, their ratio and
    the compile phases, and the printed table names the goal."""
    js = tmp_path / "ct.json"
    r = subprocess.run([sys.executable, "-m", "bench.compile_time", "--rounds", "1", "--depth", "1", "--img-size", "32",
                        "--batch", "2", "--json", str(js)], capture_output=True, text=True, timeout=900)
    assert r.returncode == 0, r.stderr[-3000:]
    doc = json.loads(js.read_text())
    med = doc["median_first_step_s"]
    assert med["vit"] > 0 and med["kat"] > 0
    assert abs(doc["kat_over_vit"] - med["kat"] / med["vit"]) < 1e-9
    for run in (doc["runs"]["vit"][0], doc["runs"]["kat"][0]):
        assert run["phases_s"].get("_compile.compile_inner", 0) > 0  # dynamo really compiled
        assert 0 < run["second_step_s"] < run["first_step_s"]
    assert "goal <= 1.5x" in r.stdout


def test_compile_time_benchmark_rejects_bad_arguments():
    r = subprocess.run([sys.executable, "-m", "bench.compile_time", "--rounds", "0"], capture_output=True, text=True,
                       timeout=120)
    assert r.returncode == 2 and "--rounds" in r.stderr
