# Copyright: (c) 2026, gridops.metal developers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The oar, slurm and reservation inventory plugins through `ansible-inventory --list`, without schedulers:
oarstat, squeue and sinfo are small scripts that print what the real ones printed (the recorded samples,
moved to the present), or fail as a scheduler that is down does."""
import json
import pathlib
import time

import pytest
import yaml

from gridops_test import schedulers

SAMPLES = pathlib.Path(__file__).parents[1] / "module_utils" / "reservations"
DESCRIPTION = {"clusters": {"lab": {"disk_device": "/dev/vda"}},
               "nodes": {"node-1": {"mac": "52:54:00:00:00:01", "cluster": "lab"},
                         "node-3": {"mac": "52:54:00:00:00:03", "cluster": "lab", "ansible_host": "10.9.0.3"}}}
FAIL = {"ANSIBLE_INVENTORY_ANY_UNPARSED_IS_FAILED": "1"}


def _now_sample(name, key, start_keys):
    """A recorded sample with its jobs started a minute ago (their walltime has not passed on any clock)."""
    doc = json.loads((SAMPLES / name).read_text())
    jobs = doc[key] if key else doc.values()
    now = int(time.time())
    for job in jobs:
        for start in start_keys:
            if job.get(start):
                shift = now - 60 - job[start]
                job[start] += shift
                if job.get("end_time"):
                    job["end_time"] += shift
    return json.dumps(doc)


def _command(tmp_path, name, output):
    """A fake command printing output, recording its arguments, failing while <tmp>/down exists."""
    (tmp_path / (name + ".out")).write_text(output)
    script = tmp_path / name
    script.write_text('#!/bin/sh\necho "$@" >> {d}/{n}.args\n'
                      'if [ -e {d}/down ]; then echo "{n}: cannot connect to the server" >&2; exit 3; fi\n'
                      'cat {d}/{n}.out\n'.format(d=tmp_path, n=name))
    script.chmod(0o755)
    return str(script)


def _inventory(tmp_path, name, config, args=(), env=None):
    (tmp_path / "site.yml").write_text(yaml.safe_dump(DESCRIPTION))
    path = tmp_path / name
    path.write_text(yaml.safe_dump(dict(config, cluster_description=str(tmp_path / "site.yml"))))
    return schedulers.ansible_inventory(path, args=args, env=env)


@pytest.fixture
def oarstat(tmp_path):
    return _command(tmp_path, "oarstat", _now_sample("oarstat.json", None, ["startTime"]))


def test_oar_plugin(tmp_path, oarstat):
    rc, inv, err = _inventory(tmp_path, "all.oar.yml", {
        "plugin": "gridops.metal.oar", "oarstat_path": oarstat,
        "compose": {"bmc_console": "'sol-' ~ inventory_hostname"},
        "keyed_groups": [{"key": "job_user", "prefix": "user"}]})
    assert rc == 0, err
    assert (tmp_path / "oarstat.args").read_text() == "-f -J\n"
    # Running jobs 1 (node-1, node-2) and 2 (node-3); the waiting job 3 is left out by the default state.
    assert sorted(inv["reserved"]["hosts"]) == ["node-1", "node-2", "node-3"]
    assert inv["job_1"]["hosts"] == ["node-1", "node-2"] and inv["job_2"]["hosts"] == ["node-3"]
    assert "job_3" not in inv
    assert sorted(inv["lab"]["hosts"]) == ["node-1", "node-3"] and inv["nodes"]["children"] == ["lab"]
    assert sorted(inv["user_alice"]["hosts"]) == ["node-1", "node-2", "node-3"]
    hv = inv["_meta"]["hostvars"]
    assert hv["node-1"]["disk_device"] == "/dev/vda" and hv["node-1"]["bmc_console"] == "sol-node-1"
    assert hv["node-1"]["job_types"] == ["noop", "deploy"] and hv["node-1"]["job_walltime"] == 5400
    assert hv["node-3"]["ansible_host"] == "10.9.0.3" and hv["node-3"]["job_name"] is None
    started = time.strptime(hv["node-1"]["job_started_at"], "%Y-%m-%dT%H:%M:%SZ")
    ends = time.strptime(hv["node-1"]["job_ends_at"], "%Y-%m-%dT%H:%M:%SZ")
    assert time.mktime(ends) - time.mktime(started) == 5400
    assert "node-2" in err and "missing from the cluster description" in err


def test_oar_plugin_asks_oarstat_for_the_jobs_it_wants(tmp_path, oarstat):
    rc, inv, err = _inventory(tmp_path, "two.oar.yml", {
        "plugin": "gridops.metal.oar", "oarstat_path": oarstat, "job_ids": [2, 3]})
    assert rc == 0, err
    assert (tmp_path / "oarstat.args").read_text() == "-f -J -j 2 -j 3\n"
    assert inv["reserved"]["hosts"] == ["node-3"]
    assert "job 3 left out: state Waiting" in err


@pytest.mark.parametrize("config, message", [
    ({"job_ids": [4711]}, "oar ({oarstat} -f -J): unknown job id 4711"),
    ({"frontend": "nobody@localhost", "ssh_args": ["-o", "ProxyCommand=false"]},
     "oar ({oarstat} -f -J on nobody@localhost): oarstat failed (exit 255)"),
], ids=["unknown-job", "frontend-unreachable"])
def test_oar_plugin_errors_name_the_source(tmp_path, oarstat, config, message):
    rc, _inv, err = _inventory(tmp_path, "bad.oar.yml", dict(config, plugin="gridops.metal.oar", oarstat_path=oarstat),
                               env=FAIL)
    assert rc != 0 and message.format(oarstat=oarstat) in err, err


def test_bad_json_names_the_source(tmp_path):
    squeue = _command(tmp_path, "squeue", '{"meta": {}, "errors": []}')
    rc, _inv, err = _inventory(tmp_path, "bad.slurm.yml", {"plugin": "gridops.metal.slurm", "squeue_path": squeue},
                               env=FAIL)
    assert rc != 0 and "slurm (%s --json): expected an object with a 'jobs' list, got errors, meta" % squeue in err, err


def test_down_scheduler_warm_cache_cold_cache(tmp_path, oarstat):
    config = {"plugin": "gridops.metal.oar", "oarstat_path": oarstat, "cache": True, "cache_timeout": 86400,
              "cache_plugin": "ansible.builtin.jsonfile", "cache_connection": str(tmp_path / "cache")}
    rc, inv, err = _inventory(tmp_path, "cached.oar.yml", config)
    assert rc == 0 and len(inv["reserved"]["hosts"]) == 3, err
    # Valid: served from the cache, oarstat not asked again.
    rc, inv, err = _inventory(tmp_path, "cached.oar.yml", config)
    assert rc == 0 and len(inv["reserved"]["hosts"]) == 3, err
    assert len((tmp_path / "oarstat.args").read_text().splitlines()) == 1

    (tmp_path / "down").touch()
    rc, inv, err = _inventory(tmp_path, "cached.oar.yml", config, args=["--flush-cache"], env=FAIL)
    assert rc == 0 and len(inv["reserved"]["hosts"]) == 3, err
    assert "oarstat: cannot connect to the server; using the inventory cached" in err, err

    for entry in (tmp_path / "cache").iterdir():
        entry.unlink()
    rc, _inv, err = _inventory(tmp_path, "cached.oar.yml", config, args=["--flush-cache"], env=FAIL)
    assert rc != 0 and "oarstat failed (exit 3): oarstat: cannot connect to the server" in err, err


def test_slurm_plugin(tmp_path):
    squeue = _command(tmp_path, "squeue", _now_sample("squeue.json", "jobs", ["start_time"]))
    sinfo = _command(tmp_path, "sinfo", (SAMPLES / "sinfo.json").read_text())
    rc, inv, err = _inventory(tmp_path, "all.slurm.yml", {
        "plugin": "gridops.metal.slurm", "squeue_path": squeue, "sinfo_path": sinfo, "slurm_conf": "/x/slurm.conf",
        "keyed_groups": [{"key": "job_queue", "prefix": "partition"}]})
    assert rc == 0, err
    assert inv["job_1"]["hosts"] == ["node-1", "node-2"] and inv["job_2"]["hosts"] == ["node-3"]
    assert sorted(inv["partition_debug"]["hosts"]) == ["node-1", "node-2", "node-3"]
    hv = inv["_meta"]["hostvars"]
    assert hv["node-1"]["ansible_host"] == "10.217.0.11", "NodeAddr from sinfo"
    assert hv["node-3"]["ansible_host"] == "10.9.0.3", "the description's ansible_host wins"
    assert hv["node-3"]["job_walltime"] is None and hv["node-3"]["job_ends_at"] is None, "-t UNLIMITED"
    assert hv["node-1"]["job_walltime"] == 5400


def test_reservation_plugin(tmp_path):
    spool = tmp_path / "spool"
    spool.mkdir()
    now = int(time.time())
    for job_id, nodes, started, walltime in (("7", ["node-1"], now - 60, 3600), ("8", ["node-3"], now - 7200, 3600)):
        (spool / ("oar-%s.json" % job_id)).write_text(json.dumps({
            "id": job_id, "scheduler": "oar", "user": "bob", "state": "running", "nodes": nodes,
            "walltime": walltime, "started_at": started, "ends_at": started + walltime}))
    (spool / "slurm-9.json").write_text("{not json")
    rc, inv, err = _inventory(tmp_path, "jobs.reservation.yml", {"plugin": "gridops.metal.reservation",
                                                                 "spool_dir": str(spool)})
    assert rc == 0, err
    assert inv["reserved"]["hosts"] == ["node-1"] and inv["job_7"]["hosts"] == ["node-1"]
    assert "job(s) 8 past their walltime but still in the spool" in err
    assert "slurm-9.json: not JSON" in err


def test_shared_nodes_and_untrusted_job_names(tmp_path):
    spool = tmp_path / "spool"
    spool.mkdir()
    now = int(time.time())
    for job_id, nodes, name in (("9", ["node-5", "node-6"], "{{ 7 * 6 }}"), ("10", ["node-5"], "ten")):
        (spool / ("slurm-%s.json" % job_id)).write_text(json.dumps({
            "id": job_id, "scheduler": "slurm", "user": "bob", "name": name, "nodes": nodes,
            "walltime": 3600, "started_at": now - 60, "ends_at": now + 3540}))
    rc, inv, err = _inventory(tmp_path, "shared.reservation.yml", {
        "plugin": "gridops.metal.reservation", "spool_dir": str(spool), "compose": {"shown": "job_name"}})
    assert rc == 0, err
    assert inv["job_9"]["hosts"] == ["node-5", "node-6"] and inv["job_10"]["hosts"] == ["node-5"]
    hv = inv["_meta"]["hostvars"]
    assert hv["node-5"]["job_id"] == "10", "the highest job id wins on a shared node"
    assert hv["node-6"]["job_id"] == "9"
    # A job name is the job's user's text: never templated.
    assert hv["node-6"]["shown"] == "{{ 7 * 6 }}" and hv["node-6"]["job_name"] == "{{ 7 * 6 }}"
