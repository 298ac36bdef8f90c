#!/usr/bin/env python
"""How fast, and how big, `ansible-inventory --list` is on large reservations.

    .venv/bin/python tests/bench/bench_reservations.py [--nodes 10000] [--jobs 100x100] [--runs 3] [--collections DIR]

Scenarios, each joined with a cluster description of every node (MAC, IP, BMC, cluster):

* one job of --nodes nodes, from the reservation hooks' spool (gridops.metal.reservation);
* the same job from `squeue --json` and `sinfo --json` (gridops.metal.slurm: node list expansion, addresses)
  and from `oarstat -f -J` (gridops.metal.oar), printed by stand-in commands from generated JSON;
* --jobs jobs of so many nodes each, from the spool.

Prints, per scenario, the best wall time and CPU time (user + system) of --runs runs and the peak memory
(maximum resident set size) of the ansible-inventory process, next to three references: ansible-inventory on
an empty inventory (its start-up), on a static list of as many hosts without variables (the floor of --list
for that many hosts), and on a static JSON inventory of the same hosts and variables. On a shared machine, CPU time is the steadier figure.
The CPU time is split in two: "parse", reading the inventory sources (the plugin's own work, with Ansible's
add_host/add_child/set_variable under it), and "list", what ansible-inventory does with the inventory once it is
made (every host's variables through the VariableManager, then the JSON output) -- Ansible's own, and the same
for any source of the same hosts and variables.  --collections measures another copy of the collection (an
older commit's `git archive` under DIR/ansible_collections/gridops/metal) for before/after figures.
Figures only: nothing is asserted.
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

REPO = pathlib.Path(__file__).resolve().parents[2]


COLLECTIONS = REPO / "build" / "collections"

# ansible-inventory's own main(), with the CPU time of InventoryManager.parse_sources (every inventory source,
# plugins included) written to the file named by the first argument.
_TIMED_CLI = """
import sys, time
from ansible.cli import inventory
from ansible.inventory.manager import InventoryManager
out = sys.argv.pop(1)
parse_sources = InventoryManager.parse_sources
def timed(*args, **kwargs):
    start = time.process_time()
    try:
        return parse_sources(*args, **kwargs)
    finally:
        with open(out, "w") as fh:
            fh.write("%.6f" % (time.process_time() - start))
