#!/usr/bin/env python
"""Benchmark of the image broadcast engine (plugins/module_utils/_broadcast.py): chain and pull.

    .venv/bin/python tests/bench/bench_broadcast.py [--size-mb 256] [--receivers 1,2,4,8]
        [--methods chain,pull] [--rate 200] [--quick]

Needs root (network namespaces).  The topology models machines on one switch:
a hub namespace holds a bridge (the switch); the server and every receiver are
namespaces of their own, each on its own veth pair to the bridge, and every
link is shaped with tc tbf at --rate Mbit/s on the egress of BOTH its ends
(one full-duplex link per machine).  Each receiver runs the real agent with
busybox (``ip netns exec NS busybox sh -c AGENT``) and a target ``cat > FILE``
(files under a temporary directory, removed after).  The engine runs in the
server's namespace (a child Python process).

For each method and N it prints T(N) (the broadcast's wall time), the
efficiency (S/B)/T(N) (S the image size, B the link rate: 1.0 means every node
got the image in the time one link needs for it) and T(N)/T(1); then a final
line ``FIGURES broadcast {json}``.  Nothing is asserted about time.
"""
import argparse
import json
import os
import pathlib
import shutil
import subprocess
import sys
import tempfile
import time

HERE = pathlib.Path(__file__).resolve()
sys.path.insert(0, str(HERE.parents[1] / "lib"))

from gridops_test import net, procs  # noqa: E402  (after the path above)

REPO = HERE.parents[2]
MODULE = REPO / "plugins" / "module_utils" / "_broadcast.py"
PYTHON = sys.executable

# Runs inside the server's namespace: loads _broadcast.py by path (it needs
# nothing from Ansible), runs broadcast() and prints the results as JSON.
RUNNER = r"""
import importlib.util, json, sys, time
spec = importlib.util.spec_from_file_location("_broadcast", sys.argv[1])
bc = importlib.util.module_from_spec(spec)
spec.loader.exec_module(bc)
args = json.loads(sys.argv[2])
def argv_for(ns):
    return lambda cmd: ["ip", "netns", "exec", ns, "busybox", "sh", "-c", cmd]
receivers = [bc.Receiver(r["name"], r["address"], argv_for(r["ns"]), r["target"]) for r in args.pop("receivers")]
events = []
def progress(event):
    events.append(event)
    sys.stderr.write("PROGRESS %s\n" % json.dumps(event))
    sys.stderr.flush()
start = time.monotonic()
results = bc.broadcast(args.pop("path"), receivers, progress=progress, **args)
print(json.dumps({"results": results, "seconds": time.monotonic() - start, "progress_events": len(events)}))
"""


def tc_shape(ns, dev, rate_mbit):
    """tbf at rate_mbit on the egress of dev; burst sized for the timer (>= 4 ms of traffic)."""
    burst = max(32 * 1024, int(rate_mbit * 1e6 / 8 * 0.004))
    procs.run(["tc", "qdisc", "add", "dev", dev, "root", "tbf", "rate", "%dmbit" % rate_mbit,
               "burst", str(burst), "latency", "100ms"], netns=ns)


