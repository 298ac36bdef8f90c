#!/usr/bin/env python
"""Power and boot-device control of one lab node (a QEMU machine), stdlib only.

    gridops_lab_node.py NODE_DIR power on|off|soft|reset|cycle|status
    gridops_lab_node.py NODE_DIR bootdev get
    gridops_lab_node.py NODE_DIR bootdev set pxe|disk|cdrom|bios|none [--persistent]
    gridops_lab_node.py NODE_DIR status [--json] [--lines N]
    gridops_lab_node.py NODE_DIR chassis-control get PARM... | set PARM VALUE... | check ...

NODE_DIR holds node.json (written by the lab role)::

    {"name": "node-1", "mac": "52:54:00:12:34:01", "memory_mb": 1024, "cpus": 1,
     "disk": "<node_dir>/disk.img", "tap": "tap0", "netns": "lab",
     "console_log": "<node_dir>/console.log", "default_boot": "network"}

and what this script keeps there: state.json (boot devices, last power-on),
qemu.pid, qmp.sock, qemu.log (QEMU's own messages), node.log (what was done),
sercon-port.bin and a lock file.

`chassis-control` is the protocol of OpenIPMI ipmi_sim's ``chassis_control``
program (lanserv/bmc_chassis.c, extcmd.c in OpenIPMI 2.0.33).  ipmi_sim runs
``<configured command> get power`` / ``... set power "1"`` through /bin/sh,
reads stdout until EOF and checks the exit status:

    get power            -> "power:1" / "power:0"     (chassis power status)
    get boot             -> "boot:<none|pxe|default|cdrom|bios>"
    set power 1 | 0      <- chassis power on / off; cycle = off, then ipmi_sim
                            polls "get power" every second and sends "set power 1"
    set reset 1          <- chassis power reset
    set shutdown 1       <- chassis power soft
    set boot <name>      <- chassis bootdev ...: "default" means the hard disk,
                            "none" removes the one-time override
    set identify "I F"   <- chassis identify (accepted, nothing to light)
    check ...            <- accepted

ipmi_sim passes only the boot device selector, not the IPMI "persistent" bit,
so every device set over IPMI is a one-time override (used by the next power-on,
then cleared).  A persistent device is set with `bootdev set X --persistent`.

The power state is never stored: it is re-derived from qemu.pid and /proc (the
process must be alive, not a zombie, and its cmdline must carry this node's
pid file), so a stale pid file or a reused pid reads as "off".
"""
import argparse
import contextlib
import errno
import fcntl
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time

BOOT_DEVICES = ("pxe", "disk", "cdrom", "bios")
# SeaBIOS legacy boot order letters (QEMU -boot): n network, c first hard disk,
# d first CD-ROM.  The forced device goes first, the others stay as fallbacks,
# as a real BIOS falls through to the next device when one fails.
BOOT_ORDER = {"pxe": "nc", "disk": "cn", "cdrom": "dnc"}
DEFAULT_BOOT = {"network": "pxe", "pxe": "pxe", "disk": "disk"}
# ipmi_sim's boot map (bmc_chassis.c boot_map) <-> our device names.
IPMI_TO_DEVICE = {"none": None, "pxe": "pxe", "default": "disk", "cdrom": "cdrom", "bios": "bios"}
DEVICE_TO_IPMI = {None: "none", "pxe": "pxe", "disk": "default", "cdrom": "cdrom", "bios": "bios"}

MAC_RE = re.compile(r"^[0-9a-f]{2}(:[0-9a-f]{2}){5}$")
NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,62}$")
UNIX_PATH_MAX = 107  # sun_path is 108 bytes including the NUL

STOP_TERM_WAIT = 5.0
STOP_KILL_WAIT = 5.0
START_TIMEOUT = 30.0
LOCK_TIMEOUT = 60.0


class NodeError(Exception):
    """An operation failed; the message is meant for the user."""


class ConfigError(NodeError):
    """node.json is missing or invalid."""


