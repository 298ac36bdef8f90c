"""Virtual BMCs for the power tests and the benchmark, from the lab's own parts.

* :class:`IpmiSimFarm`: many OpenIPMI ``ipmi_sim`` BMCs in a network namespace,
  each a real IPMI-over-LAN endpoint rendered from the lab's templates, whose
  chassis control is :data:`STUB_CHASSIS` (a small sh script keeping the power
  state in a file) instead of a QEMU machine.  Faults are switched per BMC by a
  file: ``fault`` holding ``refuse-power``, ``ignore-power``, ``ignore-boot``.
* :class:`QemuNode`: one lab node (roles/lab/files/gridops_lab_node.py, a QEMU
  TCG machine) behind its own ipmi_sim, as the lab builds it.
* :class:`VirtualBmcLab`: a private libvirtd and vbmcd
  (roles/lab/files/gridops_lab_libvirt.py) with domains and their BMCs.
* :func:`run_engine` / :func:`run_module`: the power engine (in a subprocess)
  or the module (through ansible-playbook) inside the namespace, where the
  BMCs are.

Every object removes what it made in ``close()``; nothing is started in the
background: daemons are our children (see procs).
"""
import json
import os
import pathlib
import re
import socket
import subprocess
import sys
import tempfile
import time

import jinja2

from . import ansible_run, net, procs

REPO = ansible_run.REPO
LAB_FILES = REPO / "roles" / "lab" / "files"
TEMPLATES = REPO / "roles" / "lab" / "templates"
NODE_SCRIPT = LAB_FILES / "gridops_lab_node.py"
LIBVIRT_SCRIPT = LAB_FILES / "gridops_lab_libvirt.py"
DRIVER = pathlib.Path(__file__).resolve().parent / "power_driver.py"
# The node script must need nothing but the standard library: system Python.
SYSTEM_PYTHON = "/usr/bin/python3" if os.path.exists("/usr/bin/python3") else sys.executable

USER = "gridops"
PASSWORD = "bmc-secret"

STUB_CHASSIS = r"""#!/bin/sh
# chassis_control of an ipmi_sim BMC without a machine (see bmcs.py).
# Called as: <this> <dir> chassis-control get power | set power 1 | ...
# Files in <dir>: power (0|1), boot (ipmi_sim's device name), events (one
# "<epoch seconds> <request>" line per request), fault (optional).
d=$1
shift 2
fault=$(cat "$d/fault" 2>/dev/null)
op=$1
shift
case "$op" in
get)
    for p in "$@"; do
        case "$p" in
        power) echo "power:$(cat "$d/power" 2>/dev/null || echo 0)" ;;
        boot) echo "boot:$(cat "$d/boot" 2>/dev/null || echo none)" ;;
        *) echo "cannot get $p"; exit 1 ;;
        esac
    done
    ;;
set)
    while [ $# -ge 2 ]; do
        echo "$(date +%s.%N) set $1 $2" >> "$d/events"
        case "$1:$fault" in
        power:refuse-power|reset:refuse-power|shutdown:refuse-power) echo "refused"; exit 1 ;;
        power:ignore-power|reset:ignore-power|shutdown:ignore-power|boot:ignore-boot) ;;
        power:*) echo "$2" > "$d/power" ;;
        shutdown:*) echo 0 > "$d/power" ;;
        boot:*) echo "$2" > "$d/boot" ;;
        esac
        shift 2
    done
    ;;
esac
exit 0
"""


def _render(name, **variables):
    env = jinja2.Environment(loader=jinja2.FileSystemLoader(str(TEMPLATES)), undefined=jinja2.StrictUndefined,
                             trim_blocks=True, keep_trailing_newline=True)
    return env.get_template(name).render(**variables)


def write_ipmi_sim_config(bmc_dir, node_dir, address, port, user, password, script, interpreter):
    """lan.conf and ipmi_sim.emu from the lab's templates; return the ipmi_sim argv."""
    bmc_dir = pathlib.Path(bmc_dir)
    (bmc_dir / "state").mkdir(parents=True, exist_ok=True)
    variables = dict(node_dir=str(node_dir), bmc_address=address, bmc_port=port, bmc_user=user,
                     bmc_password=password, node_script=str(script), python_interpreter=str(interpreter))
    lan = bmc_dir / "lan.conf"
    lan.write_text(_render("ipmi_sim_lan.conf.j2", **variables))
    lan.chmod(0o600)
    (bmc_dir / "ipmi_sim.emu").write_text(_render("ipmi_sim.emu.j2", **variables))
    return ["ipmi_sim", "-n", "-c", str(lan), "-f", str(bmc_dir / "ipmi_sim.emu"), "-s", str(bmc_dir / "state")]


