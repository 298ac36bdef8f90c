"""OAR 2.5 for real: the reservation_hooks role's hooks, and the oar and reservation inventory plugins.

One private OAR (PostgreSQL, Almighty, the REST API) for the session; the hooks are installed with the role,
then an ordinary user submits a job, and everything is checked through `ansible-inventory --list`, the spool,
the rights registry and the start playbook's artifacts, until the job is deleted.
"""
import contextlib
import json
import shutil
import time

import pytest
import yaml

from ansible_collections.gridops.metal.plugins.module_utils import _registry, _rights
from gridops_test import schedulers

pytestmark = [pytest.mark.root, pytest.mark.slow]

DESCRIPTION = {
    "vars": {"bmc_user": "admin", "bmc_port": 623, "bmc_kind": "ipmi_sim"},
    "clusters": {"lab": {"disk_device": "/dev/vda"}},
    # node-4 is missing on purpose: it must stay in the inventory, with a warning.
    "nodes": dict(("node-%d" % i, {"mac": "52:54:00:00:00:0%d" % i, "ip": "10.9.0.%d" % i,
                                   "bmc_address": "10.9.1.%d" % i, "cluster": "lab"}) for i in (1, 2, 3)),
}

START_PLAYBOOK = """
- name: What the start playbook sees of its job
  hosts: localhost
  connection: local
  gather_facts: false
  tasks:
    - name: Write the job's nodes and variables where the test finds them
      ansible.builtin.copy:
        dest: "{{ lookup('env', 'HOME') }}/seen.json"
        mode: "0644"
        content: "{{ {'id': reservation_job.id, 'reserved': groups['reserved'],
                       'job_user': hostvars[groups['reserved'][0]].job_user,
                       'mac': hostvars['node-3'].mac} | to_json }}"
"""


@pytest.fixture(scope="module")
def hooks(oar_cluster):  # noqa: F811
    """The role applied to the private OAR: hooks with rights, and a start playbook waited for."""
    installed = schedulers.ReservationHooks("oar", DESCRIPTION, START_PLAYBOOK, reservation_hooks_runner_wait=True,
                                            reservation_hooks_oar_conf=str(oar_cluster.conf))
    try:
        assert installed.apply().changed() > 0
        again = installed.apply()
        assert again.changed() == 0, "the second run changed something\n%s" % again
        yield installed
    finally:
        installed.close()


@pytest.fixture(scope="module")
def job(oar_cluster, scheduler_user, hooks):  # noqa: F811
    """A running noop+deploy job of the ordinary user on node-3 and node-4 (node-4 is not described)."""
    with _registry.Registry(str(hooks.registry)) as reg:
        # A right of the same user from elsewhere: the job's end must not take it away.
        _rights.grant(reg, scheduler_user.name, ["node-1"], origin="admin")
    job_id = oar_cluster.oarsub(scheduler_user, "-t", "noop", "-t", "deploy", "-n", "inventory-test",
                                "-p", "network_address IN ('node-3','node-4')", "-l", "nodes=2,walltime=0:30:00")
    try:
        oar_cluster.wait_state(job_id, "Running", timeout=90)
    except TimeoutError:
        raise AssertionError("job %s did not start: %s\nhooks.log:\n%s\n%s" % (
            job_id, oar_cluster.job(job_id), hooks.log_text(), oar_cluster.diagnostics()))
    # A noop job is Running before OAR calls the server prologue: wait for the hook's last step.
    done = "job %s: start playbook done" % job_id
    schedulers.procs.wait_for(lambda: done in hooks.log_text(), 60, what="the start hook")
    record = oar_cluster.job(job_id)
    yield {"id": str(job_id), "start": record["startTime"], "user": scheduler_user.name}
    if oar_cluster.job(job_id)["state"] == "Running":
        oar_cluster.oardel(scheduler_user, job_id)
    # Let the end hook finish before its directories go.
    spool_entry = hooks.spool / ("oar-%s.json" % job_id)
    with contextlib.suppress(TimeoutError):
        schedulers.procs.wait_for(lambda: not spool_entry.exists(), 30, what="the end hook")


def _write(tmp_path, name, config):
    path = tmp_path / name
    path.write_text(yaml.safe_dump(config))
    return path


