"""The lab's virtual BMC: OpenIPMI ipmi_sim whose chassis control is
roles/lab/files/gridops_lab_node.py, driving a QEMU (TCG) node over IPMI-over-LAN.

Everything runs in a fresh namespace: a bridge, the node's tap, the BMC on a
secondary bridge address, ipmi_sim in the foreground as our child.  QEMU
daemonizes, so it is re-parented to this process (a child subreaper) and reaped
here.  Measured figures are printed (run with -s to see them).

No DHCP server answers: "network boot" means iPXE trying (its banner and the
"Configuring (net0 <mac>)" DHCP attempt on the serial console).
"""
import importlib.util
import json
import os
import pathlib
import re
import statistics
import subprocess
import sys
import time

import jinja2
import pytest

from gridops_test import net, procs

REPO = pathlib.Path(__file__).resolve().parents[2]
SCRIPT = REPO / "roles" / "lab" / "files" / "gridops_lab_node.py"
TEMPLATES = REPO / "roles" / "lab" / "templates"
# The system Python: the node script must need nothing but the standard library.
PYTHON = "/usr/bin/python3" if os.path.exists("/usr/bin/python3") else sys.executable

BMC_ADDRESS = "10.213.0.101"
BMC_PORT = 623
BMC_USER = "gridops"
BMC_PASSWORD = "lab-secret"
MAC = "52:54:00:21:30:01"
BOOT_TIMEOUT = 20


def render(name, **variables):
    # Ansible renders role templates with trim_blocks; do the same.
    env = jinja2.Environment(loader=jinja2.FileSystemLoader(str(TEMPLATES)),
                             undefined=jinja2.StrictUndefined, trim_blocks=True,
                             keep_trailing_newline=True)
    return env.get_template(name).render(**variables)


def qemu_pids(node_dir):
    """Live (non-zombie) QEMU processes started for node_dir, found through /proc."""
    pidfile = str(pathlib.Path(node_dir) / "qemu.pid")
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open("/proc/%s/cmdline" % entry, "rb") as fh:
                argv = fh.read().decode(errors="replace").split("\0")
        except OSError:
            continue
        if argv and os.path.basename(argv[0]).startswith("qemu-system") and pidfile in argv \
                and procs.pid_alive(int(entry)):
            found.append(int(entry))
    return found


def cmdline(pid):
    with open("/proc/%d/cmdline" % pid, "rb") as fh:
        return fh.read().decode().split("\0")


def boot_option(pid):
    argv = cmdline(pid)
    return argv[argv.index("-boot") + 1]


class Console:
    """The node's serial log, read from an offset (each power-on appends)."""

    def __init__(self, path):
        self.path = pathlib.Path(path)
        self.offset = 0

    def mark(self):
        self.offset = self.path.stat().st_size if self.path.exists() else 0

    def text(self):
        if not self.path.exists():
            return ""
        with open(self.path, "rb") as fh:
            fh.seek(self.offset)
            return fh.read().decode(errors="replace")

    def wait_for(self, pattern, timeout=BOOT_TIMEOUT):
        def found():
            procs.reap_orphans()
            return re.search(pattern, self.text())
        return procs.wait_for(found, timeout, interval=0.05, what="console text %r" % pattern)

    def first_boot_device(self):
        """What SeaBIOS tried first since mark(): 'ROM' (iPXE), 'Hard Disk', 'DVD/CD'."""
        return self.wait_for(r"Booting from ([A-Za-z/]+(?: Disk)?)").group(1)


class Ipmi:
    """ipmitool against the BMC, inside the namespace; records round-trip times."""

    def __init__(self, netns):
        self.netns = netns
        self.rtt = {}

    def __call__(self, *args, check=True):
        argv = ["ipmitool", "-I", "lanplus", "-C", "3", "-H", BMC_ADDRESS, "-p", str(BMC_PORT),
                "-U", BMC_USER, "-P", BMC_PASSWORD] + list(args)
        start = time.monotonic()
        res = procs.run(argv, netns=self.netns, check=False, timeout=60)
        self.rtt.setdefault(" ".join(args), []).append(time.monotonic() - start)
        if check and res.returncode != 0:
            raise AssertionError("ipmitool %s failed (%d): %s%s"
                                 % (" ".join(args), res.returncode, res.stdout, res.stderr))
        return res

    def power(self):
        out = self("chassis", "power", "status").stdout
        return re.search(r"Chassis Power is (on|off)", out).group(1)


