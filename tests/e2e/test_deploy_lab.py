"""gridops.metal.deploy on the lab, end to end: playbooks/deploy.yml with three QEMU nodes.

The lab's deploy server gets its PXE stack, its deploy ramdisk and the Debian 12
image (playbooks/pxe.yml, playbooks/environments.yml); then:

* a checksum mismatch is refused before any node is touched;
* a wrong BMC password on nodes whose SSH is down fails them at the reboot, with
  the escalation's details;
* Debian 12 goes onto the three nodes while one node's QEMU is killed during the
  broadcast: the two others are deployed, boot their own disk and answer SSH with
  the given key under their own names, the dead one is reported failed at
  BroadcastEnv;
* another environment is deployed over them, the dead node included (its reboot
  powers it on again): all three deployed, the environment's and the caller's
  postinstall hooks have run.

Figures (wall time, per-step breakdown) on FIGURES lines (pytest -s).
"""
import json
import os
import subprocess
import threading
import time

import pytest

from gridops_test import ansible_run as ansible
from gridops_test.lab import Lab

pytestmark = [pytest.mark.root, pytest.mark.qemu, pytest.mark.slow]

NODES = ["node-1", "node-2", "node-3"]


def figures(label, **values):
    print("FIGURES %s %s" % (label, json.dumps(values, sort_keys=True)), flush=True)


@pytest.fixture(scope="module")
def lab(tmp_path_factory):
    lab = Lab(tmp_path_factory.mktemp("deploylab"), lab_node_count=3, lab_node_memory_mb=768, lab_node_disk_gb=3)
    try:
        start = time.monotonic()
        lab.up()
        lab.playbook("pxe.yml")
        lab.playbook("environments.yml", timeout=2400)
        figures("deploy-lab-ready", seconds=round(time.monotonic() - start, 1))
        yield lab
    finally:
        lab.close()
        assert lab.leftovers() == {}, lab.leftovers()


def server(lab, *argv, input=None):
    res = subprocess.run(["podman", "exec", "-i", lab.container] + list(argv), env=ansible.env(), input=input,
                         capture_output=True, text=True, timeout=120, check=False)
    assert res.returncode == 0, (argv, res.stdout, res.stderr)
    return res.stdout


def power(lab, node):
    return lab.ipmitool(node, "chassis", "power", "status").strip().rsplit(" ", 1)[-1]


def deploy(lab, tmp_path, name, extra=None, check=True, timeout=2400):
    result_file = tmp_path / ("%s.json" % name)
    res = lab.playbook("deploy.yml", dict({"deploy_result_file": str(result_file)}, **(extra or {})),
                       check=check, timeout=timeout)
    result = json.loads(result_file.read_text()) if result_file.exists() else None
    return res, result


def by_name(result):
    return dict((n["name"], n) for n in result["nodes"])


def step_figures(result):
    return dict((n["name"], dict((step, s["seconds"]) for step, s in n["steps"].items())) for n in result["nodes"])


def description(lab, name, **over):
    """The registered debian12 description, renamed (and changed by over)."""
    env = json.loads(server(lab, "python3", "-c", (
        "import sqlite3; c = sqlite3.connect('/var/lib/gridops-metal/registry.sqlite'); "
        "print(c.execute(\"SELECT description FROM environments WHERE name = 'debian12'\").fetchone()[0])")))
    env.update(name=name, version=1)
    env.update(over)
    return env


def put(lab, path, text):
    server(lab, "sh", "-c", "cat > %s" % path, input=text)


def test_a_checksum_mismatch_touches_nothing(lab, tmp_path):
    env = description(lab, "debian12-bad")
    env["image"] = dict(env["image"], sha256="0" * 64)
    put(lab, "/tmp/bad.json", json.dumps(env))
    before = dict((n, power(lab, n)) for n in NODES)
    res, result = deploy(lab, tmp_path, "bad", {"deploy_environment_file": "/tmp/bad.json"}, check=False)
    assert res.rc != 0 and result is None
    assert "image.sha256" in res.stdout and "nothing was touched" in res.stdout, res
    assert dict((n, power(lab, n)) for n in NODES) == before == dict((n, "off") for n in NODES)
    assert server(lab, "sh", "-c", "ls /var/lib/gridops-metal/deployments 2>/dev/null | wc -l").strip() == "0"


def test_a_wrong_bmc_password_with_ssh_down_fails_at_the_reboot(lab, tmp_path):
    res, result = deploy(lab, tmp_path, "badbmc", {"bmc_password": "not-the-password",
                                                   "deploy_steps": {"set_deployment_env": [{"variant": "reboot",
                                                                                            "retries": 0}]}},
                         check=False)
    assert res.rc != 0, res
    for name, node in by_name(result).items():
        assert (node["state"], node["failed_step"], node["failed_micro_step"]) == ("failed", "SetDeploymentEnv",
                                                                                   "reboot"), node
        assert "soft: ssh root@" in node["error"] and "hard: " in node["error"], node["error"]
        escalation = node["attempts"][0]["power"]["attempts"]
        assert [a["level"] for a in escalation] == ["soft", "hard"] and not any(a["ok"] for a in escalation)
    assert all(power(lab, n) == "off" for n in NODES)