def _inventory(oar_cluster, path, args=(), env=None):  # noqa: F811
    """ansible-inventory run in the OAR instance's namespaces (where its oarstat and API answer)."""
    return schedulers.ansible_inventory(path, oar_cluster.argv([]), args, env=env)


def _check_job_inventory(inv, job, description=True):
    hosts = sorted(inv["job_%s" % job["id"]]["hosts"])
    assert hosts == ["node-3", "node-4"]
    assert sorted(inv["reserved"]["hosts"]) == hosts
    hv = inv["_meta"]["hostvars"]
    for node in hosts:
        assert hv[node]["job_id"] == job["id"]
        assert hv[node]["job_user"] == job["user"]
        assert hv[node]["job_walltime"] == 1800
        assert hv[node]["job_ends_at"] == time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(job["start"] + 1800))
        assert sorted(hv[node]["job_types"]) == ["deploy", "noop"]
        assert hv[node]["job_name"] == "inventory-test"
    if description:
        assert hv["node-3"]["mac"] == "52:54:00:00:00:03" and hv["node-3"]["disk_device"] == "/dev/vda"
        assert hv["node-3"]["bmc_user"] == "admin" and hv["node-3"]["cluster"] == "lab"
        assert "mac" not in hv["node-4"], "node-4 is not described"
        assert inv["lab"]["hosts"] == ["node-3"] and inv["nodes"]["children"] == ["lab"]


def test_start_hook_wrote_the_spool_granted_rights_and_ran_the_playbook(hooks, job):
    entry = json.loads((hooks.spool / ("oar-%s.json" % job["id"])).read_text())
    assert entry["nodes"] == ["node-3", "node-4"] and entry["user"] == job["user"]
    assert entry["ends_at"] == job["start"] + 1800 and entry["walltime"] == 1800

    with _registry.Registry(str(hooks.registry)) as reg:
        rights = _rights.list_rights(reg, user=job["user"])
    mine = [r for r in rights if r["origin"] == "oar:%s" % job["id"]]
    assert [(r["nodes"], r["partition"]) for r in mine] == [("node-[3-4]", "*")]
    assert mine[0]["expires"] == time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(job["start"] + 1800))

    # The playbook ran before the job started (runner_wait), with the job's inventory and the description.
    run = hooks.runs / ("oar-%s" % job["id"])
    assert (run / "artifacts" / "start" / "rc").read_text().strip() == "0"
    seen = json.loads((run / "seen.json").read_text())
    assert seen == {"id": job["id"], "reserved": ["node-3", "node-4"], "job_user": job["user"],
                    "mac": "52:54:00:00:00:03"}


def test_oar_inventory_from_oarstat(oar_cluster, hooks, job, tmp_path):  # noqa: F811
    path = _write(tmp_path, "job.oar.yml", {
        "plugin": "gridops.metal.oar", "job_ids": [int(job["id"])], "cluster_description": str(hooks.description),
        "keyed_groups": [{"key": "job_types", "prefix": "type"}]})
    rc, inv, err = _inventory(oar_cluster, path)
    assert rc == 0, err
    _check_job_inventory(inv, job)
    assert sorted(inv["type_deploy"]["hosts"]) == ["node-3", "node-4"]
    assert "node-4" in err and "missing from the cluster description" in err


def test_oar_inventory_from_the_rest_api(oar_cluster, hooks, job, tmp_path):  # noqa: F811
    path = _write(tmp_path, "api.oar.yml", {
        "plugin": "gridops.metal.oar", "api_url": oar_cluster.api_url, "users": [job["user"]],
        "cluster_description": str(hooks.description)})
    rc, inv, err = _inventory(oar_cluster, path)
    assert rc == 0, err
    _check_job_inventory(inv, job)


def test_reservation_inventory_from_the_hooks_spool(hooks, job, tmp_path):
    path = _write(tmp_path, "jobs.reservation.yml", {
        "plugin": "gridops.metal.reservation", "spool_dir": str(hooks.spool),
        "cluster_description": str(hooks.description)})
    rc, inv, err = schedulers.ansible_inventory(path)
    assert rc == 0, err
    _check_job_inventory(inv, job)
    assert inv["_meta"]["hostvars"]["node-3"]["job_state"] == "running"