class Lab:
    """A hub bridge and machines (namespaces) each on its own veth link; everything removed by close()."""

    def __init__(self, receivers, rate_mbit=None, subnet="10.231.7"):
        self.subnet = subnet
        self.rate = rate_mbit
        self.machines = []
        self.hub = net.Netns()
        try:
            self.bridge = net.unique_name("gbb")
            net.ip("link", "add", self.bridge, "type", "bridge", "forward_delay", "0", netns=self.hub.name)
            net.ip("link", "set", self.bridge, "up", netns=self.hub.name)
            self.server = self.add_machine("srv", "%s.1" % subnet)
            self.receivers = [self.add_machine("n%d" % i, "%s.%d" % (subnet, 10 + i)) for i in range(receivers)]
        except Exception:
            self.close()
            raise

    def add_machine(self, name, address):
        ns = net.Netns()
        machine = {"name": name, "ns": ns.name, "netns": ns, "address": address}
        self.machines.append(machine)
        hub_end, own_end = net.unique_name("gbh"), net.unique_name("gbm")
        net.ip("link", "add", hub_end, "type", "veth", "peer", "name", own_end, "netns", ns.name, netns=self.hub.name)
        net.ip("link", "set", hub_end, "master", self.bridge, netns=self.hub.name)
        net.ip("link", "set", hub_end, "up", netns=self.hub.name)
        net.ip("addr", "add", "%s/24" % address, "dev", own_end, netns=ns.name)
        net.ip("link", "set", own_end, "up", netns=ns.name)
        machine["dev"], machine["hub_dev"] = own_end, hub_end
        if self.rate:
            self.shape(machine, self.rate)
        return machine

    def shape(self, machine, rate_mbit):
        for ns, dev in ((machine["ns"], machine["dev"]), (self.hub.name, machine["hub_dev"])):
            procs.run(["tc", "qdisc", "del", "dev", dev, "root"], netns=ns, check=False)
            tc_shape(ns, dev, rate_mbit)

    def kill_machine(self, machine):
        """Every process in the machine's namespace, SIGKILL (a node that dies)."""
        for pid in netns_pids(machine["ns"]):
            procs.kill_tree(pid)

    def close(self):
        for machine in self.machines:
            self.kill_machine(machine)
            machine["netns"].close()
        self.hub.close()
        procs.reap_orphans()


def netns_pids(name):
    """PIDs of the processes in the named network namespace."""
    try:
        want = os.stat("/run/netns/%s" % name).st_ino
    except OSError:
        return []
    pids = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                if os.stat("/proc/%s/ns/net" % entry).st_ino == want:
                    pids.append(int(entry))
            except OSError:
                pass
    return pids


def engine_argv(lab, path, receivers, **kwargs):
    args = dict(kwargs, path=str(path), receivers=receivers)
    return lab.server["netns"].argv([PYTHON, "-c", RUNNER, str(MODULE), json.dumps(args)])


def run_engine(lab, path, receivers, wait=600, **kwargs):
    """broadcast() in the server's namespace; returns its parsed JSON (results, seconds)."""
    argv = engine_argv(lab, path, receivers, **kwargs)
    res = subprocess.run(argv, capture_output=True, text=True, timeout=wait, start_new_session=True, check=False)
    if res.returncode != 0:
        raise RuntimeError("engine failed (%d): %s" % (res.returncode, res.stderr[-3000:]))
    out = json.loads(res.stdout.strip().splitlines()[-1])
    out["stderr"] = res.stderr
    return out


def make_image(path, size):
    with open(path, "wb") as fh:
        left = size
        while left:
            block = os.urandom(min(left, 4 << 20))
            fh.write(block)
            left -= len(block)


def measure(lab, image, size, tmp, method, n, port):
    out_dir = pathlib.Path(tmp) / ("out-%s-%d" % (method, n))
    out_dir.mkdir()
    receivers = [{"name": m["name"], "address": m["address"], "ns": m["ns"],
                  "target": "cat > %s/%s.img" % (out_dir, m["name"])} for m in lab.receivers[:n]]
    kwargs = {"method": method, "timeout": 1200, "stall_timeout": 60, "port": port,
              "workdir": str(pathlib.Path(tmp) / "work")}
    if method == "pull":
        kwargs["server_address"] = lab.server["address"]
    start = time.monotonic()
    out = run_engine(lab, image, receivers, wait=1500, **kwargs)
    wall = time.monotonic() - start
    failed = sorted(name for name, r in out["results"].items() if not r["ok"])
    for name, r in out["results"].items():
        if not r["ok"]:
            print("  %s %s: %s at %s: %s" % (method, n, name, r["step"], r["error"]), flush=True)
    sizes_ok = all((out_dir / ("%s.img" % r["name"])).stat().st_size == size for r in receivers
                   if (out_dir / ("%s.img" % r["name"])).exists())
    shutil.rmtree(out_dir, ignore_errors=True)
    procs.reap_orphans()
    return {"seconds": round(out["seconds"], 2), "wall": round(wall, 2), "failed": failed, "sizes_ok": sizes_ok}


