"""The lab, end to end: lab_up, IPMI from the deploy server, idempotence, status, lab_down.

One lab per module with a per-run name and state directory; node-3 uses the
virtualbmc BMC kind, the others ipmi_sim, so both kinds are exercised.
"""
import json
import os
import pathlib
import subprocess
import time

import pytest

from gridops_test import ansible_run as ansible, net, procs

pytestmark = [pytest.mark.root, pytest.mark.qemu, pytest.mark.slow]

REPO = ansible.REPO
NODE_SCRIPT = REPO / "roles" / "lab" / "files" / "gridops_lab_node.py"
LIBVIRT_SCRIPT = REPO / "roles" / "lab" / "files" / "gridops_lab_libvirt.py"


class Lab:
    def __init__(self, tmp, name):
        self.name = name
        self.root = tmp / "state"
        self.dir = self.root / name
        self.inventory = tmp / "inventory" / ("%s.lab.yml" % name)
        self.inventory.parent.mkdir(parents=True)
        self.inventory.write_text("plugin: gridops.metal.lab\nlab_name: %s\nstate_root: %s\n" % (name, self.root))
        self.vars = {"lab_name": name, "lab_state_root": str(self.root), "lab_node_memory_mb": 256,
                     "lab_node_disk_gb": 2, "lab_bmc_kinds": {"node-3": "virtualbmc"}}
        self.container = "gridops-lab-%s-server" % name
        self.netns = ["gridops-lab-%s" % name, "gridops-lab-%s-srv" % name]

    def up(self, **kw):
        return ansible.playbook("lab_up.yml", self.inventory, self.vars, **kw)

    def down(self, **kw):
        return ansible.playbook("lab_down.yml", self.inventory, self.vars, **kw)

    def hosts(self):
        return ansible.inventory(self.inventory)["_meta"]["hostvars"]

    def ipmitool(self, node, *args, check=True):
        """ipmitool run inside the deploy server container, as an operator would."""
        hv = self.hosts()[node]
        argv = ["podman", "exec", self.container, "ipmitool", "-I", "lanplus", "-C", "3",
                "-H", hv["bmc_address"], "-p", str(hv["bmc_port"]), "-U", hv["bmc_user"], "-P", hv["bmc_password"]]
        res = subprocess.run(argv + list(args), env=ansible.env(), capture_output=True, text=True, timeout=60,
                             check=False)
        if check and (res.returncode != 0 or "failed" in res.stderr.lower()):
            raise AssertionError("ipmitool %s on %s: rc=%s %s %s" % (args, node, res.returncode, res.stdout, res.stderr))
        return res.stdout

    def node_status(self, node):
        hv = self.hosts()[node]
        if hv["bmc_kind"] == "ipmi_sim":
            argv = ["/usr/bin/python3", str(NODE_SCRIPT), hv["lab_node_dir"], "status", "--json"]
        else:
            argv = ["/usr/bin/python3", str(LIBVIRT_SCRIPT), "status", "--state-dir", str(self.dir / "libvirt"),
                    "--domain", node, "--json"]
        out = json.loads(subprocess.run(argv, capture_output=True, text=True, check=True, timeout=60).stdout)
        out["qemu"] = out.get("pid") or out.get("qemu_pid")
        return out

    def console(self, node):
        path = pathlib.Path(self.hosts()[node]["lab_node_dir"]) / "console.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def leftovers(self):
        """Everything of this lab still on the machine, by kind."""
        found = {}
        netns = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True, check=True).stdout
        found["netns"] = [line.split()[0] for line in netns.splitlines() if line.split()[0] in self.netns]
        found["processes"] = []
        for entry in os.listdir("/proc"):
            if entry.isdigit() and int(entry) != os.getpid():
                cmd = procs.pid_alive(int(entry)) and " ".join(_cmdline(int(entry)))
                if cmd and (str(self.root) in cmd or any(ns in cmd for ns in self.netns)):
                    found["processes"].append("%s %s" % (entry, cmd[:120]))
        ps = subprocess.run(["podman", "ps", "-a", "--filter", "label=gridops.lab=%s" % self.name, "--format",
                             "{{.Names}}"], env=ansible.env(), capture_output=True, text=True, check=True).stdout
        found["containers"] = ps.split()
        found["state_dir"] = [str(self.dir)] if self.dir.exists() else []
        with open("/proc/mounts") as fh:
            found["mounts"] = [line for line in fh if str(self.root) in line]
        loops = subprocess.run(["losetup", "-a"], capture_output=True, text=True, check=False).stdout
        found["loop_devices"] = [line for line in loops.splitlines() if str(self.root) in line]
        return dict((k, v) for k, v in found.items() if v)

    def force_clean(self):
        """Last resort after a failed lab_down, so a broken run never leaves anything."""
        subprocess.run(["podman", "rm", "-f", "-t", "0", self.container], env=ansible.env(), capture_output=True,
                       check=False)
        for ns in self.netns:
            subprocess.run(["ip", "netns", "delete", ns], capture_output=True, check=False)
        for entry in self.leftovers().get("processes", []):
            procs.kill_tree(int(entry.split()[0]))
        subprocess.run(["rm", "-rf", str(self.root)], check=False)


