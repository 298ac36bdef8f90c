#!/usr/bin/env python
# -*- coding: utf-8 -*-
# Copyright: (c) 2026, gridops.metal developers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Reservation hook of gridops.metal: what happens when a job starts or ends.

    gridops_reservation_hook.py --config /path/oar.json start 4711     (OAR: the job id is argv[1] of the hook)
    gridops_reservation_hook.py --config /path/slurm.json end          (Slurm: SLURM_JOB_ID in the environment)

start: write the job's spool entry (read by the gridops.metal.reservation inventory plugin), grant its user
       the deploy rights on its nodes until its walltime ends (origin "<scheduler>:<id>"), then run the start
       playbook through ansible-runner, if there is one.
end:   run the end playbook, if there is one, revoke the rights this job granted, remove the spool entry.

Installed by the gridops.metal.reservation_hooks role, with the configuration it writes (JSON) and a copy of
the collection's module_utils it needs.  Runs as the scheduler's user (oar, slurm) with little or no
environment: every path comes from the configuration.  Exit status 0 on success; on failure a message on
stderr and in the log, and status 1 (the scheduler then fails the job start, as it should when rights
cannot be granted).
"""

import argparse
import datetime
import json
import os
import subprocess
import sys
import time


def log(conf, message):
    stamp = datetime.datetime.now().strftime("%Y-%m-%dT%H:%M:%S")
    line = "%s %s[%d] %s\n" % (stamp, conf["scheduler"], os.getpid(), message)
    sys.stderr.write(line)
    if conf.get("log_file"):
        try:
            with open(conf["log_file"], "a") as fh:
                fh.write(line)
        except OSError:
            pass


def run(argv, env=None, timeout=60):
    proc = subprocess.run(argv, capture_output=True, text=True, env=env, timeout=timeout, check=False)
    if proc.returncode != 0:
        detail = (proc.stderr or proc.stdout).strip()[-500:]
        raise RuntimeError("%s failed (exit %d): %s" % (" ".join(argv), proc.returncode, detail))
    return proc.stdout


def job_from_scheduler(conf, rsv, job_id):
    """The job as the scheduler describes it now."""
    if conf["scheduler"] == "oar":
        jobs = rsv.parse_oarstat(run([conf["oarstat"], "-f", "-J", "-j", job_id]))
    else:
        env = {"SLURM_CONF": conf["slurm_conf"], "PATH": "/usr/bin:/bin"}
        jobs = rsv.parse_squeue(run([conf["squeue"], "--json"], env=env))
    for job in jobs:
        if job["id"] == job_id:
            if conf["scheduler"] == "slurm" and os.environ.get("SLURM_JOB_NODELIST"):
                # At PrologSlurmctld time the environment is the allocation itself.
                job["nodes"] = rsv.expand_nodes(os.environ["SLURM_JOB_NODELIST"], "SLURM_JOB_NODELIST")
            return job
    raise RuntimeError("job %s is unknown to %s" % (job_id, conf["scheduler"]))


def job_from_spool(conf, rsv, job_id):
    path = rsv.spool_path(conf["spool_dir"], conf["scheduler"], job_id)
    try:
        with open(path) as fh:
            return rsv.spool_job(json.load(fh), path)
    except (OSError, ValueError, rsv.ReservationError):
        return None


def job_from_slurm_environment(rsv, job_id):
    """What an EpilogSlurmctld knows without asking slurmctld."""
    return {"id": job_id, "scheduler": "slurm", "user": os.environ.get("SLURM_JOB_USER", ""),
            "state": "ending", "name": os.environ.get("SLURM_JOB_NAME"),
            "queue": os.environ.get("SLURM_JOB_PARTITION"), "types": [], "walltime": None,
            "started_at": None, "ends_at": None,
            "nodes": rsv.expand_nodes(os.environ.get("SLURM_JOB_NODELIST", ""), "SLURM_JOB_NODELIST")}


def origin(job):
    return "%s:%s" % (job["scheduler"], job["id"])


def grant_rights(conf, job):
    from ansible_collections.gridops.metal.plugins.module_utils import _registry, _rights
    if job["ends_at"] is None:
        raise RuntimeError("job %s has no walltime: deploy rights need an end" % job["id"])
    with _registry.Registry(conf["rights"]["registry"]) as reg:
        _rights.grant(reg, job["user"], job["nodes"], partitions=conf["rights"]["partitions"],
                      expires=job["ends_at"], origin=origin(job))


def revoke_rights(conf, job):
    """Revoke what this job granted (its origin), not other rights of the same user."""
    from ansible_collections.gridops.metal.plugins.module_utils import _registry, _rights
    with _registry.Registry(conf["rights"]["registry"]) as reg:
        # Every node of the origin, not only the nodes the job says it has now: rights are kept per origin,
        # so the operator's and other jobs' rights on the same nodes stay.
        _rights.revoke(reg, job["user"], origin=origin(job))


def run_playbook(conf, rsv, job, phase):
    """Run the phase's playbook through ansible-runner in <runs_dir>/<scheduler>-<id>; artifacts stay there."""
    runner = conf["runner"]
    playbook = runner.get(phase + "_playbook")
    if not playbook:
        return
    pdd = os.path.join(runner["runs_dir"], "%s-%s" % (job["scheduler"], job["id"]))
    for sub in ("env", "inventory"):
        os.makedirs(os.path.join(pdd, sub), exist_ok=True)
    record = rsv.spool_record(job)
    with open(os.path.join(pdd, "env", "extravars"), "w") as fh:
        json.dump({"reservation_job": record, "reservation_phase": phase}, fh, indent=1)
    with open(os.path.join(pdd, "inventory", "job.reservation.yml"), "w") as fh:
        json.dump({"plugin": "gridops.metal.reservation", "spool_dir": conf["spool_dir"],
                   "job_ids": [job["id"]], "states": [],
                   "cluster_description": runner.get("cluster_description") or None}, fh, indent=1)
    # The scheduler's user may have no home (slurm's is /nonexistent): Ansible's files go in the run directory.
    ansible_home = os.path.join(pdd, ".ansible")
    env = {"PATH": "%s:/usr/local/bin:/usr/bin:/bin" % os.path.dirname(runner["executable"]),
           "HOME": pdd, "LANG": "C.UTF-8", "ANSIBLE_HOME": ansible_home,
           "ANSIBLE_LOCAL_TEMP": os.path.join(ansible_home, "tmp"),
           "ANSIBLE_REMOTE_TMP": os.path.join(ansible_home, "tmp")}
    env.update(runner.get("envvars") or {})
    argv = [runner["executable"], "run", pdd, "--playbook", os.path.abspath(playbook), "--ident", phase]
    with open(os.path.join(pdd, "%s.log" % phase), "ab") as out:
        proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT, env=env,
                                cwd=pdd, start_new_session=not runner.get("wait"))
    if not runner.get("wait"):
        log(conf, "job %s: %s playbook started (pid %d), artifacts in %s/artifacts/%s"
            % (job["id"], phase, proc.pid, pdd, phase))
        return
    try:
        rc = proc.wait(runner.get("timeout") or None)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
        raise RuntimeError("%s playbook did not finish within %s s (see %s)" % (phase, runner["timeout"], pdd))
    if rc != 0:
        raise RuntimeError("%s playbook failed (exit %d): see %s/artifacts/%s" % (phase, rc, pdd, phase))
    log(conf, "job %s: %s playbook done, artifacts in %s/artifacts/%s" % (job["id"], phase, pdd, phase))


