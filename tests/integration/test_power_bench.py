"""The power benchmark (tests/bench/bench_power.py), reduced to 20 ipmi_sim BMCs and
windows 5 and 20 against the serial ipmitool loop (a window of 1 is that loop,
inside one task), so that every CI run prints its figures in ~40 s.  Nothing is
asserted about time: only that every run of the table reached every BMC.
"""
import importlib.util
import pathlib

import pytest

BENCH = pathlib.Path(__file__).resolve().parents[1] / "bench" / "bench_power.py"

pytestmark = [pytest.mark.root, pytest.mark.slow]


def load_bench():
    spec = importlib.util.spec_from_file_location("bench_power", BENCH)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_power_benchmark_reduced(capsys):
    bench = load_bench()
    lines = []
    rows = bench.run(20, [5, 20], serial=True, out=lines.append)
    with capsys.disabled():
        print("\n" + "\n".join(lines[-len(rows) - 4:]))
    assert [r["label"] for r in rows] == ["serial loop (ipmitool)", "power, window 5", "power, window 20"]
    for row in rows:
        assert row["query"]["failed"] == 0 and row["cycle"]["failed"] == 0, row