def atomic_write(path, data, mode=0o644):
    """Write data (str or bytes) to path through a temp file + rename, so readers
    never see a half-written file."""
    if isinstance(data, str):
        data = data.encode()
    tmp = "%s.tmp.%d" % (path, os.getpid())
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    try:
        os.write(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)
    try:
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def load_config(node_dir):
    """Read and validate node_dir/node.json; raise ConfigError naming the field."""
    path = os.path.join(node_dir, "node.json")
    try:
        with open(path) as fh:
            raw = json.load(fh)
    except FileNotFoundError:
        raise ConfigError("%s: not found" % path) from None
    except (OSError, ValueError) as exc:
        raise ConfigError("%s: unreadable or not JSON: %s" % (path, exc)) from None
    if not isinstance(raw, dict):
        raise ConfigError("%s: must hold a JSON object" % path)

    def field(name, kind, check=None, hint="", default=None, required=True):
        if name not in raw:
            if required:
                raise ConfigError("%s: field %r is missing" % (path, name))
            return default
        value = raw[name]
        # bool is an int subclass: "cpus": true must not pass as 1.
        if not isinstance(value, kind) or isinstance(value, bool) or (check and not check(value)):
            raise ConfigError("%s: field %r is invalid (got %r)%s" % (path, name, value, hint))
        return value

    def abs_path(v):
        return os.path.isabs(v)

    cfg = {
        "name": field("name", str, NAME_RE.match, ": letters, digits, '.', '_', '-'"),
        "mac": field("mac", str, lambda v: MAC_RE.match(v.lower()), ": like 52:54:00:12:34:01").lower(),
        "memory_mb": field("memory_mb", int, lambda v: v >= 64, ": an integer >= 64"),
        "cpus": field("cpus", int, lambda v: 1 <= v <= 64, ": an integer 1..64"),
        "disk": field("disk", str, abs_path, ": an absolute path"),
        "tap": field("tap", str, lambda v: 0 < len(v) <= 15 and "/" not in v and "," not in v,
                     ": an interface name of at most 15 characters"),
        "netns": field("netns", str, lambda v: 0 < len(v) and "/" not in v, ": a network namespace name"),
        "console_log": field("console_log", str, abs_path, ": an absolute path"),
        "default_boot": field("default_boot", str, lambda v: v in DEFAULT_BOOT,
                              ": one of %s" % ", ".join(sorted(DEFAULT_BOOT)),
                              default="network", required=False),
    }
    cfg["default_device"] = DEFAULT_BOOT[cfg["default_boot"]]
    return cfg


def qemu_opt(value):
    """Escape a value for QEMU's comma-separated option syntax."""
    return value.replace(",", ",,")


def read_cmdline(pid):
    try:
        with open("/proc/%d/cmdline" % pid, "rb") as fh:
            return [a.decode(errors="replace") for a in fh.read().split(b"\0") if a]
    except OSError:
        return []


def process_state(pid):
    """The one-letter state of pid from /proc, or None if it does not exist."""
    try:
        with open("/proc/%d/stat" % pid) as fh:
            return fh.read().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return None


def alive(pid):
    # A killed QEMU is reparented to the lab supervisor (a subreaper) and stays a
    # zombie until reaped; its files and the tap are already released by then.
    return process_state(pid) not in (None, "Z", "X")