def run(size_mb=256, receivers=(1, 2, 4, 8), methods=("chain", "pull"), rate=200, out=print):
    size = int(size_mb * 1024 * 1024)
    table = {}
    with tempfile.TemporaryDirectory(prefix="gridops-bench-bc-") as tmp:
        image = pathlib.Path(tmp) / "image.bin"
        make_image(image, size)
        lab = Lab(max(receivers), rate_mbit=rate)
        try:
            ideal = size * 8 / (rate * 1e6)
            out("image %d MiB, links %d Mbit/s (one link: %.2f s), receivers %s, %d cores"
                % (size_mb, rate, ideal, ",".join(map(str, receivers)), os.cpu_count()))
            port = 46000
            for method in methods:
                table[method] = {}
                for n in receivers:
                    port += 1
                    fig = measure(lab, image, size, tmp, method, n, port)
                    fig["efficiency"] = round(ideal / fig["seconds"], 3)
                    table[method][n] = fig
                    t1 = table[method].get(receivers[0], fig)["seconds"]
                    fig["ratio"] = round(fig["seconds"] / t1, 3) if receivers[0] == 1 else None
                    out("  %-5s N=%-2d T=%7.2f s  efficiency %.3f  T(N)/T(1) %s  failed %s"
                        % (method, n, fig["seconds"], fig["efficiency"], fig["ratio"], fig["failed"] or "-"))
        finally:
            lab.close()
    out("")
    out(format_table(size_mb, rate, receivers, table))
    figures = {"size_mb": size_mb, "rate_mbit": rate, "cores": os.cpu_count(),
               "methods": dict((m, dict((str(n), {"seconds": f["seconds"], "efficiency": f["efficiency"],
                                                  "ratio": f["ratio"], "failed": len(f["failed"])})
                                        for n, f in rows.items())) for m, rows in table.items())}
    out("FIGURES broadcast %s" % json.dumps(figures, sort_keys=True))
    return table


def format_table(size_mb, rate, receivers, table):
    lines = ["image broadcast benchmark: %d MiB image, %d Mbit/s links (tbf both ends), seconds" % (size_mb, rate),
             "%-6s %4s %9s %11s %10s %7s" % ("method", "N", "T(N)", "efficiency", "T(N)/T(1)", "failed")]
    for method, rows in table.items():
        for n in receivers:
            f = rows[n]
            lines.append("%-6s %4d %9.2f %11.3f %10s %7d" % (method, n, f["seconds"], f["efficiency"],
                                                             "-" if f["ratio"] is None else "%.3f" % f["ratio"],
                                                             len(f["failed"])))
    lines.append("efficiency = (image size / link rate) / T(N); T(N) = engine wall time incl. agent start-up")
    return "\n".join(lines)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--size-mb", type=float, default=256, help="image size in MiB (default 256)")
    parser.add_argument("--receivers", default="1,2,4,8", help="comma-separated receiver counts (default 1,2,4,8)")
    parser.add_argument("--methods", default="chain,pull", help="comma-separated methods (default chain,pull)")
    parser.add_argument("--rate", type=int, default=200, help="link rate in Mbit/s (default 200)")
    parser.add_argument("--quick", action="store_true", help="32 MiB, N=1,2,4 (for CI)")
    args = parser.parse_args(argv)
    if os.geteuid() != 0:
        parser.error("needs root (network namespaces)")
    if args.quick:
        args.size_mb, args.receivers = 32, "1,2,4"
    receivers = tuple(int(n) for n in args.receivers.split(",") if n)
    methods = tuple(m for m in args.methods.split(",") if m)
    procs.become_subreaper()
    try:
        run(args.size_mb, receivers, methods, args.rate, out=lambda line: print(line, flush=True))
    finally:
        procs.reap_orphans()
    return 0


if __name__ == "__main__":
    sys.exit(main())
