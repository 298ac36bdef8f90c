"""Record what a real OAR 2.5 and a real Slurm 22.05 print, for the unit tests of the reservation parsers.

    sudo .venv/bin/python -m gridops_test.record_reservation_samples tests/unit/plugins/module_utils/reservations

(with tests/lib on PYTHONPATH).  Starts a private OAR and a private Slurm (see schedulers.py), submits jobs
in several states as an ordinary user, and writes the schedulers' own output to DEST, with the test user's
name replaced by "alice" and the private paths by /home/alice so the samples read (and diff) well.
The unit tests' expectations (test__reservations.yaml) name these jobs by what they asked for.
"""
import json
import pathlib
import sys

from . import procs, schedulers


def _write(dest, name, text, user):
    text = text.replace(user.name, "alice").replace(str(user.home), "/home/alice")
    (dest / name).write_text(text)


def record_oar(dest, user):
    oar = schedulers.OarCluster(["node-%d" % i for i in range(1, 5)]).start()
    try:
        run = oar.oarsub(user, "-t", "noop", "-t", "deploy", "-n", "deploy-me",
                         "-p", "network_address IN ('node-1','node-2')", "-l", "nodes=2,walltime=1:30:00")
        oar.wait_state(run, "Running")
        small = oar.oarsub(user, "-t", "noop", "--project", "physics", "-l", "nodes=1,walltime=0:20:00")
        oar.wait_state(small, "Running")
        # All four nodes: it waits behind the others, with predicted ("scheduled") nodes in the API.
        oar.oarsub(user, "-t", "noop", "-n", "waiter", "-l", "nodes=4,walltime=0:10:00")
        _write(dest, "oarstat.json", oar.run(["oarstat", "-f", "-J"]).stdout, user)
        _write(dest, "oarstat_one_job.json", oar.run(["oarstat", "-f", "-J", "-j", str(run)]).stdout, user)
        _write(dest, "oarstat_unknown_job.json", oar.run(["oarstat", "-f", "-J", "-j", "999"]).stdout, user)
        api = "%s/jobs/details.json" % oar.api_url
        _write(dest, "oarapi_details.json", oar.run(["curl", "-sf", api]).stdout, user)
        _write(dest, "oarapi_details_page2.json", oar.run(["curl", "-sf", api + "?limit=2&offset=2"]).stdout, user)
        oar.oardel(user, run)
        oar.wait_state(run, ("Terminated", "Error"))
        _write(dest, "oarstat_terminated_job.json", oar.run(["oarstat", "-f", "-J", "-j", str(run)]).stdout, user)
    finally:
        oar.close()


def record_slurm(dest, user):
    slurm = schedulers.SlurmCluster(["node-%d" % i for i in range(1, 4)]).start()
    try:
        run = slurm.sbatch(user, "-N", "2", "-t", "90", "-J", "deploy-me", "--wrap", "sleep 1000")
        slurm.wait_state(run, "RUNNING")
        forever = slurm.sbatch(user, "-N", "1", "-t", "UNLIMITED", "-p", "debug", "--wrap", "sleep 1000")
        slurm.wait_state(forever, "RUNNING")
        slurm.sbatch(user, "-N", "3", "-t", "10", "-J", "waiter", "--wrap", "sleep 1000")
        cancelled = slurm.sbatch(user, "-N", "3", "-t", "10", "-J", "cancelled", "--wrap", "sleep 1000")
        slurm.scancel(user, cancelled)
        _write(dest, "squeue.json", slurm.command(["squeue", "--json"]).stdout, user)
        _write(dest, "sinfo.json", slurm.command(["sinfo", "--json"]).stdout, user)
    finally:
        slurm.close()


def main(argv):
    dest = pathlib.Path(argv[0] if argv else ".")
    dest.mkdir(parents=True, exist_ok=True)
    procs.become_subreaper()
    user = schedulers.TestUser()
    try:
        record_oar(dest, user)
        record_slurm(dest, user)
    finally:
        user.close()
        procs.reap_orphans()
    for path in sorted(dest.glob("*.json")):
        if path.read_text().strip():
            json.loads(path.read_text())
        print(path)


if __name__ == "__main__":
    main(sys.argv[1:])
