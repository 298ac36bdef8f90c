#!/usr/bin/env python
"""Benchmark of gridops.metal.power: one task querying, then cycling, many BMCs.

    .venv/bin/python tests/bench/bench_power.py [--bmcs 100] [--windows 1,10,25,50,100] [--no-serial]

Needs root (a network namespace).  Starts --bmcs OpenIPMI ipmi_sim instances
in a fresh namespace, each a real IPMI-over-LAN BMC on its own address with a
stub chassis control (a small sh script keeping the power state in a file, no
machine behind it: see tests/lib/gridops_test/bmcs.py).  For every window
size it runs one `gridops.metal.power` task through ansible-playbook (inside
the namespace) with state=query, then one with state=cycle on BMCs that are
all on, and compares with a serial loop of `ipmitool -I lanplus -C 3` calls
(query: `power status`; cycle: `power cycle`, then `power status` until on).

Prints a table: the task's wall time (ansible-playbook, start to end), the
time inside the module (its `elapsed`), and nodes that failed.  ipmi_sim
completes a cycle with a poll every second, so a cycle costs each BMC at least
about a second; the query is pure round trips.  Figures only: nothing is
asserted about time.
"""
import argparse
import os
import pathlib
import re
import sys
import tempfile
import time

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1] / "lib"))

from gridops_test import bmcs, net, procs  # noqa: E402  (after the path above)

DEFAULT_WINDOWS = (1, 10, 25, 50, 100)


def serial_loop(farm, state):
    """What an operator's shell loop does: one ipmitool call after the other."""
    start = time.monotonic()
    failed = 0
    for bmc in farm.bmcs:
        if state == "query":
            res = bmcs.ipmitool(farm.netns, bmc["address"], "chassis", "power", "status")
            failed += res.returncode != 0
            continue
        res = bmcs.ipmitool(farm.netns, bmc["address"], "chassis", "power", "cycle")
        if res.returncode != 0:
            failed += 1
            continue
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            out = bmcs.ipmitool(farm.netns, bmc["address"], "chassis", "power", "status").stdout
            if re.search(r"Chassis Power is on", out):
                break
            time.sleep(0.5)
        else:
            failed += 1
    return {"wall": time.monotonic() - start, "engine": None, "failed": failed}


def module_run(farm, state, window):
    res, wall = bmcs.run_module(farm.netns, {"nodes": farm.nodes(), "state": state, "window": window,
                                             "timeout": 60})
    if "nodes" not in res:
        raise RuntimeError("power task failed: %s" % res.get("msg"))
    return {"wall": wall, "engine": res["elapsed"], "failed": len(res["failed_nodes"])}


def all_on(farm):
    for bmc in farm.bmcs:
        farm.set_power(bmc["name"], "on")


def run(count, windows, serial=True, out=print):
    """Start the BMCs, measure, print the table; return the rows."""
    rows = []
    with tempfile.TemporaryDirectory(prefix="gridops-bench-") as tmp, net.Netns() as ns:
        farm = bmcs.IpmiSimFarm(ns.name, tmp, count)
        try:
            start = time.monotonic()
            farm.start(timeout=60)
            out("%d ipmi_sim BMCs listening after %.1f s" % (count, time.monotonic() - start))
            # Warm-up: the first ansible-playbook of a run pays for caches.
            module_run(farm, "query", max(windows))
            plan = [("serial loop (ipmitool)", None)] if serial else []
            plan += [("power, window %d" % w, w) for w in windows]
            for label, window in plan:
                row = {"label": label}
                for state in ("query", "cycle"):
                    if state == "cycle":
                        all_on(farm)
                    row[state] = serial_loop(farm, state) if window is None else module_run(farm, state, window)
                rows.append(row)
                out(format_row(row))
        finally:
            farm.close()
    out("")
    out(format_table(count, rows))
    return rows


def _cell(fig):
    engine = "%8.2f" % fig["engine"] if fig["engine"] is not None else "%8s" % "-"
    return "%8.2f %s %6d" % (fig["wall"], engine, fig["failed"])


def format_row(row):
    return "%-26s %s   %s" % (row["label"], _cell(row["query"]), _cell(row["cycle"]))


def format_table(count, rows):
    lines = ["gridops.metal.power benchmark: %d ipmi_sim BMCs (stub chassis), seconds" % count,
             "%-26s %-24s   %-24s" % ("", "query", "cycle (all on -> off -> on)"),
             "%-26s %8s %8s %6s   %8s %8s %6s" % ("run", "task", "module", "failed", "task", "module", "failed")]
    lines += [format_row(r) for r in rows]
    lines.append("task: ansible-playbook wall time (includes Ansible's start-up); module: the module's own elapsed")
    return "\n".join(lines)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--bmcs", type=int, default=100, help="how many ipmi_sim BMCs (default 100)")
    parser.add_argument("--windows", default=",".join(str(w) for w in DEFAULT_WINDOWS),
                        help="comma-separated window sizes (default %(default)s)")
    parser.add_argument("--no-serial", action="store_true", help="skip the serial ipmitool loop")
    args = parser.parse_args(argv)
    if os.geteuid() != 0:
        parser.error("needs root (network namespaces)")
    if args.bmcs > 1000:
        parser.error("at most 1000 BMCs")
    procs.become_subreaper()
    windows = [int(w) for w in args.windows.split(",") if w]
    try:
        run(args.bmcs, windows, serial=not args.no_serial, out=lambda line: print(line, flush=True))
    finally:
        procs.reap_orphans()
    return 0


if __name__ == "__main__":
    sys.exit(main())