def qemu_pid(lab, node):
    node_dir = lab.hosts()[node]["lab_node_dir"]
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open("/proc/%s/cmdline" % entry, "rb") as fh:
                    cmd = fh.read().decode(errors="replace")
            except OSError:
                continue
            if "qemu-system" in cmd and node_dir in cmd:
                return int(entry)
    return None


def kill_during_broadcast(lab, node, min_bytes, timeout, killed):
    """Kill node's QEMU once the progress file shows it has received min_bytes of the image."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        out = subprocess.run(["podman", "exec", lab.container, "sh", "-c",
                              "cat /var/lib/gridops-metal/deployments/*.json 2>/dev/null | tail -n 1"],
                             env=ansible.env(), capture_output=True, text=True, check=False).stdout
        try:
            state = json.loads(out) if out.strip() else {}
        except ValueError:
            state = {}
        got = (state.get("broadcast") or {}).get(node, {}).get("bytes", 0)
        if got >= min_bytes:
            pid = qemu_pid(lab, node)
            if pid:
                os.kill(pid, 9)
                killed.update(pid=pid, bytes=got, at=round(state.get("elapsed", 0), 1))
            return
        time.sleep(1)


def test_deploy_three_nodes_one_dies_in_the_broadcast_then_another_environment(lab, tmp_path):
    server(lab, "sh", "-c", "rm -rf /var/lib/gridops-metal/deployments")
    killed = {}
    killer = threading.Thread(target=kill_during_broadcast, args=(lab, "node-3", 20 << 20, 1800, killed))
    killer.start()
    start = time.monotonic()
    try:
        res, result = deploy(lab, tmp_path, "first", {"deploy_environment": "debian12"})
    finally:
        killer.join()
    wall = round(time.monotonic() - start, 1)
    assert killed, "node-3 was never seen receiving the image"
    nodes = by_name(result)
    assert result["deployed_nodes"] == ["node-1", "node-2"], result["msg"]
    dead = nodes["node-3"]
    assert (dead["state"], dead["failed_step"]) == ("failed", "BroadcastEnv"), dead
    assert "node-3 failed at BroadcastEnv" in res.stdout
    for name in ("node-1", "node-2"):
        node = nodes[name]
        assert node["host_key"].startswith("ssh-ed25519 ")
        assert [s["micro_step"] for s in node["micro_steps"] if s["ok"]][-3:] == ["netboot", "reboot", "wait_system"]
        # The second play logged in with the lab's key and read the node's own host name and OS.
        assert "%s: Debian 12" % name in res.stdout, res
    console = lab.console("node-1")
    assert "Debian GNU/Linux 12" in console
    figures("deploy-3-nodes-one-killed", wall_seconds=wall, module_seconds=result["seconds"], killed=killed,
            broadcasts=result["broadcasts"], steps=step_figures(result))

    # Another environment over it: a description file, an environment hook and a caller's hook.
    put(lab, "/tmp/env-hook.sh", "#!/bin/sh\necho \"env hook on $GRIDOPS_NODE\" > \"$GRIDOPS_ROOT/etc/gridops-env-hook\"\n")
    env = description(lab, "debian12-second", postinstall=[{"script": "/tmp/env-hook.sh"}])
    env["boot"] = dict(env["boot"], params="console=ttyS0,115200 quiet")
    put(lab, "/tmp/second.json", json.dumps(env))
    hook = {"name": "stamp", "content": "#!/bin/sh\necho \"$GRIDOPS_ENVIRONMENT $GRIDOPS_NODE\" > /etc/gridops-stamp\n"}
    start = time.monotonic()
    res, result = deploy(lab, tmp_path, "second", {"deploy_environment_file": "/tmp/second.json",
                                                   "deploy_postinstall": [hook]})
    wall = round(time.monotonic() - start, 1)
    assert result["deployed_nodes"] == NODES, result["msg"]
    assert by_name(result)["node-3"]["attempts"][0]["power"]["level"] == "hard", "the dead node was powered on"
    for name in NODES:
        assert "%s: Debian 12" % name in res.stdout
    out = subprocess.run(["ansible", "-i", str(lab.inventory), "nodes", "-m", "ansible.builtin.command", "-a",
                          "cat /etc/gridops-stamp /etc/gridops-env-hook /proc/cmdline"],
                         cwd=ansible.REPO, env=ansible.env(), capture_output=True, text=True, timeout=300,
                         check=False).stdout
    for name in NODES:
        assert "debian12-second %s" % name in out and "env hook on %s" % name in out, out
    assert out.count("quiet") == 3, out
    figures("deploy-3-nodes-second-environment", wall_seconds=wall, module_seconds=result["seconds"],
            broadcasts=result["broadcasts"], steps=step_figures(result))
