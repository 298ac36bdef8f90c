"""A lab of one's own for end-to-end tests: lab_up, its inventory, IPMI and consoles, lab_down.

Per-run lab name and state root (under the test's tmp directory), so several
runs on one machine never meet; ``close()`` runs lab_down and then removes by
force whatever is left, for use in ``finally``.
"""
import os
import pathlib
import re
import subprocess

from . import ansible_run as ansible, net, procs


class Lab:
    def __init__(self, tmp, name=None, **variables):
        tmp = pathlib.Path(tmp)
        self.name = name or "p%s" % net.run_suffix()[:6]
        self.root = tmp / "state"
        self.dir = self.root / self.name
        self.inventory = tmp / "inventory" / ("%s.lab.yml" % self.name)
        self.inventory.parent.mkdir(parents=True, exist_ok=True)
        self.inventory.write_text("plugin: gridops.metal.lab\nlab_name: %s\nstate_root: %s\n" % (self.name, self.root))
        self.vars = dict({"lab_name": self.name, "lab_state_root": str(self.root)}, **variables)
        self.container = "gridops-lab-%s-server" % self.name
        self.netns = ["gridops-lab-%s" % self.name, "gridops-lab-%s-srv" % self.name]
        self._offsets = {}

    def up(self, **kw):
        return ansible.playbook("lab_up.yml", self.inventory, self.vars, **kw)

    def playbook(self, name, extra_vars=None, **kw):
        return ansible.playbook(name, self.inventory, dict(self.vars, **(extra_vars or {})), **kw)

    def hosts(self):
        return ansible.inventory(self.inventory)["_meta"]["hostvars"]

    def nodes(self):
        return sorted(host for host, hv in self.hosts().items() if "mac" in hv)

    def ipmitool(self, node, *args):
        """ipmitool inside the deploy server container, as an operator would run it."""
        hv = self.hosts()[node]
        argv = ["podman", "exec", self.container, "ipmitool", "-I", "lanplus", "-C", "3", "-H", hv["bmc_address"],
                "-p", str(hv["bmc_port"]), "-U", hv["bmc_user"], "-P", hv["bmc_password"]] + list(args)
        res = subprocess.run(argv, env=ansible.env(), capture_output=True, text=True, timeout=60, check=False)
        if res.returncode != 0:
            raise AssertionError("ipmitool %s on %s: rc=%s %s %s" % (args, node, res.returncode, res.stdout, res.stderr))
        return res.stdout

    def console_path(self, node):
        return pathlib.Path(self.hosts()[node]["lab_node_dir"]) / "console.log"

    def mark(self, node):
        """Console text read by console() starts from now (each power-on appends)."""
        path = self.console_path(node)
        self._offsets[node] = path.stat().st_size if path.exists() else 0

    def console(self, node):
        path = self.console_path(node)
        if not path.exists():
            return ""
        with open(path, "rb") as fh:
            fh.seek(self._offsets.get(node, 0))
            return re.sub(r"\x1b(\[[0-9;?]*[A-Za-z]|c)", "", fh.read().decode(errors="replace"))

    def wait_console(self, node, pattern, timeout=180):
        regex = re.compile(pattern)
        try:
            return procs.wait_for(lambda: regex.search(self.console(node)), timeout, interval=0.2,
                                  what="%s console: %s" % (node, pattern))
        except TimeoutError:
            raise AssertionError("%s: no %r after %ss:\n%s" % (node, pattern, timeout, self.console(node)[-3000:]))

    def leftovers(self):
        found = {}
        netns = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True, check=True).stdout
        found["netns"] = [line.split()[0] for line in netns.splitlines() if line.split()[0] in self.netns]
        ps = subprocess.run(["podman", "ps", "-a", "--filter", "label=gridops.lab=%s" % self.name, "--format",
                             "{{.Names}}"], env=ansible.env(), capture_output=True, text=True, check=True).stdout
        found["containers"] = ps.split()
        found["processes"] = []
        for entry in os.listdir("/proc"):
            if entry.isdigit() and int(entry) != os.getpid() and procs.pid_alive(int(entry)):
                try:
                    with open("/proc/%s/cmdline" % entry, "rb") as fh:
                        cmd = fh.read().replace(b"\0", b" ").decode(errors="replace")
                except OSError:
                    continue
                if str(self.root) in cmd or any(ns in cmd for ns in self.netns):
                    found["processes"].append("%s %s" % (entry, cmd[:120]))
        found["state_dir"] = [str(self.dir)] if self.dir.exists() else []
        return dict((k, v) for k, v in found.items() if v)

    def close(self):
        """lab_down, then whatever it left, by force."""
        try:
            ansible.playbook("lab_down.yml", self.inventory, self.vars, check=False)
        finally:
            subprocess.run(["podman", "rm", "-f", "-t", "0", self.container], env=ansible.env(), capture_output=True,
                           check=False)
            for ns in self.netns:
                subprocess.run(["ip", "netns", "delete", ns], capture_output=True, check=False)
            for entry in self.leftovers().get("processes", []):
                procs.kill_tree(int(entry.split()[0]))
            subprocess.run(["rm", "-rf", str(self.root)], check=False)
