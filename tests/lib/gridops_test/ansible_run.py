"""Run ansible-playbook / ansible-inventory from tests, with the project's settings."""
import json
import os
import pathlib
import re
import subprocess
import sys

REPO = pathlib.Path(__file__).resolve().parents[3]


def env(**extra):
    """Environment for Ansible commands: venv first on PATH, our config and collections."""
    e = dict(os.environ)
    e["PATH"] = "%s%s%s" % (pathlib.Path(sys.executable).parent, os.pathsep, e.get("PATH", ""))
    e["ANSIBLE_CONFIG"] = str(REPO / "ansible.cfg")
    e["ANSIBLE_COLLECTIONS_PATH"] = str(REPO / "build" / "collections")
    e["CONTAINERS_CONF"] = str(REPO / "roles" / "lab" / "files" / "containers.conf")
    e["ANSIBLE_NOCOLOR"] = "1"
    e["ANSIBLE_FORCE_COLOR"] = "0"
    e.update(extra)
    return e


class PlaybookResult:
    def __init__(self, proc):
        self.rc = proc.returncode
        self.stdout = proc.stdout
        self.stderr = proc.stderr

    @property
    def recap(self):
        """{host: {ok, changed, failed, ...}} from the PLAY RECAP."""
        hosts = {}
        for m in re.finditer(r"^(\S+)\s+:\s+((?:\w+=\d+\s*)+)$", self.stdout, re.M):
            hosts[m.group(1)] = dict((k, int(v)) for k, v in re.findall(r"(\w+)=(\d+)", m.group(2)))
        return hosts

    def changed(self):
        return sum(h.get("changed", 0) for h in self.recap.values())

    def __str__(self):
        return "rc=%s\n--- stdout (tail)\n%s\n--- stderr\n%s" % (self.rc, self.stdout[-6000:], self.stderr[-3000:])


def playbook(name, inventory, extra_vars=None, timeout=1800, check=True, args=()):
    """Run playbooks/<name> against inventory; raise with the output when it fails and check is set."""
    argv = ["ansible-playbook", "-i", str(inventory), str(REPO / "playbooks" / name)]
    if extra_vars:
        argv += ["-e", json.dumps(extra_vars)]
    argv += list(args)
    proc = subprocess.run(argv, cwd=REPO, env=env(), capture_output=True, text=True, timeout=timeout, check=False)
    res = PlaybookResult(proc)
    if check and res.rc != 0:
        raise AssertionError("ansible-playbook %s failed\n%s" % (name, res))
    return res


def _untag(value):
    """Plain values from ansible-inventory's JSON, which marks untrusted strings
    as {"__ansible_unsafe": value} (ansible-core 2.19 inventory_legacy profile)."""
    if isinstance(value, dict):
        if set(value) == {"__ansible_unsafe"}:
            return value["__ansible_unsafe"]
        return dict((k, _untag(v)) for k, v in value.items())
    if isinstance(value, list):
        return [_untag(v) for v in value]
    return value


def inventory(inventory_path):
    """`ansible-inventory --list` as a dict of plain values."""
    proc = subprocess.run(["ansible-inventory", "-i", str(inventory_path), "--list"], cwd=REPO, env=env(),
                          capture_output=True, text=True, timeout=120, check=True)
    return _untag(json.loads(proc.stdout))
