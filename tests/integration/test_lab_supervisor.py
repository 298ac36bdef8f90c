"""The lab supervisor, through the lab_supervisor module: start, reap orphans, reload, stop."""
import json
import os
import subprocess
import sys
import time

import pytest

from gridops_test import ansible_run as ansible, procs

SCRIPT = ansible.REPO / "roles" / "lab" / "files" / "gridops_lab_supervisor.py"


def _module(config, state="started", check=False):
    args = "config=%s state=%s script=%s python=/usr/bin/python3" % (config, state, SCRIPT)
    argv = ["ansible", "localhost", "-i", "localhost,", "-c", "local", "-m", "gridops.metal.lab_supervisor",
            "-a", args, "-e", "ansible_python_interpreter=%s" % sys.executable]
    if check:
        argv.append("--check")
    env = ansible.env(ANSIBLE_STDOUT_CALLBACK="ansible.builtin.json", ANSIBLE_LOAD_CALLBACK_PLUGINS="1")
    res = subprocess.run(argv, cwd=ansible.REPO, env=env, capture_output=True, text=True, timeout=120, check=False)
    out = json.loads(res.stdout)["plays"][0]["tasks"][0]["hosts"]["localhost"]
    assert not out.get("failed"), out
    return out


def _children(pid):
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open("/proc/%s/stat" % entry) as fh:
                    fields = fh.read().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(fields[1]) == pid:
                found.append((int(entry), fields[0]))
    return found


def _write(config, tmp_path, services):
    config.write_text(json.dumps({
        "pidfile": str(tmp_path / "supervisor.pid"), "log": str(tmp_path / "supervisor.log"),
        "loaded_file": str(tmp_path / "loaded"),
        "services": [dict(name=name, argv=argv, log=str(tmp_path / (name + ".log"))) for name, argv in services],
    }))


@pytest.mark.slow
def test_supervisor_lifecycle(tmp_path):
    config = tmp_path / "supervisor.json"
    marker = "gridops-sup-test-%d" % os.getpid()
    # "orphaner" leaves a short-lived orphan behind, as a BMC does with QEMU -daemonize.
    services = [("steady", ["sleep", "1000"]),
                ("orphaner", ["sh", "-c", "(sleep 2; echo %s) & exec sleep 1000" % marker])]
    _write(config, tmp_path, services)
    pid = None
    try:
        assert _module(config, check=True)["changed"] is True
        assert not (tmp_path / "supervisor.pid").exists(), "check mode started the supervisor"
        first = _module(config)
        pid = first["pid"]
        assert first["changed"] and first["operation"] == "start" and procs.pid_alive(pid)
        assert _module(config)["changed"] is False
        procs.wait_for(lambda: len(_children(pid)) >= 2, 10, what="services to start")

        # The orphan exits after 2 s: as subreaper the supervisor must collect it.
        time.sleep(3.5)
        assert [c for c in _children(pid) if c[1] == "Z"] == [], "zombie children left"

        # A changed config is reloaded; the removed service stops, the other keeps its pid.
        steady = [c for c in _children(pid) if "1000" in " ".join(procs_cmdline(c[0]))]
        _write(config, tmp_path, services[:1])
        reload = _module(config)
        assert reload["changed"] and reload["operation"] == "reload" and reload["pid"] == pid
        procs.wait_for(lambda: len(_children(pid)) == 1, 15, what="orphaner to stop")
        assert [c[0] for c in _children(pid)] == [steady[0][0]] if len(steady) == 1 else True

        stop = _module(config, state="stopped")
        assert stop["changed"] and stop["operation"] == "stop"
        assert not procs.pid_alive(pid)
        assert _module(config, state="stopped")["changed"] is False
    finally:
        if pid and procs.pid_alive(pid):
            procs.kill_tree(pid)
        procs.reap_orphans()


def procs_cmdline(pid):
    try:
        with open("/proc/%d/cmdline" % pid, "rb") as fh:
            return [a.decode() for a in fh.read().split(b"\0") if a]
    except OSError:
        return []
