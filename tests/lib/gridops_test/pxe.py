"""A PXE test bed: the lab's topology, in small, around a deploy server container.

    fabric netns:  bridge  <- tap (one per QEMU guest), optional extra addresses
                     |
                   veth
                     |
    server netns:  eth0 (IPv4 + IPv6)  <- the deploy server container (systemd, podman)

The topology is the lab's own (``_lab.network_present``), so the role sees an
``eth0`` exactly as in the lab; nothing is routed to or from the host and every
name carries the run's suffix.  :class:`PxeBed` also writes an inventory and
runs the role's playbook; :class:`Guest` is a network-booting QEMU (TCG) whose
serial console (SeaBIOS and iPXE mirrored there through sercon) is a file.
Everything is removed by ``close()``, which the fixtures call in ``finally``.
"""
import contextlib
import json
import os
import pathlib
import re
import subprocess
import time

import yaml

from . import ansible_run as ansible, artifacts, net, procs

READY = re.compile(r"GRIDOPS-INITRAMFS-READY ip=(\S+)")
ANSI_ESCAPE = re.compile(r"\x1b(\[[0-9;?]*[A-Za-z]|c)")
# Milestones of a network boot on the serial console, in order: (name, pattern).
BOOT_PHASES = (
    ("dhcp", r"Configuring \(net0"),                                  # iPXE (the NIC's ROM) asks DHCP
    ("nbp", r"PXELINUX \d|boot\.ipxe : \d+ bytes"),                  # the boot program: pxelinux.0 runs / boot.ipxe read
    ("userspace", r"GRIDOPS-INITRAMFS-START"),                        # the ramdisk's /init runs
    ("ready", READY.pattern),                                         # ... and has its address
)


def _runner(argv):
    res = subprocess.run(argv, capture_output=True, text=True, check=False)
    return res.returncode, res.stdout, res.stderr


def _lab_engine():
    artifacts.engine()      # installs the collection loader when pytest did not
    from ansible_collections.gridops.metal.plugins.module_utils import _lab
    return _lab


def podman(*args, check=True, timeout=120):
    res = subprocess.run(["podman"] + list(args), env=ansible.env(), capture_output=True, text=True,
                         timeout=timeout, check=False)
    if check and res.returncode != 0:
        raise AssertionError("podman %s failed (%d): %s%s" % (" ".join(args), res.returncode, res.stdout, res.stderr))
    return res