def node_cli(node_dir, *args, check=True):
    res = subprocess.run([PYTHON, str(SCRIPT), str(node_dir)] + list(args),
                         capture_output=True, text=True, timeout=60, check=False)
    if check and res.returncode != 0:
        raise AssertionError("node script %s failed (%d): %s" % (args, res.returncode, res.stderr))
    return res


def wait_new_pid(node_dir, old=None, timeout=10):
    def new():
        procs.reap_orphans()
        pids = [p for p in qemu_pids(node_dir) if p != old]
        return pids[0] if pids else None
    return procs.wait_for(new, timeout, interval=0.05, what="a new QEMU for %s" % node_dir)


def wait_gone(node_dir, timeout=5):
    def gone():
        procs.reap_orphans()
        return not qemu_pids(node_dir)
    procs.wait_for(gone, timeout, interval=0.05, what="QEMU of %s to exit" % node_dir)


@pytest.mark.root
@pytest.mark.qemu
@pytest.mark.slow
def test_ipmi_sim_drives_a_qemu_node(netns, bridge, tap_factory, daemon_factory, tmp_path):
    tap = tap_factory(bridge)
    net.ip("addr", "add", "%s/24" % BMC_ADDRESS, "dev", bridge.name, netns=netns.name)

    node_dir = tmp_path / "node"
    bmc_dir = node_dir / "bmc"
    (bmc_dir / "state").mkdir(parents=True)
    disk = node_dir / "disk.img"
    with open(disk, "wb") as fh:
        fh.truncate(1 << 30)  # sparse, empty: nothing to boot from
    console_log = node_dir / "console.log"
    (node_dir / "node.json").write_text(json.dumps({
        "name": net.unique_name("gnode", maxlen=32), "mac": MAC, "memory_mb": 1024, "cpus": 1,
        "disk": str(disk), "tap": tap.name, "netns": netns.name,
        "console_log": str(console_log), "default_boot": "network",
    }))
    variables = dict(node_dir=str(node_dir), bmc_address=BMC_ADDRESS, bmc_port=BMC_PORT,
                     bmc_user=BMC_USER, bmc_password=BMC_PASSWORD, node_script=str(SCRIPT),
                     python_interpreter=PYTHON)
    (bmc_dir / "lan.conf").write_text(render("ipmi_sim_lan.conf.j2", **variables))
    (bmc_dir / "ipmi_sim.emu").write_text(render("ipmi_sim.emu.j2", **variables))

    ipmi = Ipmi(netns.name)
    console = Console(console_log)
    measured = {}
    bmc = None
    try:
        bmc = daemon_factory(["ipmi_sim", "-n", "-c", str(bmc_dir / "lan.conf"),
                              "-f", str(bmc_dir / "ipmi_sim.emu"), "-s", str(bmc_dir / "state")],
                             netns=netns.name, name="ipmi_sim")
        procs.wait_for(lambda: bmc.alive() and ipmi("chassis", "power", "status", check=False).returncode == 0,
                       10, what="ipmi_sim to answer: %s" % bmc.log())
        assert ipmi.power() == "off"
        assert not qemu_pids(node_dir)

        # -- power on: default boot = network first ------------------------
        console.mark()
        t0 = time.monotonic()
        ipmi("chassis", "power", "on")
        pid = wait_new_pid(node_dir)
        assert os.stat("/proc/%d/ns/net" % pid).st_ino == os.stat(netns.path).st_ino
        assert boot_option(pid) == "order=nc"
        console.wait_for(r"iPXE")
        measured["power on -> iPXE banner on console"] = time.monotonic() - t0
        console.wait_for(r"Configuring \(net0 %s\)" % MAC)
        measured["power on -> iPXE DHCP attempt (Configuring net0)"] = time.monotonic() - t0
        assert console.first_boot_device() == "ROM"
        assert ipmi.power() == "on"
        status = json.loads(node_cli(node_dir, "status", "--json", "--lines", "50").stdout)
        assert status["power"] == "on" and status["pid"] == pid
        assert status["last_boot_device"] == "pxe" and status["next_boot_device"] == "pxe"
        assert any("iPXE" in line for line in status["console_tail"])

        # -- soft off: ACPI power button; SeaBIOS/iPXE have no ACPI OS ------
        ipmi("chassis", "power", "soft")
        time.sleep(3)
        assert ipmi.power() == "on" and qemu_pids(node_dir) == [pid]
        assert "ACPI power button" in (node_dir / "node.log").read_text()
        with open("/proc/%d/status" % pid) as fh:
            rss = {k: int(v.split()[0]) for k, v in (line.split(":", 1) for line in fh)
                   if k in ("VmRSS", "VmHWM")}
        measured["QEMU VmRSS (MiB), idle PXE loop, -m 1024, %.0f s after power on"
                 % (time.monotonic() - t0)] = rss["VmRSS"] / 1024.0
        measured["QEMU VmHWM (MiB)"] = rss["VmHWM"] / 1024.0

        # -- hard off: synchronous, the process is gone when ipmitool returns
        ipmi("chassis", "power", "off")
        procs.reap_orphans()
        assert not qemu_pids(node_dir)
        assert ipmi.power() == "off"
        assert node_cli(node_dir, "power", "status").stdout.strip() == "off"

        # -- one-time disk: used by the next power-on only ------------------
        ipmi("chassis", "bootdev", "disk")
        assert "Force Boot from default Hard-Drive" in ipmi("chassis", "bootparam", "get", "5").stdout
        assert "one_time=disk" in node_cli(node_dir, "bootdev", "get").stdout
        console.mark()
        ipmi("chassis", "power", "on")
        pid = wait_new_pid(node_dir)
        assert boot_option(pid) == "once=cn,order=nc"
        assert console.first_boot_device() == "Hard Disk"
        console.wait_for(r"Boot failed: not a bootable disk")
        bootdev = node_cli(node_dir, "bootdev", "get").stdout
        assert "one_time=none" in bootdev and "next=pxe" in bootdev
        assert json.loads(node_cli(node_dir, "status", "--json").stdout)["last_boot_device"] == "disk"
        ipmi("chassis", "power", "off")
        wait_gone(node_dir)

        console.mark()
        ipmi("chassis", "power", "on")
        pid = wait_new_pid(node_dir)
        assert boot_option(pid) == "order=nc"
        assert console.first_boot_device() == "ROM"

        # -- persistent disk (node script) + one-time pxe (IPMI), then cycle -
        node_cli(node_dir, "bootdev", "set", "disk", "--persistent")
        ipmi("chassis", "bootdev", "pxe")
        assert "Force PXE" in ipmi("chassis", "bootparam", "get", "5").stdout
        console.mark()
        ipmi("chassis", "power", "cycle")
        # ipmi_sim powers off, then polls every second and powers on again.
        pid = wait_new_pid(node_dir, old=pid)
        assert boot_option(pid) == "once=nc,order=cn"
        assert console.first_boot_device() == "ROM"
        assert ipmi.power() == "on"

        # -- reset: a new boot, the one-time device is spent: disk again ----
        console.mark()
        ipmi("chassis", "power", "reset")
        new_pid = wait_new_pid(node_dir, old=pid)
        assert boot_option(new_pid) == "order=cn"
        assert console.first_boot_device() == "Hard Disk"
        assert ipmi.power() == "on"
        pid = new_pid

        # -- cdrom (an empty drive: SeaBIOS tries it, falls through) and bios
        ipmi("chassis", "bootdev", "cdrom")
        console.mark()
        ipmi("chassis", "power", "reset")
        pid = wait_new_pid(node_dir, old=pid)
        assert boot_option(pid) == "once=dnc,order=cn"
        assert console.first_boot_device() == "DVD/CD"
        ipmi("chassis", "bootdev", "bios")
        console.mark()
        ipmi("chassis", "power", "reset")
        pid = wait_new_pid(node_dir, old=pid)
        assert boot_option(pid) == "order=cn,menu=on,splash-time=30000"
        console.wait_for(r"Press ESC for boot menu")

        # -- what ipmi_sim cannot pass on is refused, not misread -----------
        # (ipmitool exits 0 here all the same: only its stderr tells.)
        refused = ipmi("chassis", "bootdev", "safe", check=False)
        assert "failed" in refused.stderr
        assert "persistent=disk" in node_cli(node_dir, "bootdev", "get").stdout

        ipmi("chassis", "power", "off")
        wait_gone(node_dir)
        assert ipmi.power() == "off"
        assert bmc.alive(), bmc.log()
    finally:
        # BMC first: a pending `power cycle` must not start QEMU again.
        if bmc is not None:
            bmc.stop()
        node_cli(node_dir, "power", "off", check=False)
        for leftover in qemu_pids(node_dir):
            procs.kill_tree(leftover)
        procs.reap_orphans()
        net.ip("addr", "del", "%s/24" % BMC_ADDRESS, "dev", bridge.name, netns=netns.name, check=False)

    print()
    for what, value in measured.items():
        print("MEASURED %s: %.2f" % (what, value))
    for command, times in sorted(ipmi.rtt.items()):
        print("MEASURED ipmitool %-28s n=%-2d median %.3f s, max %.3f s"
              % (command, len(times), statistics.median(times), max(times)))


