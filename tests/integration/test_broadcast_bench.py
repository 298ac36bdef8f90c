"""The broadcast benchmark (tests/bench/bench_broadcast.py) in its --quick form (32 MiB, N=1,2,4,
chain and pull, 200 Mbit/s links), so that every CI run prints its table.  Nothing is asserted
about time: only that every receiver of every run got the image.
"""
import importlib.util
import pathlib

import pytest

BENCH = pathlib.Path(__file__).resolve().parents[1] / "bench" / "bench_broadcast.py"

pytestmark = [pytest.mark.root, pytest.mark.slow]


def load_bench():
    spec = importlib.util.spec_from_file_location("bench_broadcast", BENCH)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_broadcast_benchmark_quick(capsys):
    bench = load_bench()
    lines = []
    table = bench.run(32, (1, 2, 4), ("chain", "pull"), 200, out=lines.append)
    with capsys.disabled():
        print("\n" + "\n".join(lines[-11:]))
    assert sorted(table) == ["chain", "pull"]
    for method, rows in table.items():
        assert sorted(rows) == [1, 2, 4]
        for n, fig in rows.items():
            assert fig["failed"] == [] and fig["sizes_ok"], (method, n, fig)