def test_unknown_job_is_an_error_naming_the_source(oar_cluster, tmp_path):  # noqa: F811
    for name, config, source in (
            ("unknown.oar.yml", {"job_ids": [987654]}, "oar (oarstat -f -J)"),
            ("unknown-api.oar.yml", {"job_ids": [987654], "api_url": oar_cluster.api_url},
             "oar (%s/jobs/details.json)" % oar_cluster.api_url)):
        path = _write(tmp_path, name, dict(config, plugin="gridops.metal.oar"))
        rc, _inv, err = _inventory(oar_cluster, path, env={"ANSIBLE_INVENTORY_ANY_UNPARSED_IS_FAILED": "1"})
        assert rc != 0
        assert source in err and "unknown job id 987654" in err, err


def test_scheduler_down_uses_a_warm_cache_with_a_warning(oar_cluster, job, tmp_path):  # noqa: F811
    cache = tmp_path / "cache"
    path = _write(tmp_path, "cached.oar.yml", {
        "plugin": "gridops.metal.oar", "job_ids": [job["id"]], "cache": True,
        "cache_plugin": "ansible.builtin.jsonfile", "cache_connection": str(cache), "cache_timeout": 86400})
    rc, inv, err = _inventory(oar_cluster, path)
    assert rc == 0 and sorted(inv["reserved"]["hosts"]) == ["node-3", "node-4"], err

    # The cache lives no longer than the job: until its walltime's end, not the day of cache_timeout.
    (entry,) = [json.loads(f.read_text()) for f in cache.iterdir()]
    entry = json.loads(entry["__payload__"]) if "__payload__" in entry else entry  # ansible-core 2.19 wraps it
    assert entry["valid_until"] == job["start"] + 1800

    # Outside the instance's namespaces oarstat reaches no OAR at all: the scheduler is down.
    rc, inv, err = schedulers.ansible_inventory(path, args=["--flush-cache"])
    assert rc == 0, err
    assert sorted(inv["reserved"]["hosts"]) == ["node-3", "node-4"]
    assert "oar (oarstat -f -J)" in err and "using the inventory cached" in err, err

    shutil.rmtree(cache)
    rc, inv, err = schedulers.ansible_inventory(path, args=["--flush-cache"])
    assert "oar (oarstat -f -J): oarstat failed" in err, err
    assert not inv or not inv.get("reserved", {}).get("hosts")


def test_end_hook_removed_the_spool_entry_and_the_job_rights_only(oar_cluster, scheduler_user, hooks, job):  # noqa: F811
    oar_cluster.oardel(scheduler_user, int(job["id"]))
    oar_cluster.wait_state(int(job["id"]), ("Terminated", "Error"))
    schedulers.procs.wait_for(lambda: not (hooks.spool / ("oar-%s.json" % job["id"])).exists(), 30,
                              what="the end hook")
    with _registry.Registry(str(hooks.registry)) as reg:
        rights = _rights.list_rights(reg, user=job["user"], include_expired=True)
    assert [(r["nodes"], r["origin"]) for r in rights] == [("node-1", "admin")]
    log = hooks.log_text()
    assert "job %s ended: spool entry removed" % job["id"] in log, log


def test_the_role_refuses_bad_input_and_a_sites_own_prologue(oar_cluster, hooks, tmp_path):  # noqa: F811
    conf = tmp_path / "oar.conf"
    conf.write_text(oar_cluster.conf.read_text().replace(
        'SERVER_PROLOGUE_EXEC_FILE="%s/oar-start"' % hooks.config["reservation_hooks_dir"],
        'SERVER_PROLOGUE_EXEC_FILE="/etc/oar/site_prologue"'))
    before = conf.read_text()
    res = hooks.apply(check=False, reservation_hooks_oar_conf=str(conf))
    assert res.rc != 0 and "already runs /etc/oar/site_prologue as SERVER_PROLOGUE_EXEC_FILE" in res.stdout, res
    assert conf.read_text() == before

    res = hooks.apply(check=False, reservation_hooks_scheduler="pbs")
    assert res.rc != 0 and "reservation_hooks_scheduler" in res.stdout and "oar, slurm" in res.stdout, res
