# Copyright: (c) 2026, gridops.metal developers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""A reduced run of tests/bench/bench_reservations.py, so every CI log shows the inventory figures."""
import importlib.util
import pathlib

import pytest

BENCH = pathlib.Path(__file__).resolve().parents[3] / "bench" / "bench_reservations.py"


@pytest.mark.slow
def test_reservation_inventory_figures(capsys):
    spec = importlib.util.spec_from_file_location("bench_reservations", BENCH)
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    with capsys.disabled():
        print("\nansible-inventory --list, reduced (the full run: %s)" % BENCH.relative_to(BENCH.parents[2]))
        results = bench.run(nodes=1000, jobs=10, per_job=100, runs=1)
    assert [hosts for _label, _wall, _cpu, _mib, hosts, _parse in results] == [0, 1000, 1000, 1000, 1000, 1000, 1000, 1000]