class Node:
    """One lab node: its QEMU process, boot devices and console."""

    def __init__(self, node_dir):
        self.dir = os.path.realpath(node_dir)
        if not os.path.isdir(self.dir):
            raise ConfigError("node directory %s does not exist" % self.dir)
        self.cfg = load_config(self.dir)
        self.pidfile = os.path.join(self.dir, "qemu.pid")
        self.qmp_path = os.path.join(self.dir, "qmp.sock")
        self.state_path = os.path.join(self.dir, "state.json")
        self.qemu_log = os.path.join(self.dir, "qemu.log")
        self.event_log = os.path.join(self.dir, "node.log")
        self.sercon = os.path.join(self.dir, "sercon-port.bin")
        self.lock_path = os.path.join(self.dir, ".lock")

    # ---- state -------------------------------------------------------------

    def load_state(self):
        state = {"one_time_boot": None, "persistent_boot": None, "last_boot": None}
        try:
            with open(self.state_path) as fh:
                stored = json.load(fh)
            if isinstance(stored, dict):
                state.update({k: stored[k] for k in state if k in stored})
        except FileNotFoundError:
            pass
        except (OSError, ValueError) as exc:
            raise NodeError("%s: unreadable: %s" % (self.state_path, exc)) from None
        for key in ("one_time_boot", "persistent_boot"):
            if state[key] not in (None,) + BOOT_DEVICES:
                state[key] = None
        return state

    def save_state(self, state):
        atomic_write(self.state_path, json.dumps(state, indent=2, sort_keys=True) + "\n")

    def log(self, message):
        """Append one line to node.log (one write with O_APPEND: no interleaving)."""
        line = "%s %s\n" % (time.strftime("%Y-%m-%dT%H:%M:%S"), message)
        with contextlib.suppress(OSError):
            fd = os.open(self.event_log, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
            try:
                os.write(fd, line.encode())
            finally:
                os.close(fd)

    @contextlib.contextmanager
    def locked(self):
        """Serialise changes: ipmi_sim and a person at the CLI may act at once."""
        fd = os.open(self.lock_path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            deadline = time.monotonic() + LOCK_TIMEOUT
            while True:
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    break
                except OSError as exc:
                    if exc.errno not in (errno.EAGAIN, errno.EACCES) or time.monotonic() > deadline:
                        raise NodeError("could not lock %s: %s" % (self.lock_path, exc)) from None
                    time.sleep(0.05)
            yield
        finally:
            os.close(fd)

    # ---- process -----------------------------------------------------------

    def pid(self):
        """PID of this node's running QEMU, or None.  Never trusts the pid file
        alone: the process must be alive and its cmdline must name our pid file."""
        try:
            with open(self.pidfile) as fh:
                pid = int(fh.read().strip() or 0)
        except (OSError, ValueError):
            return None
        if pid <= 0 or not alive(pid):
            return None
        argv = read_cmdline(pid)
        if not argv or not os.path.basename(argv[0]).startswith("qemu-system"):
            return None
        for i, arg in enumerate(argv[:-1]):
            if arg == "-pidfile" and argv[i + 1] == self.pidfile:
                return pid
        return None

    def is_on(self):
        return self.pid() is not None

    def next_boot(self, state):
        """(device, source) the next power-on will use."""
        if state["one_time_boot"]:
            return state["one_time_boot"], "one-time"
        if state["persistent_boot"]:
            return state["persistent_boot"], "persistent"
        return self.cfg["default_device"], "default"

    def boot_args(self, state):
        """QEMU -boot for the next power-on.  A one-time device uses `once=`, which
        QEMU replaces by `order=` at the first guest reset: a reboot from inside the
        guest then follows the persistent order, as on a real machine."""
        device, source = self.next_boot(state)
        persistent = state["persistent_boot"] or self.cfg["default_device"]
        if persistent == "bios":
            persistent = self.cfg["default_device"]
        order = BOOT_ORDER[persistent]
        opts = []
        if source == "one-time" and device != "bios":
            opts.append("once=%s" % BOOT_ORDER[device])
        opts.append("order=%s" % order)
        if device == "bios":
            # SeaBIOS has no setup program; its boot menu (on the serial console
            # through sercon) is the nearest thing, shown 30 s before booting on.
            opts += ["menu=on", "splash-time=30000"]
        return ["-boot", ",".join(opts)], device, source

    def netns_prefix(self):
        """nsenter prefix unless we already run in the node's namespace (ipmi_sim
        does; a person at the CLI usually does not).  The tap lives there."""
        target = "/run/netns/%s" % self.cfg["netns"]
        try:
            want = os.stat(target)
        except OSError:
            raise NodeError("network namespace %r (field 'netns') does not exist: %s is missing"
                            % (self.cfg["netns"], target)) from None
        have = os.stat("/proc/self/ns/net")
        if (have.st_dev, have.st_ino) == (want.st_dev, want.st_ino):
            return []
        return [shutil.which("nsenter") or "/usr/bin/nsenter", "--net=%s" % target, "--"]

    def qemu_argv(self, state):
        cfg = self.cfg
        boot, device, source = self.boot_args(state)
        argv = [
            shutil.which("qemu-system-x86_64") or "/usr/bin/qemu-system-x86_64",
            "-name", qemu_opt(cfg["name"]),
            "-machine", "pc", "-accel", "tcg",
            "-m", str(cfg["memory_mb"]), "-smp", str(cfg["cpus"]),
            # Only the devices below: no default NIC, floppy, parallel port, VGA.
            "-nodefaults", "-display", "none", "-vga", "none",
            "-drive", "file=%s,format=raw,if=none,id=disk0,discard=unmap" % qemu_opt(cfg["disk"]),
            "-device", "virtio-blk-pci,drive=disk0",
            # An empty CD drive, so that `bootdev cdrom` has a device to try.
            "-drive", "if=none,id=cd0,media=cdrom,readonly=on",
            "-device", "ide-cd,drive=cd0,bus=ide.1,unit=0",
            "-netdev", "tap,id=net0,ifname=%s,script=no,downscript=no" % cfg["tap"],
            "-device", "virtio-net-pci,netdev=net0,mac=%s" % cfg["mac"],
            "-chardev", "file,id=serial0,path=%s,append=on" % qemu_opt(cfg["console_log"]),
            "-serial", "chardev:serial0",
            # SeaBIOS prints to VGA only; sercon mirrors its text console, and so
            # iPXE's (which prints through the BIOS), to the serial port.  SeaBIOS
            # reads the port as a little-endian integer file of size 1/2/4/8: a
            # string= value would be ignored, so it comes from a 2-byte file.
            # (QEMU warns that the name lacks the "opt/" prefix; SeaBIOS needs it.)
            "-fw_cfg", "name=etc/sercon-port,file=%s" % qemu_opt(self.sercon),
            "-qmp", "unix:%s,server=on,wait=off" % qemu_opt(self.qmp_path),
        ] + boot + [
            "-daemonize", "-pidfile", self.pidfile,
        ]
        return argv, device, source

    # ---- power -------------------------------------------------------------

    def _start(self):
        state = self.load_state()
        if not os.path.exists(self.cfg["disk"]):
            raise NodeError("disk %s (field 'disk') does not exist" % self.cfg["disk"])
        if len(self.qmp_path.encode()) > UNIX_PATH_MAX:
            raise NodeError("monitor socket path %s is longer than %d bytes: use a shorter node directory"
                            % (self.qmp_path, UNIX_PATH_MAX))
        atomic_write(self.sercon, (0x3F8).to_bytes(2, "little"))
        prefix = self.netns_prefix()
        argv, device, source = self.qemu_argv(state)
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.pidfile)
        with open(self.qemu_log, "ab") as log:
            log.write(("%s starting: %s\n" % (time.strftime("%Y-%m-%dT%H:%M:%S"), " ".join(argv))).encode())
            log.flush()
            # Never the caller's stdout: ipmi_sim reads our stdout until EOF, and a
            # QEMU holding it open would block the BMC until the machine stops.
            # -daemonize: this child returns once the machine runs; the daemon is
            # reparented to the lab supervisor, which reaps it.
            proc = subprocess.Popen(prefix + argv, stdin=subprocess.DEVNULL, stdout=log,
                                    stderr=log, close_fds=True, cwd=self.dir)
            try:
                rc = proc.wait(START_TIMEOUT)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
                raise NodeError("QEMU did not daemonize within %ds; see %s" % (START_TIMEOUT, self.qemu_log))
        pid = self.pid()
        if rc != 0 or pid is None:
            raise NodeError("QEMU failed to start (exit %s): %s" % (rc, self._qemu_log_tail()))
        # One-time means one time: consumed only once the machine really started.
        state["one_time_boot"] = None if source == "one-time" else state["one_time_boot"]
        state["last_boot"] = {"device": device, "source": source, "pid": pid,
                              "time": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
        self.save_state(state)
        self.log("power on: pid %d, boot %s (%s)" % (pid, device, source))
        return pid

    def _qemu_log_tail(self, n=5):
        with contextlib.suppress(OSError), open(self.qemu_log, errors="replace") as fh:
            return " | ".join(line.strip() for line in fh.readlines()[-n:])
        return "(no %s)" % self.qemu_log

    def _stop(self):
        """Hard power off: SIGTERM (QEMU stops at once, nothing asks the guest),
        SIGKILL if it lingers; return once the process is gone."""
        pid = self.pid()
        if pid is None:
            return False
        for sig, wait in ((signal.SIGTERM, STOP_TERM_WAIT), (signal.SIGKILL, STOP_KILL_WAIT)):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, sig)
            deadline = time.monotonic() + wait
            while alive(pid) and time.monotonic() < deadline:
                time.sleep(0.02)
            if not alive(pid):
                break
        if alive(pid):
            raise NodeError("QEMU pid %d survived SIGKILL" % pid)
        for path in (self.pidfile, self.qmp_path):
            with contextlib.suppress(FileNotFoundError):
                os.unlink(path)
        self.log("power off: pid %d stopped" % pid)
        return True

    def power_on(self):
        with self.locked():
            if self.is_on():
                return False
            self._start()
            return True

    def power_off(self):
        with self.locked():
            return self._stop()

    def power_cycle(self):
        with self.locked():
            self._stop()
            self._start()

    def power_reset(self):
        """Reset = stop + start rather than QMP system_reset: a new QEMU takes the
        boot device chosen now (one-time or persistent) like a real reset does,
        which a running QEMU's fixed -boot could not.  The console log continues."""
        with self.locked():
            if not self.is_on():
                raise NodeError("cannot reset %s: it is powered off" % self.cfg["name"])
            self._stop()
            self._start()

    def power_soft(self):
        """ACPI power button (QMP system_powerdown); returns at once.  A guest
        without an ACPI-aware OS (firmware, iPXE) ignores it and stays on."""
        with self.locked():
            if not self.is_on():
                return False
            self.qmp("system_powerdown")
            self.log("power soft: ACPI power button pressed")
            return True

    def qmp(self, command, arguments=None, timeout=5.0):
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(timeout)
        try:
            sock.connect(self.qmp_path)
            stream = sock.makefile("rw", encoding="utf-8", newline="\n")

            def reply():
                while True:
                    line = stream.readline()
                    if not line:
                        raise NodeError("QMP connection closed by QEMU")
                    msg = json.loads(line)
                    if "return" in msg or "error" in msg:
                        return msg
                    # Greeting and asynchronous events: skip.

            def send(cmd, args=None):
                req = {"execute": cmd}
                if args:
                    req["arguments"] = args
                stream.write(json.dumps(req) + "\n")
                stream.flush()
                msg = reply()
                if "error" in msg:
                    raise NodeError("QMP %s failed: %s" % (cmd, msg["error"].get("desc", msg["error"])))
                return msg["return"]

            send("qmp_capabilities")
            return send(command, arguments)
        except (OSError, ValueError) as exc:
            raise NodeError("QMP %s via %s failed: %s" % (command, self.qmp_path, exc)) from None
        finally:
            sock.close()

    # ---- boot device -------------------------------------------------------

    def set_bootdev(self, device, persistent=False):
        if device not in BOOT_DEVICES + ("none",):
            raise NodeError("unknown boot device %r" % device)
        value = None if device == "none" else device
        with self.locked():
            state = self.load_state()
            state["persistent_boot" if persistent else "one_time_boot"] = value
            self.save_state(state)
        self.log("bootdev %s%s" % (device, " (persistent)" if persistent else " (next boot)"))

    def bootdev(self):
        state = self.load_state()
        device, source = self.next_boot(state)
        return {"next": device, "next_source": source, "one_time": state["one_time_boot"],
                "persistent": state["persistent_boot"], "default": self.cfg["default_device"]}

    # ---- status ------------------------------------------------------------

    def console_tail(self, lines=20, max_bytes=65536):
        """Last lines of the console, ANSI escapes and backspaces removed."""
        try:
            with open(self.cfg["console_log"], "rb") as fh:
                fh.seek(0, os.SEEK_END)
                fh.seek(max(0, fh.tell() - max_bytes))
                data = fh.read().decode("utf-8", errors="replace")
        except OSError:
            return []
        data = re.sub(r"\x1b\[[0-9;?]*[A-Za-z]|\x1b[c()][0-9A-Za-z]?|.\x08", "", data)
        out = [line.rstrip("\r").rsplit("\r", 1)[-1].rstrip() for line in data.split("\n")]
        out = [line for line in out if line]
        return out[-lines:] if lines > 0 else []

    def status(self, lines=20):
        state = self.load_state()
        pid = self.pid()
        device, source = self.next_boot(state)
        return {
            "name": self.cfg["name"],
            "power": "on" if pid else "off",
            "pid": pid,
            "last_boot": state["last_boot"],
            "last_boot_device": (state["last_boot"] or {}).get("device"),
            "next_boot_device": device,
            "next_boot_source": source,
            "one_time_boot": state["one_time_boot"],
            "persistent_boot": state["persistent_boot"],
            "default_boot": self.cfg["default_device"],
            "console_log": self.cfg["console_log"],
            "console_tail": self.console_tail(lines),
        }

    # ---- ipmi_sim chassis_control -------------------------------------------

    def chassis_control(self, args):
        """Handle one ipmi_sim chassis_control call; return the text for stdout."""
        if not args:
            raise NodeError("chassis-control: no operation given")
        op, parms = args[0], args[1:]
        if op == "check":
            return ""
        if op == "get":
            out = []
            for parm in parms:
                if parm == "power":
                    out.append("power:%d" % (1 if self.is_on() else 0))
                elif parm == "boot":
                    state = self.load_state()
                    out.append("boot:%s" % DEVICE_TO_IPMI[state["one_time_boot"] or state["persistent_boot"]])
                else:
                    raise NodeError("chassis-control: cannot get %r" % parm)
            return "".join(line + "\n" for line in out)
        if op == "set":
            if len(parms) % 2:
                raise NodeError("chassis-control: set needs parameter/value pairs, got %r" % parms)
            for parm, value in zip(parms[::2], parms[1::2]):
                self._chassis_set(parm, value)
            return ""
        raise NodeError("chassis-control: unknown operation %r" % op)

    def _chassis_set(self, parm, value):
        if parm == "power":
            if value not in ("0", "1"):
                raise NodeError("chassis-control: power must be 0 or 1, got %r" % value)
            if value == "1":
                self.power_on()
            else:
                self.power_off()
        elif parm == "reset":
            self.power_reset()
        elif parm == "shutdown":
            self.power_soft()
        elif parm == "boot":
            if value not in IPMI_TO_DEVICE:
                raise NodeError("chassis-control: unknown boot device %r" % value)
            self.set_bootdev(IPMI_TO_DEVICE[value] or "none", persistent=False)
        elif parm == "identify":
            self.log("identify %s (no light to blink)" % value)
        else:
            raise NodeError("chassis-control: cannot set %r" % parm)


def format_status(st):
    lines = ["name: %s" % st["name"], "power: %s%s" % (st["power"], " (pid %d)" % st["pid"] if st["pid"] else "")]
    lines.append("last boot device: %s" % (st["last_boot_device"] or "-"))
    lines.append("next boot device: %s (%s)" % (st["next_boot_device"], st["next_boot_source"]))
    lines.append("console (%s):" % st["console_log"])
    lines += ["  " + line for line in st["console_tail"]]
    return "\n".join(lines)


def build_parser():
    parser = argparse.ArgumentParser(prog="gridops_lab_node.py", description="Control one lab node (QEMU).")
    parser.add_argument("node_dir", help="directory holding node.json")
    sub = parser.add_subparsers(dest="command", required=True)
    power = sub.add_parser("power", help="power on|off|soft|reset|cycle|status")
    power.add_argument("action", choices=["on", "off", "soft", "reset", "cycle", "status"])
    boot = sub.add_parser("bootdev", help="get, or set the boot device")
    boot_sub = boot.add_subparsers(dest="bootdev_action", required=True)
    boot_sub.add_parser("get")
    boot_set = boot_sub.add_parser("set")
    boot_set.add_argument("device", choices=list(BOOT_DEVICES) + ["none"])
    boot_set.add_argument("--persistent", action="store_true",
                          help="every boot, not only the next one")
    status = sub.add_parser("status", help="power state, boot devices, console tail")
    status.add_argument("--json", action="store_true")
    status.add_argument("--lines", type=int, default=20, help="console lines (default 20)")
    chassis = sub.add_parser("chassis-control", help="ipmi_sim chassis_control entry point")
    chassis.add_argument("args", nargs=argparse.REMAINDER)
    return parser


def main(argv=None):
    args = build_parser().parse_args(argv)
    try:
        node = Node(args.node_dir)
        if args.command == "chassis-control":
            sys.stdout.write(node.chassis_control(args.args))
        elif args.command == "power":
            if args.action == "status":
                print("on" if node.is_on() else "off")
            else:
                getattr(node, "power_" + args.action)()
        elif args.command == "bootdev":
            if args.bootdev_action == "get":
                info = node.bootdev()
                print(" ".join("%s=%s" % (k, info[k] or "none") for k in
                               ("next", "next_source", "one_time", "persistent", "default")))
            else:
                node.set_bootdev(args.device, args.persistent)
        elif args.command == "status":
            st = node.status(args.lines)
            print(json.dumps(st, indent=2) if args.json else format_status(st))
    except NodeError as exc:
        msg = "gridops_lab_node: %s\n" % exc
        sys.stderr.write(msg)
        if args.command == "chassis-control":
            # ipmi_sim logs a failing command's stdout (its protocol); stderr goes
            # to ipmi_sim's own stderr, i.e. the supervisor's log.
            sys.stdout.write(msg)
        return 2 if isinstance(exc, ConfigError) else 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