@pytest.mark.parametrize("field, value", [
    ("memory_mb", "1024"), ("mac", "52:54:00:zz:00:01"), ("cpus", True),
    ("disk", "relative/disk.img"), ("tap", "a-name-far-too-long"), ("default_boot", "floppy"),
])
def test_bad_node_json_names_the_field(tmp_path, field, value):
    config = {"name": "node-1", "mac": MAC, "memory_mb": 1024, "cpus": 1,
              "disk": str(tmp_path / "disk.img"), "tap": "tap0", "netns": "lab",
              "console_log": str(tmp_path / "console.log"), "default_boot": "network"}
    config[field] = value
    (tmp_path / "node.json").write_text(json.dumps(config))
    res = node_cli(tmp_path, "power", "status", check=False)
    assert res.returncode == 2
    assert "field %r" % field in res.stderr


def test_missing_node_json_field(tmp_path):
    (tmp_path / "node.json").write_text(json.dumps({"name": "node-1"}))
    res = node_cli(tmp_path, "status", check=False)
    assert res.returncode == 2 and "field 'mac' is missing" in res.stderr


def load_node_module():
    spec = importlib.util.spec_from_file_location("gridops_lab_node", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("default_boot, one_time, persistent, expected", [
    ("network", None, None, "order=nc"),
    ("disk", None, None, "order=cn"),
    ("network", "disk", None, "once=cn,order=nc"),
    ("network", "pxe", "disk", "once=nc,order=cn"),
    ("network", "cdrom", None, "once=dnc,order=nc"),
    ("network", None, "cdrom", "order=dnc"),
    ("disk", "bios", None, "order=cn,menu=on,splash-time=30000"),
])
def test_boot_arguments(tmp_path, default_boot, one_time, persistent, expected):
    """The module imports; -boot follows one-time, then persistent, then default."""
    (tmp_path / "node.json").write_text(json.dumps({
        "name": "node-1", "mac": MAC, "memory_mb": 1024, "cpus": 1,
        "disk": str(tmp_path / "disk.img"), "tap": "tap0", "netns": "lab",
        "console_log": str(tmp_path / "console.log"), "default_boot": default_boot}))
    node = load_node_module().Node(str(tmp_path))
    state = {"one_time_boot": one_time, "persistent_boot": persistent, "last_boot": None}
    argv, device, _source = node.qemu_argv(state)
    assert argv[argv.index("-boot") + 1] == expected
    assert device == (one_time or persistent or {"network": "pxe"}.get(default_boot, default_boot))


def test_chassis_control_protocol_without_qemu(tmp_path):
    """ipmi_sim's get/set calls, answered from state alone (the node is off)."""
    (tmp_path / "node.json").write_text(json.dumps({
        "name": "node-1", "mac": MAC, "memory_mb": 1024, "cpus": 1,
        "disk": str(tmp_path / "disk.img"), "tap": "tap0", "netns": "lab",
        "console_log": str(tmp_path / "console.log")}))
    assert node_cli(tmp_path, "chassis-control", "get", "power", "boot").stdout == "power:0\nboot:none\n"
    assert node_cli(tmp_path, "chassis-control", "set", "boot", "default").stdout == ""
    assert node_cli(tmp_path, "chassis-control", "get", "boot").stdout == "boot:default\n"
    assert "one_time=disk" in node_cli(tmp_path, "bootdev", "get").stdout
    node_cli(tmp_path, "chassis-control", "set", "boot", "none")
    node_cli(tmp_path, "bootdev", "set", "cdrom", "--persistent")
    assert node_cli(tmp_path, "chassis-control", "get", "boot").stdout == "boot:cdrom\n"
    assert node_cli(tmp_path, "chassis-control", "set", "power", "0").returncode == 0
    assert node_cli(tmp_path, "chassis-control", "set", "shutdown", "1").returncode == 0
    assert node_cli(tmp_path, "chassis-control", "set", "identify", "15 0").returncode == 0
    bad = node_cli(tmp_path, "chassis-control", "set", "reset", "1", check=False)
    assert bad.returncode == 1 and "powered off" in bad.stdout
    assert node_cli(tmp_path, "chassis-control", "get", "colour", check=False).returncode == 1
