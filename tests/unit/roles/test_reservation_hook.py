# Copyright: (c) 2026, gridops.metal developers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The reservation_hooks role's hook script, run as the schedulers run it, with stand-in oarstat/squeue
printing what the real ones printed: spool entries and rights at start and end, and its failures."""
import json
import os
import pathlib
import subprocess
import sys
import time

import pytest

from ansible_collections.gridops.metal.plugins.module_utils import _registry, _rights

REPO = pathlib.Path(__file__).resolve().parents[3]
HOOK = REPO / "roles" / "reservation_hooks" / "files" / "gridops_reservation_hook.py"
SAMPLES = REPO / "tests" / "unit" / "plugins" / "module_utils" / "reservations"


def _stand_in(tmp_path, name, sample, starts):
    """A command printing a recorded sample whose jobs started a minute ago (or failing, when sample is None)."""
    script = tmp_path / name
    if sample is None:
        script.write_text("#!/bin/sh\necho '%s: cannot connect' >&2\nexit 2\n" % name)
    else:
        text = (SAMPLES / sample).read_text()
        doc = json.loads(text) if text.strip() else {}
        jobs = doc["jobs"] if "jobs" in doc else doc.values()
        for job in jobs:
            for key in starts:
                if job.get(key):
                    shift = int(time.time()) - 60 - job[key]
                    job[key] += shift
                    if job.get("end_time"):
                        job["end_time"] += shift
        (tmp_path / (name + ".json")).write_text(json.dumps(doc) if doc else text)
        script.write_text("#!/bin/sh\ncat %s\n" % (tmp_path / (name + ".json")))
    script.chmod(0o755)
    return str(script)


@pytest.fixture
def setup(tmp_path):
    spool = tmp_path / "spool"
    spool.mkdir()

    def make(scheduler, **commands):
        conf = {"scheduler": scheduler, "lib": str(REPO / "build" / "collections"), "spool_dir": str(spool),
                "log_file": str(tmp_path / "hooks.log"), "oarstat": commands.get("oarstat", "/nonexistent"),
                "squeue": commands.get("squeue", "/nonexistent"), "slurm_conf": "/nonexistent/slurm.conf",
                "rights": {"registry": str(tmp_path / "registry.sqlite"), "partitions": ["*"]},
                "runner": {"start_playbook": "", "end_playbook": ""}}
        path = tmp_path / ("%s.json" % scheduler)
        path.write_text(json.dumps(conf))
        return path

    return tmp_path, spool, make


def _hook(config, *args, env=None):
    # As the schedulers run it: no PATH (Slurm), the job in argv (OAR) or in SLURM_* (Slurm).
    return subprocess.run([sys.executable, str(HOOK), "--config", str(config)] + list(args), env=env or {},
                          capture_output=True, text=True, timeout=60, check=False)


def _rights_of(tmp_path, user="alice"):
    with _registry.Registry(str(tmp_path / "registry.sqlite")) as reg:
        return sorted((r["nodes"], r["origin"]) for r in _rights.list_rights(reg, user=user, include_expired=True))


def test_oar_start_and_end(setup):
    tmp_path, spool, make = setup
    config = make("oar", oarstat=_stand_in(tmp_path, "oarstat", "oarstat_one_job.json", ["startTime"]))
    with _registry.Registry(str(tmp_path / "registry.sqlite")) as reg:
        # Rights from elsewhere, one on a node of the job: the job's end must leave them.
        _rights.grant(reg, "alice", ["node-9", "node-1"], origin="admin")

    res = _hook(config, "start", "1")
    assert res.returncode == 0, res.stderr
    entry = json.loads((spool / "oar-1.json").read_text())
    assert entry["nodes"] == ["node-1", "node-2"] and entry["state"] == "running"
    assert entry["ends_at"] - entry["started_at"] == 5400
    assert _rights_of(tmp_path) == [("node-[1,9]", "admin"), ("node-[1-2]", "oar:1")]

    # The end needs nothing from OAR: the spool entry says it all.
    os.unlink(tmp_path / "oarstat")
    res = _hook(config, "end", "1")
    assert res.returncode == 0, res.stderr
    assert not (spool / "oar-1.json").exists()
    assert _rights_of(tmp_path) == [("node-[1,9]", "admin")]
    log = (tmp_path / "hooks.log").read_text()
    assert "job 1 of alice started on 2 node(s)" in log and "job 1 ended: spool entry removed" in log


@pytest.mark.parametrize("sample, message", [
    (None, "oarstat -f -J -j 1 failed (exit 2): oarstat: cannot connect"),
    ("oarstat_unknown_job.json", "job 1 is unknown to oar"),
], ids=["oar-down", "unknown-job"])
def test_oar_start_failures_leave_nothing_behind(setup, sample, message):
    tmp_path, spool, make = setup
    config = make("oar", oarstat=_stand_in(tmp_path, "oarstat", sample, ["startTime"]))
    res = _hook(config, "start", "1")
    assert res.returncode == 1 and message in res.stderr, res.stderr
    assert message in (tmp_path / "hooks.log").read_text()
    assert list(spool.iterdir()) == [] and _rights_of(tmp_path) == []


def test_a_job_without_walltime_gets_no_rights_and_fails_to_start(setup):
    tmp_path, _spool, make = setup
    config = make("slurm", squeue=_stand_in(tmp_path, "squeue", "squeue.json", ["start_time"]))
    res = _hook(config, "start", env={"SLURM_JOB_ID": "2", "SLURM_JOB_NODELIST": "node-3"})
    assert res.returncode == 1 and "job 2 has no walltime: deploy rights need an end" in res.stderr


def test_slurm_start_and_end_from_the_environment(setup):
    tmp_path, spool, make = setup
    config = make("slurm", squeue=_stand_in(tmp_path, "squeue", "squeue.json", ["start_time"]))
    env = {"SLURM_JOB_ID": "1", "SLURM_JOB_NODELIST": "node-[1-2]", "SLURM_JOB_USER": "alice"}
    res = _hook(config, "start", env=env)
    assert res.returncode == 0, res.stderr
    assert json.loads((spool / "slurm-1.json").read_text())["walltime"] == 5400
    assert _rights_of(tmp_path) == [("node-[1-2]", "slurm:1")]

    # Spool entry lost and slurmctld not answering: the epilog's own environment is enough to revoke.
    (spool / "slurm-1.json").unlink()
    config = make("slurm", squeue=_stand_in(tmp_path, "squeue", None, []))
    res = _hook(config, "end", env=env)
    assert res.returncode == 0, res.stderr
    assert _rights_of(tmp_path) == []
    assert "using the hook's environment" in (tmp_path / "hooks.log").read_text()


def test_no_job_id(setup):
    _tmp_path, _spool, make = setup
    res = _hook(make("slurm"), "start")
    assert res.returncode == 1 and "no job id" in res.stderr