def _cmdline(pid):
    try:
        with open("/proc/%d/cmdline" % pid, "rb") as fh:
            return [a.decode(errors="replace") for a in fh.read().split(b"\0") if a]
    except OSError:
        return []


def _lab_name():
    return "e%s" % net.run_suffix()[:6]


@pytest.fixture(scope="module")
def lab(tmp_path_factory):
    lab = Lab(tmp_path_factory.mktemp("lab"), _lab_name())
    try:
        start = time.monotonic()
        lab.up()
        print("\nlab_up (3 nodes) took %.1f s" % (time.monotonic() - start))
        yield lab
    finally:
        try:
            lab.down(check=False)
        finally:
            lab.force_clean()


def test_bad_input_is_refused_before_anything_is_made(tmp_path):
    lab = Lab(tmp_path, _lab_name()[:-1] + "x")
    # A real host route to clash with: an address on a veth pair of our own (no traffic).
    veth = net.unique_name("gtc")
    subprocess.run(["ip", "link", "add", veth, "type", "veth", "peer", "name", veth + "p"], check=True)
    try:
        subprocess.run(["ip", "addr", "add", "10.254.77.1/24", "dev", veth], check=True)
        subprocess.run(["ip", "link", "set", veth, "up"], check=True)
        cases = [
            ({"lab_name": "Bad_Name"}, "lab_name"),
            ({"lab_node_count": 200, "lab_node_memory_mb": 65536}, "lab_node_count"),
            ({"lab_subnet": "172.29.213.7/24"}, "lab_subnet"),
            ({"lab_subnet": "10.254.77.0/24"}, "clashes with the host's route 10.254.77.0/24"),
            # A package cannot be uninstalled for the test: point the role's (internal) list at a missing file.
            ({"__lab_required_programs": [{"path": "/usr/bin/gridops-absent", "package": "gridops-absent-pkg"}]},
             "missing package(s) gridops-absent-pkg"),
        ]
        for extra, expected in cases:
            res = ansible.playbook("lab_up.yml", lab.inventory, dict(lab.vars, **extra), check=False)
            assert res.rc != 0, "accepted %s" % extra
            assert expected in res.stdout, "%s: message does not name %r:\n%s" % (extra, expected, res)
            assert lab.leftovers() == {}, lab.leftovers()
    finally:
        subprocess.run(["ip", "link", "delete", veth], check=False)
        lab.force_clean()


def test_inventory_describes_the_lab(lab):
    inv = ansible.inventory(lab.inventory)
    assert inv["deploy_server"]["hosts"] == ["deploy-server"]
    assert sorted(inv["lab"]["hosts"]) == ["node-1", "node-2", "node-3"]
    hostvars = inv["_meta"]["hostvars"]
    macs, ips = set(), set()
    for node in ("node-1", "node-2", "node-3"):
        hv = hostvars[node]
        for key in ("mac", "ip", "bmc_address", "bmc_port", "bmc_user", "bmc_password", "bmc_kind",
                    "disk_device", "cluster"):
            assert hv.get(key) not in (None, ""), "%s lacks %s" % (node, key)
        macs.add(hv["mac"])
        ips.add(hv["ip"])
    assert len(macs) == 3 and len(ips) == 3
    assert hostvars["node-3"]["bmc_kind"] == "virtualbmc"
    assert oct(os.stat(lab.dir / "bmc_password").st_mode & 0o777) == "0o600"
    # The deploy server answers Ansible through the podman connection.
    res = subprocess.run(["ansible", "-i", str(lab.inventory), "deploy_server", "-m", "ansible.builtin.ping"],
                         env=ansible.env(), cwd=REPO, capture_output=True, text=True, timeout=120, check=False)
    assert res.returncode == 0 and "pong" in res.stdout, res.stdout + res.stderr