class PxeBed:
    """Network, deploy server container and inventory for the pxe_server role."""

    def __init__(self, workdir, image, subnet="10.213.7", extra_bridge_addresses=(), nodes=()):
        self.workdir = pathlib.Path(workdir)
        self.workdir.mkdir(parents=True, exist_ok=True)
        suffix = net.run_suffix()
        self.fabric = net.unique_name("gpf")
        self.server_ns = net.unique_name("gps")
        self.bridge = net.unique_name("gpb")
        self.veth = net.unique_name("gpv")
        self.container = "gridops-pxe-test-%s-%s" % (suffix, self.fabric[-2:])
        self.prefix = subnet
        self.address = "%s.1" % subnet
        self.subnet = "%s.0/24" % subnet
        third = subnet.split(".")[-1]
        self.address6 = "fd42:213:%s::1" % third
        self.subnet6 = "fd42:213:%s::/64" % third
        self.image = image
        self.taps = []
        self.nodes = dict(nodes)
        self.inventory = self.workdir / "inventory.yml"
        self._extra = list(extra_bridge_addresses)
        self._spec = {"fabric_netns": self.fabric, "server_netns": self.server_ns, "bridge": self.bridge,
                      "veth_bridge_side": self.veth, "server_ifname": "eth0",
                      "server_addresses": ["%s/24" % self.address, "%s/64" % self.address6],
                      "bmc_addresses": self._extra, "taps": []}
        try:
            _lab_engine().network_present(_runner, self._spec)
            self._start_container()
            self.write_inventory()
        except BaseException:
            self.close()
            raise

    # ---- network and container --------------------------------------------

    def add_tap(self):
        tap = net.unique_name("gpt")
        self._spec["taps"] = self._spec["taps"] + [tap]
        _lab_engine().network_present(_runner, self._spec)
        self.taps.append(tap)
        return tap

    def _start_container(self):
        podman("run", "-d", "--name", self.container, "--hostname", "pxe-server",
               "--network", "ns:/run/netns/%s" % self.server_ns, "--systemd=always",
               "--cap-add", "NET_ADMIN", "--cap-add", "NET_RAW",
               "--label", "gridops.test=pxe", self.image, "/sbin/init")

        def running():
            res = podman("exec", self.container, "systemctl", "is-system-running", check=False, timeout=60)
            return res.stdout.strip() in ("running", "degraded")
        procs.wait_for(running, 120, interval=0.3, what="systemd in %s" % self.container)

    def exec(self, *argv, check=True, timeout=120):
        return podman("exec", self.container, *argv, check=check, timeout=timeout)

    def close(self):
        with contextlib.suppress(Exception):
            podman("rm", "-f", "-t", "0", self.container, check=False)
        with contextlib.suppress(Exception):
            _lab_engine().network_absent(_runner, self._spec)
        procs.reap_orphans()

    # ---- Ansible -----------------------------------------------------------

    def write_inventory(self):
        server = {
            "ansible_connection": "containers.podman.podman",
            "ansible_host": self.container,
            "ansible_python_interpreter": "/usr/bin/python3",
            "provisioning_interface": "eth0",
            "provisioning_address": self.address,
            "provisioning_subnet": self.subnet,
            "provisioning_address6": self.address6,
            "provisioning_subnet6": self.subnet6,
        }
        inventory = {"all": {"children": {
            "deploy_server": {"hosts": {"pxe-server": server}},
            "nodes": {"hosts": dict((name, dict(hv)) for name, hv in self.nodes.items())},
        }}}
        self.inventory.write_text(yaml.safe_dump(inventory, sort_keys=True))

    def converge(self, extra_vars=None, check=True, args=()):
        """Run playbooks/pxe.yml (the role) against the container; return the PlaybookResult."""
        return ansible.playbook("pxe.yml", self.inventory, extra_vars, timeout=900, check=check, args=args)

    def netboot(self, check=True, **params):
        """gridops.metal.netboot on the server (ad hoc); return the module's result."""
        argv = ["ansible", "-i", str(self.inventory), "pxe-server", "-m", "gridops.metal.netboot",
                "-a", json.dumps(params)]
        env = ansible.env(ANSIBLE_LOAD_CALLBACK_PLUGINS="1", ANSIBLE_STDOUT_CALLBACK="json")
        res = subprocess.run(argv, cwd=ansible.REPO, env=env, capture_output=True, text=True, timeout=300,
                             check=False)
        try:
            out = json.loads(res.stdout)["plays"][0]["tasks"][0]["hosts"]["pxe-server"]
        except (ValueError, KeyError, IndexError):
            raise AssertionError("netboot: no result\n%s\n%s" % (res.stdout[-3000:], res.stderr[-3000:]))
        if check and (res.returncode != 0 or out.get("failed")):
            raise AssertionError("netboot failed: %s" % out.get("msg", out))
        return out

    def journal(self, unit, since=None):
        argv = ["journalctl", "-u", unit, "--no-pager", "-o", "cat"]
        if since:
            argv += ["--since", since]
        return self.exec(*argv, check=False).stdout

    def http_log(self):
        return self.exec("cat", "/var/log/nginx/gridops-pxe.access.log", check=False).stdout


