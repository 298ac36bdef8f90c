"""Slurm 22.05 for real: the reservation_hooks role's hooks, and the slurm and reservation inventory plugins.

One private cluster (munged, slurmctld, a slurmd per node in its own network namespace) for the session; the
hooks are installed with the role (slurmctld restarted, as its handler would), an ordinary user submits a
batch job, and the inventories, the spool, the rights and the start playbook (run in the background here)
are checked until the job is cancelled.
"""
import contextlib
import json
import time

import pytest
import yaml

from ansible_collections.gridops.metal.plugins.module_utils import _registry, _rights
from gridops_test import schedulers

pytestmark = [pytest.mark.root, pytest.mark.slow]

# node-2 is missing on purpose.
DESCRIPTION = {"cluster": "lab", "nodes": {"node-1": {"mac": "52:54:00:00:01:01", "bmc_address": "10.9.2.1"},
                                           "node-3": {"mac": "52:54:00:00:01:03", "bmc_address": "10.9.2.3"}}}

START_PLAYBOOK = """
- name: What the start playbook sees of its job
  hosts: localhost
  connection: local
  gather_facts: false
  tasks:
    - name: Write the job's nodes where the test finds them
      ansible.builtin.copy:
        dest: "{{ lookup('env', 'HOME') }}/seen.json"
        mode: "0644"
        content: "{{ {'id': reservation_job.id, 'reserved': groups['reserved']} | to_json }}"
"""


@pytest.fixture(scope="module")
def hooks(slurm_cluster):  # noqa: F811
    """The role applied to the private Slurm, its start playbook in the background (the default)."""
    # The test's slurmctld is no service: restarted here, as the role's handler would.
    installed = schedulers.ReservationHooks("slurm", DESCRIPTION, START_PLAYBOOK,
                                            reservation_hooks_slurm_conf=str(slurm_cluster.conf),
                                            reservation_hooks_slurmctld_service="")
    try:
        assert installed.apply().changed() > 0
        slurm_cluster.restart_controller()
        yield installed
    finally:
        installed.close()


@pytest.fixture(scope="module")
def job(slurm_cluster, scheduler_user, hooks):  # noqa: F811
    job_id = slurm_cluster.sbatch(scheduler_user, "-N", "2", "-t", "30", "-J", "inventory-test",
                                  "--chdir", str(scheduler_user.home), "--wrap", "sleep 1000")
    spool_entry = hooks.spool / ("slurm-%d.json" % job_id)
    try:
        slurm_cluster.wait_state(job_id, "RUNNING")
        schedulers.procs.wait_for(spool_entry.exists, 30, what="the start hook")
    except TimeoutError:
        raise AssertionError("job %s: %s\nhooks.log:\n%s\n%s" % (
            job_id, slurm_cluster.job_state(job_id), hooks.log_text(), slurm_cluster.diagnostics()))
    yield {"id": str(job_id), "user": scheduler_user.name, "entry": json.loads(spool_entry.read_text())}
    if slurm_cluster.job_state(job_id) == "RUNNING":
        slurm_cluster.scancel(scheduler_user, job_id)
    with contextlib.suppress(TimeoutError):
        schedulers.procs.wait_for(lambda: not spool_entry.exists(), 30, what="the end hook")


def _write(tmp_path, name, config):
    path = tmp_path / name
    path.write_text(yaml.safe_dump(config))
    return path


def _check(inv, job):
    assert sorted(inv["job_%s" % job["id"]]["hosts"]) == ["node-1", "node-2"]
    assert sorted(inv["reserved"]["hosts"]) == ["node-1", "node-2"]
    hv = inv["_meta"]["hostvars"]
    ends = job["entry"]["ends_at"]
    for node in ("node-1", "node-2"):
        assert hv[node]["job_user"] == job["user"] and hv[node]["job_walltime"] == 1800
        assert hv[node]["job_ends_at"] == time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(ends))
        assert hv[node]["job_queue"] == "debug" and hv[node]["job_name"] == "inventory-test"
    assert hv["node-1"]["mac"] == "52:54:00:00:01:01" and hv["node-1"]["cluster"] == "lab"
    assert "mac" not in hv["node-2"]
    assert inv["lab"]["hosts"] == ["node-1"]


def test_start_hook_wrote_the_spool_granted_rights_and_started_the_playbook(hooks, job):
    entry = job["entry"]
    assert entry["nodes"] == ["node-1", "node-2"] and entry["user"] == job["user"]
    assert entry["walltime"] == 1800 and entry["ends_at"] - entry["started_at"] == 1800

    with _registry.Registry(str(hooks.registry)) as reg:
        rights = _rights.list_rights(reg, user=job["user"])
    assert [(r["nodes"], r["origin"]) for r in rights] == [("node-[1-2]", "slurm:%s" % job["id"])]

    # In the background (the default): the job did not wait for it.
    run = hooks.runs / ("slurm-%s" % job["id"])
    schedulers.procs.wait_for((run / "artifacts" / "start" / "rc").exists, 60, what="the start playbook")
    assert (run / "artifacts" / "start" / "rc").read_text().strip() == "0", (run / "start.log").read_text()
    assert json.loads((run / "seen.json").read_text()) == {"id": job["id"], "reserved": ["node-1", "node-2"]}


def test_slurm_inventory(slurm_cluster, hooks, job, tmp_path):  # noqa: F811
    path = _write(tmp_path, "job.slurm.yml", {
        "plugin": "gridops.metal.slurm", "job_ids": [job["id"]], "slurm_conf": str(slurm_cluster.conf),
        "cluster_description": str(hooks.description)})
    rc, inv, err = schedulers.ansible_inventory(path, slurm_cluster.argv([]))
    assert rc == 0, err
    _check(inv, job)
    hv = inv["_meta"]["hostvars"]
    # Each node's NodeAddr, from sinfo --json.
    assert hv["node-1"]["ansible_host"] == slurm_cluster.address("node-1")
    assert hv["node-2"]["ansible_host"] == slurm_cluster.address("node-2")
    assert "node-2" in err and "missing from the cluster description" in err


def test_reservation_inventory_from_the_hooks_spool(hooks, job, tmp_path):
    path = _write(tmp_path, "jobs.reservation.yml", {
        "plugin": "gridops.metal.reservation", "spool_dir": str(hooks.spool), "schedulers": ["slurm"],
        "cluster_description": str(hooks.description)})
    rc, inv, err = schedulers.ansible_inventory(path)
    assert rc == 0, err
    _check(inv, job)


def test_unknown_job_is_an_error_naming_the_source(slurm_cluster, tmp_path):  # noqa: F811
    path = _write(tmp_path, "unknown.slurm.yml", {
        "plugin": "gridops.metal.slurm", "job_ids": ["987654"], "slurm_conf": str(slurm_cluster.conf)})
    rc, _inv, err = schedulers.ansible_inventory(path, slurm_cluster.argv([]),
                                                 env={"ANSIBLE_INVENTORY_ANY_UNPARSED_IS_FAILED": "1"})
    assert rc != 0 and "slurm (squeue --json): unknown job id 987654" in err, err


def test_end_hook_removed_the_spool_entry_and_the_rights(slurm_cluster, scheduler_user, hooks, job):  # noqa: F811
    slurm_cluster.scancel(scheduler_user, int(job["id"]))
    schedulers.procs.wait_for(lambda: not (hooks.spool / ("slurm-%s.json" % job["id"])).exists(), 30,
                              what="the end hook")
    with _registry.Registry(str(hooks.registry)) as reg:
        assert _rights.list_rights(reg, user=job["user"], include_expired=True) == []