@pytest.mark.parametrize("node", ["node-1", "node-3"], ids=["ipmi_sim", "virtualbmc"])
def test_ipmi_from_the_deploy_server_drives_the_node(lab, node):
    assert "Power is off" in lab.ipmitool(node, "chassis", "power", "status")
    lab.ipmitool(node, "chassis", "power", "on")
    qemu = procs.wait_for(lambda: lab.node_status(node)["qemu"], 30, what="%s QEMU to start" % node)
    assert procs.pid_alive(qemu)
    procs.wait_for(lambda: "iPXE" in lab.console(node), 60, what="%s to try to network-boot" % node)
    assert "Power is on" in lab.ipmitool(node, "chassis", "power", "status")

    lab.ipmitool(node, "chassis", "power", "off")
    procs.wait_for(lambda: not procs.pid_alive(qemu), 30, what="%s QEMU to stop" % node)
    assert "Power is off" in lab.ipmitool(node, "chassis", "power", "status")

    # The boot device changes what the next power-on does.
    before = len(lab.console(node))
    lab.ipmitool(node, "chassis", "bootdev", "disk")
    lab.ipmitool(node, "chassis", "power", "on")
    procs.wait_for(lambda: "Booting from Hard Disk" in lab.console(node)[before:], 60,
                   what="%s to boot from disk" % node)
    assert "Booting from ROM" not in lab.console(node)[before:].split("Booting from Hard Disk")[0]
    lab.ipmitool(node, "chassis", "power", "off")


def test_second_lab_up_changes_nothing_and_keeps_nodes_running(lab):
    lab.ipmitool("node-2", "chassis", "bootdev", "pxe")
    lab.ipmitool("node-2", "chassis", "power", "on")
    pid = procs.wait_for(lambda: lab.node_status("node-2")["qemu"], 30, what="node-2 QEMU")
    start = time.monotonic()
    res = lab.up()
    print("\nlab_up again (warm, nothing to do) took %.1f s" % (time.monotonic() - start))
    assert res.changed() == 0, "second lab_up reported changes:\n%s" % res
    assert lab.node_status("node-2")["qemu"] == pid and procs.pid_alive(pid)
    with open("/proc/%d/status" % pid) as fh:
        rss = [line for line in fh if line.startswith("VmRSS")][0].split()[1]
    print("node-2 QEMU (TCG, -m 256, iPXE loop) RSS: %d MiB" % (int(rss) // 1024))


def test_lab_status_shows_power_boot_device_and_console(lab):
    res = ansible.playbook("lab_status.yml", lab.inventory, lab.vars)
    out = res.stdout
    assert "node-2     on " in out, out
    assert "node-1     off" in out and "node-3     off" in out, out
    assert "(virtualbmc)" in out and "(ipmi_sim)" in out
    assert "iPXE" in out


def test_lab_down_leaves_nothing_behind(lab):
    lab.down()
    assert lab.leftovers() == {}
    assert lab.down().changed() == 0


def test_lab_down_cleans_up_an_interrupted_lab_up(tmp_path):
    lab = Lab(tmp_path, _lab_name()[:-1] + "i")
    argv = ["ansible-playbook", "-i", str(lab.inventory), str(REPO / "playbooks" / "lab_up.yml"),
            "-e", json.dumps(lab.vars)]
    proc = subprocess.Popen(argv, cwd=REPO, env=ansible.env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)
    try:
        # Interrupt as soon as the BMCs run: network, disks and supervisor exist, the container may not.
        procs.wait_for(lambda: (lab.dir / "supervisor.loaded").exists() or proc.poll() is not None, 300,
                       what="lab_up to start the supervisor")
        procs.kill_tree(proc.pid, 9)
        proc.wait(30)
        assert lab.leftovers(), "nothing was made before the interruption"
        lab.down()
        assert lab.leftovers() == {}
    finally:
        if proc.poll() is None:
            procs.kill_tree(proc.pid, 9)
        lab.force_clean()