class Guest:
    """A QEMU (TCG) machine that boots from the network, then the disk; serial console in a file."""

    OVMF_CODE = "/usr/share/OVMF/OVMF_CODE.fd"
    OVMF_VARS = "/usr/share/OVMF/OVMF_VARS.fd"

    def __init__(self, bed, tap, mac, name="guest", memory=256, firmware="bios", nic_rom=True):
        self.bed = bed
        self.tap = tap
        self.mac = mac
        self.dir = bed.workdir / name
        self.dir.mkdir(parents=True, exist_ok=True)
        self.console_path = self.dir / "console.log"
        self.disk = self.dir / "disk.img"
        self.sercon = self.dir / "sercon-port.bin"
        self.sercon.write_bytes((0x3F8).to_bytes(2, "little"))
        if not self.disk.exists():
            with open(self.disk, "wb") as fh:
                fh.truncate(16 * 1024 * 1024)
        self.memory = memory
        self.firmware = firmware
        self.nic_rom = nic_rom
        if firmware == "uefi":
            self.vars = self.dir / "OVMF_VARS.fd"
            self.vars.write_bytes(pathlib.Path(self.OVMF_VARS).read_bytes())
        self.proc = None
        self.started = None
        self.offset = 0

    def argv(self):
        argv = [
            "qemu-system-x86_64", "-machine", "pc", "-accel", "tcg", "-m", str(self.memory), "-smp", "1",
            "-nodefaults", "-display", "none", "-vga", "none", "-no-reboot",
            "-drive", "file=%s,format=raw,if=none,id=disk0" % self.disk,
            "-device", "virtio-blk-pci,drive=disk0,bootindex=2",
            "-netdev", "tap,id=net0,ifname=%s,script=no,downscript=no" % self.tap,
            # Without the NIC's iPXE ROM, the firmware's own PXE client boots (under OVMF).
            "-device", "virtio-net-pci,netdev=net0,mac=%s,bootindex=1%s" % (self.mac, "" if self.nic_rom else ",romfile="),
            "-chardev", "file,id=serial0,path=%s,append=on" % self.console_path,
            "-serial", "chardev:serial0",
        ]
        if self.firmware == "uefi":
            # OVMF: the firmware's own PXE (DHCP option 93 = 7), on QEMU's iPXE EFI driver for the NIC.
            argv += ["-drive", "if=pflash,format=raw,readonly=on,file=%s" % self.OVMF_CODE,
                     "-drive", "if=pflash,format=raw,file=%s" % self.vars]
        else:
            # SeaBIOS prints to VGA only: sercon mirrors it (and iPXE) to the serial port.
            argv += ["-fw_cfg", "name=etc/sercon-port,file=%s" % self.sercon]
        return argv

    def power_on(self):
        """Start QEMU (as our child, in the fabric namespace); console text from now on is this boot's."""
        self.power_off()
        self.offset = self.console_path.stat().st_size if self.console_path.exists() else 0
        log = open(self.dir / "qemu.log", "ab")
        try:
            self.started = time.monotonic()
            self.proc = subprocess.Popen(procs.netns_argv(self.bed.fabric, self.argv()), stdin=subprocess.DEVNULL,
                                         stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        finally:
            log.close()
        return self

    def power_off(self):
        if self.proc is not None and self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, 9)
            self.proc.wait(10)
        self.proc = None
        procs.reap_orphans()

    def console(self):
        """This boot's console text, without terminal escapes (sercon's cursor moves split words)."""
        try:
            with open(self.console_path, "rb") as fh:
                fh.seek(self.offset)
                return ANSI_ESCAPE.sub("", fh.read().decode(errors="replace"))
        except FileNotFoundError:
            return ""

    def boot_phases(self, timeout=120):
        """Power on and wait for each of BOOT_PHASES; return {phase: seconds since power-on} and the address."""
        self.power_on()
        phases = {}
        match = None
        for name, pattern in BOOT_PHASES:
            match, phases[name] = self.wait_for(pattern, timeout)
        return dict((k, round(v, 2)) for k, v in phases.items()), match.group(1)

    def wait_for(self, pattern, timeout=120):
        """Wait for pattern on this boot's console; return (match, seconds since power-on)."""
        regex = re.compile(pattern)

        def seen():
            match = regex.search(self.console())
            if match is None and self.proc is not None and self.proc.poll() is not None:
                raise AssertionError("QEMU exited before %r:\n%s" % (pattern, self.console()[-3000:]))
            return match
        try:
            match = procs.wait_for(seen, timeout, interval=0.05, what=pattern)
        except TimeoutError:
            raise AssertionError("no %r on the console after %ss:\n%s" % (pattern, timeout, self.console()[-4000:]))
        return match, time.monotonic() - self.started