InventoryManager.parse_sources = timed
sys.argv[0] = "ansible-inventory"
sys.exit(inventory.main())
"""


def _env(collections=None):
    env = dict(os.environ)
    env["PATH"] = "%s%s%s" % (pathlib.Path(sys.executable).parent, os.pathsep, env.get("PATH", ""))
    env["ANSIBLE_CONFIG"] = str(REPO / "ansible.cfg")
    env["ANSIBLE_COLLECTIONS_PATH"] = str(collections or COLLECTIONS)
    env["ANSIBLE_INVENTORY_ANY_UNPARSED_IS_FAILED"] = "1"
    return env


def measure(source, runs, collections=None):
    """(best wall seconds, best CPU seconds, peak RSS MiB, hosts, parse CPU seconds of the best CPU run)
    of `ansible-inventory -i source --list`."""
    best, cpu, peak, hosts, parse = None, None, 0, 0, None
    for _run in range(runs):
        with tempfile.TemporaryFile() as out, tempfile.NamedTemporaryFile(prefix="parse-") as timing:
            start = time.monotonic()
            proc = subprocess.Popen([sys.executable, "-c", _TIMED_CLI, timing.name, "-i", str(source), "--list"],
                                    cwd=str(REPO), env=_env(collections), stdout=out, stderr=subprocess.PIPE)
            _pid, status, usage = os.wait4(proc.pid, 0)
            wall = time.monotonic() - start
            err = proc.stderr.read().decode(errors="replace")
            proc.stderr.close()
            proc.returncode = os.waitstatus_to_exitcode(status)
            if proc.returncode != 0:
                raise RuntimeError("ansible-inventory -i %s failed: %s" % (source, err[-2000:]))
            out.seek(0)
            listed = json.load(out)
            hosts = len(set(h for name, group in listed.items() if name != "_meta" for h in group.get("hosts", ())))
            parsed = float(pathlib.Path(timing.name).read_text() or 0)
        best = wall if best is None else min(best, wall)
        used = usage.ru_utime + usage.ru_stime
        if cpu is None or used < cpu:
            cpu, parse = used, parsed
        peak = max(peak, usage.ru_maxrss / 1024.0)
    return best, cpu, peak, hosts, parse


def _yaml_load(text):
    import yaml
    return yaml.load(text, Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader))


def node_names(count, prefix="node-"):
    return ["%s%d" % (prefix, i) for i in range(1, count + 1)]


def write_description(path, nodes):
    # YAML, as an operator writes it (the plugins read it with the C YAML loader when there is one).
    lines = ["vars: {bmc_user: admin, bmc_port: 623, bmc_kind: ipmi_sim}", "clusters: {big: {disk_device: /dev/sda}}",
             "nodes:"]
    for i, node in enumerate(nodes):
        lines.append("  %s: {mac: '52:54:%02x:%02x:%02x:%02x', ip: 10.%d.%d.%d, bmc_address: 10.%d.%d.%d, cluster: big}"
                     % (node, (i >> 24) & 255, (i >> 16) & 255, (i >> 8) & 255, i & 255,
                        100 + (i >> 16), (i >> 8) & 255, i & 255, 200 + (i >> 16), (i >> 8) & 255, i & 255))
    path.write_text("\n".join(lines) + "\n")


def write_spool(spool, jobs):
    spool.mkdir(parents=True, exist_ok=True)
    now = int(time.time())
    for job_id, nodes in jobs:
        (spool / ("oar-%s.json" % job_id)).write_text(json.dumps({
            "id": str(job_id), "scheduler": "oar", "user": "alice", "state": "running", "name": "bench",
            "queue": "default", "types": ["deploy"], "walltime": 7200, "started_at": now - 60,
            "ends_at": now + 7140, "nodes": nodes}))


def stand_in(path, output):
    """A command that prints output (a scheduler's JSON)."""
    data = path.with_suffix(".json")
    data.write_text(output)
    path.write_text("#!/bin/sh\nexec cat %s\n" % data)
    path.chmod(0o755)
    return str(path)


def squeue_json(count):
    now = int(time.time())
    return json.dumps({"meta": {}, "errors": [], "jobs": [{
        "job_id": 1, "user_name": "alice", "job_state": "RUNNING", "name": "bench", "partition": "big",
        "time_limit": 120, "start_time": now - 60, "end_time": now + 7140, "nodes": "node-[1-%d]" % count}]})


def sinfo_json(nodes):
    return json.dumps({"meta": {}, "errors": [], "nodes": [
        {"name": node, "hostname": node, "address": "10.%d.%d.%d" % (100 + (i >> 16), (i >> 8) & 255, i & 255)}
        for i, node in enumerate(nodes)]})


def oarstat_json(nodes):
    now = int(time.time())
    return json.dumps({"1": {"Job_Id": 1, "job_user": "alice", "state": "Running", "name": "bench", "queue": "default",
                             "types": ["deploy"], "walltime": 7200, "startTime": now - 60,
                             "assigned_network_address": nodes}})


def scenarios(work, nodes, jobs, per_job):
    """(label, inventory source) of every scenario, with their files made in work."""
    described = node_names(max(nodes, jobs * per_job))
    big = described[:nodes]
    write_description(work / "site.yml", described)
    (work / "site.json").write_text(json.dumps(_yaml_load((work / "site.yml").read_text())))
    (work / "empty.yml").write_text("all: {}\n")
    yield "reference: empty inventory (start-up)", work / "empty.yml"
    (work / "bare.json").write_text(json.dumps({"all": {"hosts": dict((n, None) for n in big)}}))
    yield "reference: static list of %d hosts, no variables" % nodes, work / "bare.json"

    facts = _yaml_load((work / "site.yml").read_text())
    static = {}
    for node in big:
        hostvars = dict(facts["vars"], **facts["clusters"]["big"])
        hostvars.update(facts["nodes"][node])
        hostvars.update({"job_id": "1", "job_scheduler": "oar", "job_user": "alice", "job_state": "running",
                         "job_name": "bench", "job_queue": "default", "job_types": ["deploy"], "job_walltime": 7200,
                         "job_started_at": "2026-01-01T00:00:00Z", "job_ends_at": "2026-01-01T02:00:00Z"})
        static[node] = hostvars
    (work / "static.json").write_text(json.dumps({"all": {"hosts": static}}))
    yield "reference: static JSON inventory, same hosts and vars", work / "static.json"

    write_spool(work / "spool-one", [(1, big)])
    (work / "one.reservation.yml").write_text(
        "plugin: gridops.metal.reservation\nspool_dir: %s\ncluster_description: %s\n" % (work / "spool-one", work / "site.yml"))
    yield "1 job x %d nodes, reservation (spool)" % nodes, work / "one.reservation.yml"
    (work / "json.reservation.yml").write_text(
        "plugin: gridops.metal.reservation\nspool_dir: %s\ncluster_description: %s\n" % (work / "spool-one", work / "site.json"))
    yield "  the same, description in JSON instead of YAML", work / "json.reservation.yml"

    squeue = stand_in(work / "squeue", squeue_json(nodes))
    sinfo = stand_in(work / "sinfo", sinfo_json(big))
    (work / "one.slurm.yml").write_text("plugin: gridops.metal.slurm\nsqueue_path: %s\nsinfo_path: %s\n"
                                        "cluster_description: %s\n" % (squeue, sinfo, work / "site.yml"))
    yield "1 job x %d nodes, slurm (squeue + sinfo JSON)" % nodes, work / "one.slurm.yml"

    oarstat = stand_in(work / "oarstat", oarstat_json(big))
    (work / "one.oar.yml").write_text("plugin: gridops.metal.oar\noarstat_path: %s\ncluster_description: %s\n"
                                      % (oarstat, work / "site.yml"))
    yield "1 job x %d nodes, oar (oarstat JSON)" % nodes, work / "one.oar.yml"

    many = described[:jobs * per_job]
    write_spool(work / "spool-many", [(j + 1, many[j * per_job:(j + 1) * per_job]) for j in range(jobs)])
    (work / "many.reservation.yml").write_text(
        "plugin: gridops.metal.reservation\nspool_dir: %s\ncluster_description: %s\n" % (work / "spool-many", work / "site.yml"))
    yield "%d jobs x %d nodes, reservation (spool)" % (jobs, per_job), work / "many.reservation.yml"


def run(nodes=10000, jobs=100, per_job=100, runs=3, out=print, collections=None):
    """Run every scenario; print and return [(label, wall seconds, CPU seconds, MiB, hosts, parse CPU seconds)]."""
    work = pathlib.Path(tempfile.mkdtemp(prefix="gridops-bench-inventory-"))
    results = []
    try:
        out("%-52s %7s %7s %7s %7s %8s %6s" % ("scenario", "wall s", "CPU s", "parse", "list", "peak MiB", "hosts"))
        for label, source in scenarios(work, nodes, jobs, per_job):
            wall, cpu, peak, hosts, parse = measure(source, runs, collections)
            results.append((label, wall, cpu, peak, hosts, parse))
            out("%-52s %7.2f %7.2f %7.2f %7.2f %8.0f %6d" % (label, wall, cpu, parse, cpu - parse, peak, hosts))
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return results


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--nodes", type=int, default=10000, help="nodes of the one big job (default 10000)")
    parser.add_argument("--jobs", default="100x100", help="JOBSxNODES of the many-jobs scenario (default 100x100)")
    parser.add_argument("--runs", type=int, default=3, help="runs per scenario, the best is kept (default 3)")
    parser.add_argument("--collections", help="collections path to measure instead of %s" % COLLECTIONS)
    args = parser.parse_args(argv)
    jobs, per_job = (int(n) for n in args.jobs.lower().split("x"))
    print("ansible-inventory --list, best of %d run(s), %d CPUs, %s; CPU s = parse (the inventory sources) "
          "+ list (Ansible's hostvars and JSON output)" % (args.runs, os.cpu_count(), args.collections or COLLECTIONS))
    run(args.nodes, jobs, per_job, args.runs, collections=args.collections)


if __name__ == "__main__":
    main()