def udp_listeners(netns):
    """{(address, port)} of the UDP sockets bound in netns."""
    out = procs.run(["ss", "-Hnlu"], netns=netns).stdout
    found = set()
    for line in out.splitlines():
        fields = line.split()
        if len(fields) >= 4 and ":" in fields[3]:
            addr, port = fields[3].rsplit(":", 1)
            found.add((addr.strip("[]"), int(port)))
    return found


def wait_listening(netns, endpoints, timeout=20, daemons=()):
    want = set(endpoints)

    def ready():
        for d in daemons:
            if not d.alive():
                raise RuntimeError("BMC daemon exited: %s" % d.log()[-2000:])
        return want <= udp_listeners(netns)

    procs.wait_for(ready, timeout, interval=0.05, what="%d BMCs to listen" % len(want))


def ipmitool(netns, address, *args, port=623, user=USER, password=PASSWORD, timeout=60):
    """ipmitool -I lanplus -C 3 inside netns; returns the CompletedProcess (never raises)."""
    argv = ["ipmitool", "-I", "lanplus", "-C", "3", "-H", address, "-p", str(port), "-U", user, "-P", password]
    return procs.run(argv + [str(a) for a in args], netns=netns, check=False, timeout=timeout)


def ipmitool_power(netns, address, **kw):
    res = ipmitool(netns, address, "chassis", "power", "status", **kw)
    match = re.search(r"Chassis Power is (on|off)", res.stdout)
    if not match:
        raise AssertionError("ipmitool power status at %s: %s %s" % (address, res.stdout, res.stderr))
    return match.group(1)


def ipmitool_bootdev(netns, address, **kw):
    """The boot device selector ipmitool reads (its own words, e.g. 'Force PXE')."""
    res = ipmitool(netns, address, "chassis", "bootparam", "get", "5", **kw)
    match = re.search(r"Boot Device Selector : (.*)", res.stdout)
    if not match:
        raise AssertionError("ipmitool bootparam at %s: %s %s" % (address, res.stdout, res.stderr))
    return match.group(1).strip()