def start(conf, rsv, job_id):
    job = job_from_scheduler(conf, rsv, job_id)
    # The job is starting: whatever the scheduler calls this moment, it is running from now on.
    job["state"] = "running"
    if job["started_at"] is None:
        job["started_at"] = int(time.time())
        if job["walltime"] is not None:
            job["ends_at"] = job["started_at"] + job["walltime"]
    if not job["nodes"]:
        raise RuntimeError("job %s has no nodes" % job_id)
    path = rsv.write_spool_entry(conf["spool_dir"], job)
    log(conf, "job %s of %s started on %d node(s), until %s: %s" % (
        job_id, job["user"], len(job["nodes"]), rsv.isotime(job["ends_at"]) or "no end", path))
    if conf.get("rights"):
        grant_rights(conf, job)
        log(conf, "job %s: deploy rights granted to %s" % (job_id, job["user"]))
    run_playbook(conf, rsv, job, "start")


def end(conf, rsv, job_id):
    job = job_from_spool(conf, rsv, job_id)
    if job is None:
        log(conf, "job %s: no spool entry, asking %s" % (job_id, conf["scheduler"]))
        try:
            job = job_from_scheduler(conf, rsv, job_id)
        except (RuntimeError, rsv.ReservationError) as exc:
            if conf["scheduler"] != "slurm":
                raise
            log(conf, "job %s: %s; using the hook's environment" % (job_id, exc))
            job = job_from_slurm_environment(rsv, job_id)
    failures = []
    try:
        run_playbook(conf, rsv, job, "end")
    except (RuntimeError, OSError) as exc:
        failures.append(str(exc))
    if conf.get("rights") and job["user"] and job["nodes"]:
        revoke_rights(conf, job)
        log(conf, "job %s: deploy rights of %s revoked" % (job_id, job["user"]))
    if rsv.remove_spool_entry(conf["spool_dir"], conf["scheduler"], job_id):
        log(conf, "job %s ended: spool entry removed" % job_id)
    if failures:
        raise RuntimeError("; ".join(failures))


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", required=True)
    parser.add_argument("phase", choices=["start", "end"])
    parser.add_argument("job_id", nargs="?", help="the job id (OAR); Slurm's comes from SLURM_JOB_ID")
    args = parser.parse_args(argv)
    with open(args.config) as fh:
        conf = json.load(fh)
    sys.path.insert(0, conf["lib"])
    from ansible_collections.gridops.metal.plugins.module_utils import _reservations as rsv

    job_id = args.job_id or os.environ.get("SLURM_JOB_ID")
    if not job_id:
        log(conf, "%s: no job id (argument, or SLURM_JOB_ID)" % args.phase)
        return 1
    try:
        (start if args.phase == "start" else end)(conf, rsv, str(job_id))
    except Exception as exc:  # pylint: disable=broad-except
        # Whatever went wrong, the scheduler must hear it, and the log must say it.
        log(conf, "job %s: %s failed: %s: %s" % (job_id, args.phase, type(exc).__name__, exc))
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
