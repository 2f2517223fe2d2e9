"""bench.host_path runs on CPU and reports every case (the numbers themselves are machine-dependent)."""
import json

from bench import host_path


def test_host_path_measures_every_case(tmp_path):
    out = tmp_path / "h.json"
    assert host_path.main(["--calls", "50", "--reps", "1", "--json", str(out)]) == 0
    d = json.loads(out.read_text())
    assert set(d["us_per_call"]) == set(host_path.cases())
    assert all(v > 0 for v in d["us_per_call"].values())
    assert "fusedkat::rational_linear (no grad input)" in d["overhead_us"]
    assert not any(k.startswith("piece") for k in d["overhead_us"])