class IpmiSimFarm:
    """`count` ipmi_sim BMCs with the stub chassis, on addresses of the namespace's loopback.

    Addresses are 10.214.<i // 200>.<10 + i % 200>/32 on `lo` inside the
    namespace (private, and nothing leaves the namespace).
    """

    def __init__(self, netns, base_dir, count, user=USER, password=PASSWORD, port=623, prefix="bmc"):
        self.netns = netns
        self.base = pathlib.Path(base_dir)
        self.user, self.password, self.port = user, password, port
        self.script = self.base / "stub-chassis.sh"
        self.bmcs = []
        self.daemons = []
        for i in range(count):
            address = "10.214.%d.%d" % (i // 200, 10 + i % 200)
            self.bmcs.append({"name": "%s-%03d" % (prefix, i), "address": address,
                              "dir": self.base / ("%s-%03d" % (prefix, i))})

    def start(self, timeout=30):
        self.base.mkdir(parents=True, exist_ok=True)
        self.script.write_text(STUB_CHASSIS)
        self.script.chmod(0o755)
        try:
            for bmc in self.bmcs:
                net.ip("addr", "add", bmc["address"] + "/32", "dev", "lo", netns=self.netns)
                bmc["dir"].mkdir(parents=True, exist_ok=True)
                argv = write_ipmi_sim_config(bmc["dir"], bmc["dir"], bmc["address"], self.port, self.user,
                                             self.password, self.script, "/bin/sh")
                self.daemons.append(procs.Daemon(argv, bmc["dir"] / "ipmi_sim.log", netns=self.netns).start())
            wait_listening(self.netns, [(b["address"], self.port) for b in self.bmcs], timeout, self.daemons)
        except BaseException:
            self.close()
            raise
        return self

    def nodes(self, **overrides):
        """The power module's `nodes` list for every BMC (credentials included)."""
        out = []
        for bmc in self.bmcs:
            node = {"name": bmc["name"], "bmc_address": bmc["address"], "bmc_port": self.port,
                    "bmc_user": self.user, "bmc_password": self.password}
            node.update(overrides.get(bmc["name"], {}))
            out.append(node)
        return out

    def by_name(self, name):
        return next(b for b in self.bmcs if b["name"] == name)

    def power(self, name):
        path = self.by_name(name)["dir"] / "power"
        return "on" if path.exists() and path.read_text().strip() == "1" else "off"

    def set_power(self, name, state):
        (self.by_name(name)["dir"] / "power").write_text("1\n" if state == "on" else "0\n")

    def events(self, name):
        """[(epoch seconds, 'set power 1'), ...] as the chassis script saw them."""
        path = self.by_name(name)["dir"] / "events"
        if not path.exists():
            return []
        out = []
        for line in path.read_text().splitlines():
            stamp, what = line.split(" ", 1)
            out.append((float(stamp), what))
        return out

    def fault(self, name, fault=None):
        path = self.by_name(name)["dir"] / "fault"
        if fault:
            path.write_text(fault + "\n")
        elif path.exists():
            path.unlink()

    def stop_bmc(self, name):
        index = self.bmcs.index(self.by_name(name))
        self.daemons[index].stop()

    def close(self):
        for d in self.daemons:
            d.stop()
        for bmc in self.bmcs:
            net.ip("addr", "del", bmc["address"] + "/32", "dev", "lo", netns=self.netns, check=False)


class QemuNode:
    """A lab node (QEMU TCG, network boot first) and its ipmi_sim BMC on a bridge address."""

    def __init__(self, netns, bridge, tap, parent_dir, mac, bmc_address, memory_mb=256, port=623,
                 user=USER, password=PASSWORD):
        self.netns, self.bridge, self.tap = netns, bridge, tap
        self.name = net.unique_name("gpn", maxlen=32)
        # <parent_dir>/<name>: an operator's command template can find it from {name}.
        self.dir = pathlib.Path(parent_dir) / self.name
        self.mac, self.bmc_address, self.port = mac, bmc_address, port
        self.user, self.password = user, password
        self.memory_mb = memory_mb
        self.console_log = self.dir / "console.log"
        self.bmc = None
        self._console_offset = 0

    def start(self):
        self.dir.mkdir(parents=True, exist_ok=True)
        disk = self.dir / "disk.img"
        with open(disk, "wb") as fh:
            fh.truncate(64 << 20)  # empty: "Boot failed: not a bootable disk"
        (self.dir / "node.json").write_text(json.dumps({
            "name": self.name, "mac": self.mac, "memory_mb": self.memory_mb, "cpus": 1, "disk": str(disk),
            "tap": self.tap.name, "netns": self.netns.name, "console_log": str(self.console_log),
            "default_boot": "network"}))
        net.ip("addr", "add", "%s/24" % self.bmc_address, "dev", self.bridge.name, netns=self.netns.name)
        self.start_bmc()
        return self

    def start_bmc(self, password=None):
        argv = write_ipmi_sim_config(self.dir / "bmc", self.dir, self.bmc_address, self.port, self.user,
                                     password or self.password, NODE_SCRIPT, SYSTEM_PYTHON)
        self.bmc = procs.Daemon(argv, self.dir / "bmc" / "ipmi_sim.log", netns=self.netns.name).start()
        wait_listening(self.netns.name, [(self.bmc_address, self.port)], 15, [self.bmc])

    def stop_bmc(self):
        if self.bmc is not None:
            self.bmc.stop()
            self.bmc = None

    def node(self, **fields):
        node = {"name": self.name, "bmc_address": self.bmc_address, "bmc_port": self.port,
                "bmc_user": self.user, "bmc_password": self.password}
        node.update(fields)
        return node

    def cli(self, *args, check=True):
        return procs.run([SYSTEM_PYTHON, str(NODE_SCRIPT), str(self.dir)] + [str(a) for a in args],
                         check=check, timeout=60)

    def status(self):
        procs.reap_orphans()
        return json.loads(self.cli("status", "--json", "--lines", "0").stdout)

    def qemu_pid(self):
        return self.status()["pid"]

    def mark_console(self):
        self._console_offset = self.console_log.stat().st_size if self.console_log.exists() else 0

    def console(self):
        if not self.console_log.exists():
            return ""
        with open(self.console_log, "rb") as fh:
            fh.seek(self._console_offset)
            return fh.read().decode(errors="replace")

    def wait_console(self, pattern, timeout=60):
        def found():
            procs.reap_orphans()
            return re.search(pattern, self.console())
        return procs.wait_for(found, timeout, interval=0.1, what="%r on the console of %s" % (pattern, self.name))

    def first_boot_device(self, timeout=60):
        """What SeaBIOS tried first since mark_console(): 'ROM' (iPXE), 'Hard Disk', 'DVD/CD'."""
        return self.wait_console(r"Booting from ([A-Za-z/]+(?: Disk)?)", timeout).group(1)

    def close(self):
        self.stop_bmc()
        self.cli("power", "off", check=False)
        pidfile = str(self.dir / "qemu.pid")
        for entry in os.listdir("/proc"):
            if entry.isdigit():
                try:
                    with open("/proc/%s/cmdline" % entry, "rb") as fh:
                        argv = fh.read().decode(errors="replace").split("\0")
                except OSError:
                    continue
                if pidfile in argv:
                    procs.kill_tree(int(entry))
        procs.reap_orphans()
        net.ip("addr", "del", "%s/24" % self.bmc_address, "dev", self.bridge.name, netns=self.netns.name,
               check=False)


def _free_port(netns):
    """A TCP port free on the namespace's loopback (for vbmcd's control socket)."""
    used = set()
    out = procs.run(["ss", "-Hntl"], netns=netns).stdout
    for line in out.splitlines():
        fields = line.split()
        if len(fields) >= 4:
            used.add(int(fields[3].rsplit(":", 1)[1]))
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    return port if port not in used else port + 1


class VirtualBmcLab:
    """A private libvirtd and vbmcd in a namespace; domains with a BMC each."""

    def __init__(self, netns, bridge, base_dir):
        self.netns, self.bridge = netns, bridge
        self.state = pathlib.Path(base_dir) / "lv"
        self.libvirtd = self.vbmcd = None
        self.domains = {}
        self.server_port = None

    def start(self):
        self.libvirtd = procs.Daemon([sys.executable, str(LIBVIRT_SCRIPT), "libvirtd", "--state-dir",
                                      str(self.state), "--netns", self.netns.name],
                                     self.state.parent / "libvirtd.log").start()
        try:
            self.script("wait", "--state-dir", self.state, "--timeout", 60)
            self.server_port = _free_port(self.netns.name)
            self.vbmcd = procs.Daemon([sys.executable, str(LIBVIRT_SCRIPT), "vbmcd", "--state-dir", str(self.state),
                                       "--netns", self.netns.name, "--server-port", str(self.server_port)],
                                      self.state.parent / "vbmcd.log").start()
        except BaseException:
            self.close()
            raise
        return self

    def script(self, *args, timeout=120):
        return procs.run([sys.executable, str(LIBVIRT_SCRIPT)] + [str(a) for a in args], timeout=timeout)

    def add(self, name, mac, bmc_address, memory_mb=256, port=623, user=USER, password=PASSWORD):
        base = self.state.parent / name
        base.mkdir(parents=True, exist_ok=True)
        disk = base / "disk.img"
        with open(disk, "wb") as fh:
            fh.truncate(64 << 20)
        node = {"name": name, "mac": mac, "memory_mb": memory_mb, "cpus": 1, "disk": str(disk),
                "bridge": self.bridge.name, "console_log": str(base / "console.log"), "default_boot": "network"}
        (base / "node.json").write_text(json.dumps(node))
        self.script("define", "--state-dir", self.state, "--node-json", base / "node.json")
        net.ip("addr", "add", "%s/24" % bmc_address, "dev", self.bridge.name, netns=self.netns.name)
        secret = base / "bmc.pass"
        secret.write_text(password + "\n")
        secret.chmod(0o600)
        self.script("add-bmc", "--state-dir", self.state, "--domain", name, "--address", bmc_address,
                    "--port", port, "--user", user, "--password-file", secret, "--server-port", self.server_port)
        self.domains[name] = dict(node, bmc_address=bmc_address, port=port, user=user, password=password,
                                  console_offset=0)
        # vbmcd starts new BMCs on its periodic sync (every 3 s).
        procs.wait_for(lambda: ipmitool(self.netns.name, bmc_address, "chassis", "power", "status", port=port,
                                        user=user, password=password, timeout=10).returncode == 0,
                       30, interval=0.5, what="virtualbmc of %s to answer" % name)
        return self.node(name)

    def node(self, name, **fields):
        d = self.domains[name]
        node = {"name": name, "bmc_address": d["bmc_address"], "bmc_port": d["port"], "bmc_user": d["user"],
                "bmc_password": d["password"]}
        node.update(fields)
        return node

    def status(self, name):
        return json.loads(self.script("status", "--state-dir", self.state, "--domain", name, "--json",
                                      "--lines", "0").stdout)

    def qemu_pid(self, name):
        return self.status(name)["qemu_pid"]

    def mark_console(self, name):
        path = pathlib.Path(self.domains[name]["console_log"])
        self.domains[name]["console_offset"] = path.stat().st_size if path.exists() else 0

    def console(self, name):
        path = pathlib.Path(self.domains[name]["console_log"])
        if not path.exists():
            return ""
        with open(path, "rb") as fh:
            fh.seek(self.domains[name]["console_offset"])
            return fh.read().decode(errors="replace")

    def first_boot_device(self, name, timeout=60):
        match = procs.wait_for(lambda: re.search(r"Booting from ([A-Za-z/]+(?: Disk)?)", self.console(name)),
                               timeout, interval=0.2, what="a boot device on the console of %s" % name)
        return match.group(1)

    def close(self):
        if self.libvirtd is not None and self.libvirtd.alive():
            uri = "qemu+unix:///system?socket=%s" % (self.state / "run" / "libvirt-sock")
            for name in self.domains:
                procs.run(["virsh", "-q", "-c", uri, "destroy", name], check=False, timeout=60)
        if self.vbmcd is not None:
            self.vbmcd.stop()
        if self.libvirtd is not None:
            self.libvirtd.stop()
        for d in self.domains.values():
            net.ip("addr", "del", "%s/24" % d["bmc_address"], "dev", self.bridge.name, netns=self.netns.name,
                   check=False)
        procs.reap_orphans()


# -- running the engine and the module where the BMCs are ----------------------------


def run_engine(netns, nodes, window=25, spacing=0.0, proc_timeout=600, **request):
    """gridops.metal's power engine (plugins/module_utils/_power.py) run inside netns.

    Returns {"results": [...], "elapsed": seconds inside the engine}.
    """
    payload = json.dumps({"nodes": nodes, "request": request, "window": window, "spacing": spacing})
    res = procs.run([sys.executable, str(DRIVER)], netns=netns, input=payload, timeout=proc_timeout, check=False)
    if res.returncode != 0:
        raise AssertionError("power driver failed (%d): %s" % (res.returncode, res.stderr[-3000:]))
    return json.loads(res.stdout)


def run_module(netns, args, check_mode=False, diff=False, timeout=900, extra_env=None):
    """One gridops.metal.power task on localhost inside netns, through ansible-playbook.

    Returns (task_result, wall_seconds); task_result is the registered result
    (with 'failed' when the task failed) plus '_stdout', the playbook's output.
    """
    results, wall, stdout = run_module_tasks(netns, [args], check_mode, diff, timeout, extra_env)
    results[0]["_stdout"] = stdout
    return results[0], wall


def run_module_tasks(netns, tasks, check_mode=False, diff=False, timeout=900, extra_env=None):
    """Several gridops.metal.power tasks (their args) in one ansible-playbook run.

    Returns ([task_result, ...], wall_seconds, stdout); a failing task does not
    stop the next.
    """
    with tempfile.TemporaryDirectory(prefix="gridops-power-") as tmp:
        tmp = pathlib.Path(tmp)
        out_file = tmp / "result.json"
        playbook = tmp / "power.yml"
        # JSON is YAML: the arguments go in as they are (they hold passwords: mode 0600).
        text = "- hosts: localhost\n  gather_facts: false\n  tasks:\n"
        for i, args in enumerate(tasks):
            text += ("    - name: Power %d\n"
                     "      gridops.metal.power: %s\n"
                     "      register: power_%d\n"
                     "      ignore_errors: true\n" % (i, json.dumps(args), i))
        registered = ", ".join("power_%d" % i for i in range(len(tasks)))
        text += ("    - name: Keep the results\n"
                 "      ansible.builtin.copy:\n"
                 "        content: \"{{ [%s] | to_json }}\"\n"
                 "        dest: %s\n"
                 "        mode: \"0600\"\n"
                 "      check_mode: false\n"
                 "      diff: false\n") % (registered, json.dumps(str(out_file)))
        playbook.write_text(text)
        playbook.chmod(0o600)
        argv = ["ansible-playbook", "-i", "localhost,", "-c", "local", str(playbook),
                "-e", json.dumps({"ansible_python_interpreter": sys.executable})]
        if check_mode:
            argv.append("--check")
        if diff:
            argv.append("--diff")
        env = ansible_run.env(**(extra_env or {}))
        start = time.monotonic()
        proc = subprocess.run(procs.netns_argv(netns, argv), cwd=REPO, env=env, capture_output=True,
                              text=True, timeout=timeout, check=False)
        wall = time.monotonic() - start
        if not out_file.exists():
            raise AssertionError("ansible-playbook gave no result (rc %d)\n%s\n%s"
                                 % (proc.returncode, proc.stdout[-4000:], proc.stderr[-3000:]))
        return json.loads(out_file.read_text()), wall, proc.stdout
