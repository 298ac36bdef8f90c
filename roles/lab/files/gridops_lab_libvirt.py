#!/usr/bin/env python
"""The lab's `virtualbmc` BMC kind: a private libvirtd plus vbmcd, per lab.

Subcommands (stdlib only; the libvirt client is `virsh`):

    libvirtd --state-dir DIR [--netns NS]       foreground libvirtd (QEMU driver, TCG)
    wait     --state-dir DIR [--timeout S]      until that libvirtd answers
    define   --state-dir DIR --node-json FILE   define a node's domain (idempotent)
    vbmcd    --state-dir DIR [--netns NS]       foreground vbmcd serving DIR's BMCs
    add-bmc  --state-dir DIR --domain NAME --address IP [--port 623]
             --user U --password-file F [--netns NS]
    status   --state-dir DIR --domain NAME [--json]
    uri      --state-dir DIR                    print the libvirt URI

How libvirtd is isolated (no systemd here, and two labs must run side by side):
* network: it joins the lab's network namespace, so the taps it creates for
  `<interface type='bridge'>` live there, next to the lab's bridge;
* mounts: a private mount namespace in which DIR/run, DIR/lib, DIR/log,
  DIR/cache and DIR/etc/libvirt are bind-mounted over /run/libvirt,
  /var/lib/libvirt, /var/log/libvirt, /var/cache/libvirt and /etc/libvirt,
  and DIR/etc/passwd|group (with a libvirt-qemu user: Debian's QEMU driver
  looks that user up before it reads qemu.conf) over /etc/passwd|group.
  These mounts exist only in that namespace, so they vanish with its last
  process: nothing is ever mounted on the host.  The empty mount points are
  created on the host if missing (Debian's libvirt-daemon-system would own
  them; libvirt-daemon alone does not create them);
* processes: a private PID namespace whose init is this script (it reaps the
  daemonised QEMU processes, PID 1 on the host does not).  If that init dies,
  the kernel kills everything in the namespace, QEMU included.

From outside, libvirtd is reached through its socket in DIR:
`qemu+unix:///system?socket=DIR/run/libvirt-sock` (see `uri`).

Shutdown: on SIGTERM/SIGINT/SIGHUP the init destroys (hard power-off) every
running domain, then stops libvirtd, then exits, which kills whatever is left
in the namespace.  Domain definitions persist in DIR/etc/libvirt/qemu.

vbmcd (virtualbmc) runs in the lab's network namespace with
VIRTUALBMC_CONFIG=DIR/vbmc/virtualbmc.conf; its control port (ZMQ, TCP on
127.0.0.1) is that namespace's loopback.  `add-bmc` writes the per-domain
config file atomically; vbmcd picks it up within 3 s (its periodic sync).
"""
import argparse
import contextlib
import ctypes
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import xml.etree.ElementTree as ET

CLONE_NEWNS = 0x00020000
CLONE_NEWPID = 0x20000000
CLONE_NEWNET = 0x40000000
MS_NOSUID = 2
MS_NODEV = 4
MS_NOEXEC = 8
MS_BIND = 4096
MS_REC = 16384
MS_PRIVATE = 1 << 18
PR_SET_PDEATHSIG = 1

LIBVIRTD = "/usr/sbin/libvirtd"
VIRSH = "/usr/bin/virsh"
# Unix socket paths are limited to 108 bytes including the NUL.
SOCKET_PATH_MAX = 107
# Ids Debian's libvirt-daemon-system would give the user/group (not required).
QEMU_USER_LINE = "libvirt-qemu:x:64055:64055:Libvirt Qemu,,,:/var/lib/libvirt:/usr/sbin/nologin\n"
QEMU_GROUP_LINES = {"libvirt-qemu": "libvirt-qemu:x:64055:\n", "kvm": "kvm:x:64056:\n",
                    "libvirt": "libvirt:x:64057:\n"}
VBMC_SERVER_PORT = 50891
STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)

LIBVIRTD_CONF = """\
# Written by gridops_lab_libvirt.py: a private libvirtd for one lab.
listen_tls = 0
listen_tcp = 0
unix_sock_dir = "/run/libvirt"
unix_sock_group = "root"
unix_sock_ro_perms = "0770"
unix_sock_rw_perms = "0770"
unix_sock_admin_perms = "0700"
# Only root can reach the socket (mode 0770 root:root); no polkit here.
auth_unix_ro = "none"
auth_unix_rw = "none"
# Foreground: warnings and errors to stderr, which the supervisor logs.
log_outputs = "3:stderr"
"""

QEMU_CONF = """\
# Written by gridops_lab_libvirt.py.  No systemd, no cgroups of our own,
# no SELinux/AppArmor: QEMU runs as root and touches no global state.
user = "root"
group = "root"
dynamic_ownership = 0
remember_owner = 0
security_driver = "none"
security_default_confined = 0
# Empty: libvirt must not create cgroups on the host.
cgroup_controllers = [ ]
# No per-domain mount namespace with a private /dev (needs nothing here).
namespaces = [ ]
# QEMU writes its own logs (and the serial <log/> files): no virtlogd.
stdio_handler = "file"
"""

# ----------------------------------------------------------------- helpers


def _libc():
    return ctypes.CDLL(None, use_errno=True)


def _check(ret, what):
    if ret != 0:
        err = ctypes.get_errno()
        raise OSError(err, "%s: %s" % (what, os.strerror(err)))


def setns(path, nstype):
    libc = _libc()
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        _check(libc.setns(fd, nstype), "setns(%s)" % path)
    finally:
        os.close(fd)


def unshare(flags):
    _check(_libc().unshare(flags), "unshare(%#x)" % flags)


def _enc(text):
    return text.encode() if text is not None else None


def mount(source, target, fstype, flags, data=None):
    _check(_libc().mount(_enc(source), _enc(target), _enc(fstype), ctypes.c_ulong(flags), _enc(data)),
           "mount(%s, %s)" % (source, target))


class Paths:
    """Where one lab's libvirtd and vbmcd keep their state."""

    def __init__(self, state_dir):
        self.root = os.path.abspath(state_dir)
        self.run = os.path.join(self.root, "run")          # -> /run/libvirt
        self.lib = os.path.join(self.root, "lib")          # -> /var/lib/libvirt
        self.log = os.path.join(self.root, "log")          # -> /var/log/libvirt
        self.cache = os.path.join(self.root, "cache")      # -> /var/cache/libvirt
        self.etc = os.path.join(self.root, "etc")
        self.etc_libvirt = os.path.join(self.etc, "libvirt")  # -> /etc/libvirt
        self.passwd = os.path.join(self.etc, "passwd")      # -> /etc/passwd
        self.group = os.path.join(self.etc, "group")        # -> /etc/group
        self.socket = os.path.join(self.run, "libvirt-sock")
        self.init_pid = os.path.join(self.root, "nsinit.pid")
        self.vbmc = os.path.join(self.root, "vbmc")
        self.vbmc_conf = os.path.join(self.vbmc, "virtualbmc.conf")
        self.vbmc_domains = os.path.join(self.vbmc, "domains")

    @property
    def uri(self):
        return "qemu+unix:///system?socket=%s" % self.socket

    def binds(self):
        """(source in DIR, target on the host) for the private mount namespace."""
        return [
            (self.run, "/run/libvirt"),
            (self.lib, "/var/lib/libvirt"),
            (self.log, "/var/log/libvirt"),
            (self.cache, "/var/cache/libvirt"),
            (self.etc_libvirt, "/etc/libvirt"),
            (self.passwd, "/etc/passwd"),
            (self.group, "/etc/group"),
        ]


def virsh(paths, *args, check=True, timeout=60):
    res = subprocess.run([VIRSH, "-q", "-c", paths.uri] + list(args), capture_output=True,
                         text=True, timeout=timeout, check=False, stdin=subprocess.DEVNULL)
    if check and res.returncode != 0:
        raise RuntimeError("virsh %s: %s" % (" ".join(args), (res.stderr or res.stdout).strip()))
    return res


def write_atomic(path, text, mode=0o644):
    fd, tmp = tempfile.mkstemp(dir=os.path.dirname(path), prefix=".tmp-")
    try:
        with os.fdopen(fd, "w") as fh:
            fh.write(text)
        os.chmod(tmp, mode)
        os.rename(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def wait_ready(paths, timeout):
    """Until libvirtd answers on its socket; return the seconds waited."""
    start = time.monotonic()
    while True:
        if os.path.exists(paths.socket) and virsh(paths, "uri", check=False, timeout=10).returncode == 0:
            return time.monotonic() - start
        if time.monotonic() - start > timeout:
            raise TimeoutError("libvirtd at %s not ready after %ss" % (paths.socket, timeout))
        time.sleep(0.1)


# ---------------------------------------------------------------- libvirtd


def prepare_libvirtd(paths):
    if len(paths.socket.encode()) > SOCKET_PATH_MAX - len("-admin"):
        raise SystemExit("state dir too long for a unix socket path: %s" % paths.socket)
    for d in (paths.lib, paths.log, paths.cache, paths.etc_libvirt):
        os.makedirs(d, mode=0o700, exist_ok=True)
    # /run is volatile: a new libvirtd starts from nothing, as after a reboot
    # (stale status files would make it look for QEMU processes long gone).
    shutil.rmtree(paths.run, ignore_errors=True)
    os.makedirs(paths.run, mode=0o700)
    write_atomic(os.path.join(paths.etc_libvirt, "libvirtd.conf"), LIBVIRTD_CONF)
    write_atomic(os.path.join(paths.etc_libvirt, "qemu.conf"), QEMU_CONF)
    # An empty libvirt.conf so client tools in the namespace use no host aliases.
    write_atomic(os.path.join(paths.etc_libvirt, "libvirt.conf"), "")
    with open("/etc/passwd") as fh:
        passwd = fh.read()
    if not _has_entry(passwd, "libvirt-qemu"):
        passwd = _terminated(passwd) + QEMU_USER_LINE
    with open("/etc/group") as fh:
        group = fh.read()
    for name, line in QEMU_GROUP_LINES.items():
        if not _has_entry(group, name):
            group = _terminated(group) + line
    write_atomic(paths.passwd, passwd)
    write_atomic(paths.group, group)
    # Mount points; only created when the package did not (see module doc).
    for _src, target in paths.binds():
        if not os.path.exists(target):
            os.makedirs(target, mode=0o755)


def _has_entry(text, name):
    return any(line.split(":", 1)[0] == name for line in text.splitlines())


def _terminated(text):
    return text if not text or text.endswith("\n") else text + "\n"


def _running_init(paths):
    """PID of a live namespace init of this state dir, or None."""
    try:
        with open(paths.init_pid) as fh:
            pid = int(fh.read())
        with open("/proc/%d/cmdline" % pid, "rb") as fh:
            argv = fh.read().split(b"\0")
        # A stale file (SIGKILL) may name a reused pid: check it is one of us.
        alive = (any(a.endswith(b"gridops_lab_libvirt.py") for a in argv) and b"libvirtd" in argv
                 and any(a.rstrip(b"/").endswith(os.path.basename(paths.root).encode()) for a in argv))
    except (OSError, ValueError):
        return None
    return pid if alive else None


def cmd_libvirtd(args):
    paths = Paths(args.state_dir)
    if _running_init(paths):
        raise SystemExit("a libvirtd already runs for %s (pid %d)" % (paths.root, _running_init(paths)))
    prepare_libvirtd(paths)
    if args.netns:
        setns("/run/netns/%s" % args.netns, CLONE_NEWNET)
    unshare(CLONE_NEWNS)
    # Private propagation first: our bind mounts must not leak to the host.
    mount(None, "/", None, MS_REC | MS_PRIVATE)
    for src, target in paths.binds():
        mount(src, target, None, MS_BIND)
    # The next child is PID 1 of a new PID namespace (this process stays
    # outside it, as the supervisor's child).
    unshare(CLONE_NEWPID)
    sys.stdout.flush()
    sys.stderr.flush()
    child = []

    def forward(signo, _frame):
        if child:
            with contextlib.suppress(ProcessLookupError):
                os.kill(child[0], signo)

    for sig in STOP_SIGNALS:
        signal.signal(sig, forward)
    # Blocked across fork() so that a stop request cannot slip in before
    # the child's pid is known (the child keeps them blocked: it waits on them).
    signal.pthread_sigmask(signal.SIG_BLOCK, STOP_SIGNALS)
    pid = os.fork()
    if pid == 0:
        try:
            rc = _ns_init(paths, args)
        except BaseException as exc:  # never fall back into the parent's code
            print("gridops_lab_libvirt: init: %s" % exc, file=sys.stderr, flush=True)
            rc = 1
        os._exit(rc)
    child.append(pid)
    signal.pthread_sigmask(signal.SIG_UNBLOCK, STOP_SIGNALS)
    write_atomic(paths.init_pid, "%d\n" % pid)
    status = os.waitpid(pid, 0)[1]
    with contextlib.suppress(OSError):
        os.unlink(paths.init_pid)
    return os.waitstatus_to_exitcode(status) & 0xFF


def _ns_init(paths, args):
    """PID 1 of the namespace: start libvirtd, reap, stop it all on a signal."""
    _check(_libc().prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0), "prctl")
    # A /proc of our own PID namespace (libvirt reads /proc/<qemu pid>).
    mount("proc", "/proc", "proc", MS_NOSUID | MS_NODEV | MS_NOEXEC)
    watched = set(STOP_SIGNALS) | {signal.SIGCHLD}
    signal.pthread_sigmask(signal.SIG_BLOCK, watched)
    argv = [args.libvirtd, "--pid-file", "/run/libvirt/libvirtd.pid",
            "--config", "/etc/libvirt/libvirtd.conf"]
    daemon = os.fork()
    if daemon == 0:
        try:
            # Own session: a signal to our process group must reach us
            # first, so that domains are destroyed before libvirtd stops.
            os.setsid()
            signal.pthread_sigmask(signal.SIG_SETMASK, set())
            os.execv(argv[0], argv)
        finally:
            os._exit(127)
    print("gridops_lab_libvirt: libvirtd pid %d (namespace pid), uri %s" % (daemon, paths.uri),
          file=sys.stderr, flush=True)
    stopping = False
    while True:
        info = signal.sigtimedwait(watched, 1.0)
        while True:  # reap everything: libvirtd and orphaned QEMU processes
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return 0 if stopping else 1
            if pid == 0:
                break
            if pid == daemon:
                rc = os.waitstatus_to_exitcode(status)
                print("gridops_lab_libvirt: libvirtd exited (%s)" % rc, file=sys.stderr, flush=True)
                # Returning ends the namespace: the kernel kills what is left.
                return 0 if stopping else (rc if rc > 0 else 1)
        if info is not None and info.si_signo in STOP_SIGNALS and not stopping:
            stopping = True
            # In a child: this loop must go on reaping meanwhile, or the QEMU
            # processes libvirt kills stay zombies and `virsh destroy` hangs.
            if os.fork() == 0:
                try:
                    _stop(paths, daemon)
                finally:
                    os._exit(0)


def _stop(paths, daemon):
    """Destroy every running domain, then stop libvirtd (SIGKILL if it hangs)."""
    _destroy_all(paths, budget=5.0)
    with contextlib.suppress(ProcessLookupError):
        os.kill(daemon, signal.SIGTERM)
    time.sleep(3.0)
    with contextlib.suppress(ProcessLookupError):
        os.kill(daemon, signal.SIGKILL)


def _destroy_all(paths, budget):
    """Hard power-off of every running domain, within budget seconds."""
    end = time.monotonic() + budget
    try:
        res = virsh(paths, "list", "--name", "--state-running", "--state-paused", check=False,
                    timeout=max(1.0, end - time.monotonic()))
        for name in filter(None, (n.strip() for n in res.stdout.splitlines())):
            left = end - time.monotonic()
            if left <= 0:
                break
            virsh(paths, "destroy", name, check=False, timeout=left)
    except (subprocess.TimeoutExpired, OSError) as exc:
        print("gridops_lab_libvirt: destroying domains: %s" % exc, file=sys.stderr, flush=True)


def cmd_wait(args):
    took = wait_ready(Paths(args.state_dir), args.timeout)
    print("%.2f" % took)
    return 0


def cmd_uri(args):
    print(Paths(args.state_dir).uri)
    return 0


# ------------------------------------------------------------------ define

QEMU_NS = "http://libvirt.org/schemas/domain/qemu/1.0"


def domain_xml(node):
    """The libvirt domain for a lab node (TCG, network boot first)."""
    boots = ["network", "hd"] if node.get("default_boot", "network") == "network" else ["hd", "network"]
    dom = ET.Element("domain", type="qemu")  # type qemu = TCG (KVM is unusable here)
    ET.SubElement(dom, "name").text = node["name"]
    ET.SubElement(dom, "memory", unit="MiB").text = str(int(node.get("memory_mb", 512)))
    ET.SubElement(dom, "vcpu").text = str(int(node.get("cpus", 1)))
    os_el = ET.SubElement(dom, "os")
    ET.SubElement(os_el, "type", arch="x86_64", machine="pc").text = "hvm"
    # <os><boot dev/> (not per-device <boot order/>): the form vbmc rewrites.
    for dev in boots:
        ET.SubElement(os_el, "boot", dev=dev)
    # useserial: SeaBIOS's serial graphics adapter (sgabios) copies BIOS and
    # iPXE text to the serial port, hence to console_log; without it the
    # log stays empty until the guest's own kernel talks.  (SeaBIOS sercon
    # needs fw_cfg etc/sercon-port, which libvirt refuses: only opt/ names.)
    # rebootTimeout: retry network boot 5 s after "No bootable device".
    ET.SubElement(os_el, "bios", useserial="yes", rebootTimeout="5000")
    features = ET.SubElement(dom, "features")
    ET.SubElement(features, "acpi")
    ET.SubElement(features, "apic")
    ET.SubElement(dom, "on_poweroff").text = "destroy"
    ET.SubElement(dom, "on_reboot").text = "restart"
    ET.SubElement(dom, "on_crash").text = "destroy"
    devices = ET.SubElement(dom, "devices")
    ET.SubElement(devices, "emulator").text = node.get("emulator", "/usr/bin/qemu-system-x86_64")
    disk = ET.SubElement(devices, "disk", type="file", device="disk")
    ET.SubElement(disk, "driver", name="qemu", type="raw", cache="unsafe")
    ET.SubElement(disk, "source", file=os.path.abspath(node["disk"]))
    ET.SubElement(disk, "target", dev="vda", bus="virtio")
    # type bridge: libvirtd (inside the lab's netns) makes the tap and
    # enslaves it to the lab's bridge.
    iface = ET.SubElement(devices, "interface", type="bridge")
    ET.SubElement(iface, "source", bridge=node["bridge"])
    ET.SubElement(iface, "mac", address=node["mac"].lower())
    ET.SubElement(iface, "model", type="virtio")
    # A pty keeps `virsh console` usable; <log append> copies it to the file.
    serial = ET.SubElement(devices, "serial", type="pty")
    ET.SubElement(serial, "log", file=os.path.abspath(node["console_log"]), append="on")
    ET.SubElement(serial, "target", port="0")
    console = ET.SubElement(devices, "console", type="pty")
    ET.SubElement(console, "target", type="serial", port="0")
    ET.SubElement(ET.SubElement(devices, "video"), "model", type="none")
    ET.SubElement(devices, "memballoon", model="none")
    return dom


def _node_summary(dom):
    """What `define` keeps in sync (boot devices excluded: IPMI owns them)."""
    def attr(path, name):
        el = dom.find(path)
        return el.get(name) if el is not None else None

    mem = dom.find("memory")
    mem_mb = None
    if mem is not None:
        unit = mem.get("unit", "KiB")
        mem_mb = int(mem.text) * {"KiB": 1, "MiB": 1024, "GiB": 1024 * 1024}.get(unit, 1) // 1024
    return {
        "memory_mb": mem_mb,
        "cpus": int(dom.findtext("vcpu", "0")),
        "disk": attr("devices/disk/source", "file"),
        "bridge": attr("devices/interface/source", "bridge"),
        "mac": (attr("devices/interface/mac", "address") or "").lower(),
        "console_log": attr("devices/serial/log", "file"),
    }


def cmd_define(args):
    paths = Paths(args.state_dir)
    with open(args.node_json) as fh:
        node = json.load(fh)
    wait_ready(paths, args.timeout)
    want = domain_xml(node)
    name = node["name"]
    res = virsh(paths, "dumpxml", "--inactive", name, check=False)
    if res.returncode == 0:
        have = ET.fromstring(res.stdout)
        if _node_summary(have) == _node_summary(want):
            print("unchanged")
            return 0
        # Changed node: redefine the same domain (its uuid), keeping the
        # boot devices set over IPMI.
        uuid = ET.Element("uuid")
        uuid.text = have.findtext("uuid")
        want.insert(1, uuid)
        for el in want.find("os").findall("boot"):
            want.find("os").remove(el)
        for el in have.find("os").findall("boot"):
            want.find("os").append(el)
    with tempfile.NamedTemporaryFile("w", suffix=".xml", prefix="domain-") as fh:
        fh.write(ET.tostring(want, encoding="unicode"))
        fh.flush()
        virsh(paths, "define", fh.name)
    print("changed")
    return 0


# ------------------------------------------------------------------- vbmcd


def _vbmc_env(paths):
    env = dict(os.environ)
    # vbmc reads its config file at import time from this variable.
    env["VIRTUALBMC_CONFIG"] = paths.vbmc_conf
    return env


def _find_tool(name, given):
    if given:
        return given
    # First the venv's bin next to the interpreter running us (its vbmc
    # imports Debian's python3-libvirt through system site packages).
    candidate = os.path.join(os.path.dirname(sys.executable), name)
    if os.path.exists(candidate):
        return candidate
    found = shutil.which(name)
    if found:
        return found
    raise SystemExit("%s not found: install virtualbmc (pip) or pass --%s" % (name, name))


def prepare_vbmc(paths, server_port):
    os.makedirs(paths.vbmc_domains, mode=0o700, exist_ok=True)
    conf = (
        "# Written by gridops_lab_libvirt.py\n"
        "[default]\n"
        "config_dir = %s\n"
        "pid_file = %s\n"
        "server_port = %d\n"
        "show_passwords = false\n"
        "[log]\n"
        "debug = false\n"
        "[ipmi]\n"
        "session_timeout = 1\n"
    ) % (paths.vbmc_domains, os.path.join(paths.vbmc, "vbmcd.pid"), server_port)
    write_atomic(paths.vbmc_conf, conf)


def cmd_vbmcd(args):
    paths = Paths(args.state_dir)
    prepare_vbmc(paths, args.server_port)
    vbmcd = _find_tool("vbmcd", args.vbmcd)
    # A pid file left by a killed vbmcd would make the new one refuse to start
    # only if that pid is alive; drop it, we are the only vbmcd of this DIR.
    with contextlib.suppress(FileNotFoundError):
        os.unlink(os.path.join(paths.vbmc, "vbmcd.pid"))
    if args.netns:
        setns("/run/netns/%s" % args.netns, CLONE_NEWNET)
    sys.stdout.flush()
    sys.stderr.flush()
    # exec: vbmcd is the supervisor's child itself; its BMC processes are
    # its children (multiprocessing) and it terminates them on SIGTERM.
    os.execve(vbmcd, [vbmcd, "--foreground"], _vbmc_env(paths))


def cmd_add_bmc(args):
    paths = Paths(args.state_dir)
    if not os.path.exists(paths.vbmc_conf):
        prepare_vbmc(paths, args.server_port)
    if os.path.exists(paths.socket):
        # Like `vbmc add`: refuse a BMC for a domain libvirtd does not know.
        virsh(paths, "dominfo", args.domain)
    with open(args.password_file) as fh:
        password = fh.read().strip()
    if not password:
        raise SystemExit("empty password in %s" % args.password_file)
    options = [
        ("username", args.user), ("password", password), ("port", str(args.port)),
        ("address", args.address), ("domain_name", args.domain),
        ("libvirt_uri", paths.uri), ("active", "True"),
    ]
    text = "[VirtualBMC]\n" + "".join("%s = %s\n" % kv for kv in options) + "\n"
    domain_dir = os.path.join(paths.vbmc_domains, args.domain)
    config = os.path.join(domain_dir, "config")
    with contextlib.suppress(FileNotFoundError), open(config) as fh:
        if fh.read() == text:
            print("unchanged")
            return 0
    existed = os.path.exists(config)
    os.makedirs(domain_dir, mode=0o700, exist_ok=True)
    # Atomic: vbmcd re-reads every config every 3 s and a half-written one
    # would crash its control loop.
    write_atomic(config, text, mode=0o600)
    if existed and args.netns:
        # A running BMC keeps its old settings: restart it through vbmcd.
        vbmc = _find_tool("vbmc", args.vbmc)
        for verb in ("stop", "start"):
            subprocess.run(["nsenter", "--net=/run/netns/%s" % args.netns, "--", vbmc, verb, args.domain],
                           env=_vbmc_env(paths), check=False, capture_output=True, timeout=30)
    print("changed")
    return 0


# ------------------------------------------------------------------ status


def _boot_devs(xml_text):
    dom = ET.fromstring(xml_text)
    devs = [b.get("dev") for b in dom.findall("os/boot")]
    if not devs:  # per-device <boot order='N'/> form
        ordered = []
        for dev in dom.find("devices") or []:
            boot = dev.find("boot")
            if boot is not None:
                kind = {"interface": "network", "disk": dev.get("device", "disk")}.get(dev.tag, dev.tag)
                ordered.append((int(boot.get("order", "0")), "hd" if kind == "disk" else kind))
        devs = [k for _o, k in sorted(ordered)]
    return devs


def host_pid(paths, ns_pid):
    """The host PID of a PID seen inside the lab's PID namespace."""
    try:
        with open(paths.init_pid) as fh:
            init = int(fh.read())
        target = os.stat("/proc/%d/ns/pid" % init)
    except (OSError, ValueError):
        return None
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            st = os.stat("/proc/%s/ns/pid" % entry)
            if (st.st_dev, st.st_ino) != (target.st_dev, target.st_ino):
                continue
            with open("/proc/%s/status" % entry) as fh:
                for line in fh:
                    if line.startswith("NSpid:"):
                        ids = line.split()[1:]
                        if int(ids[-1]) == ns_pid:
                            return int(entry)
        except (OSError, ValueError, IndexError):
            continue
    return None


def _tail(path, lines):
    try:
        with open(path, "rb") as fh:
            fh.seek(0, os.SEEK_END)
            size = fh.tell()
            fh.seek(max(0, size - 64 * 1024))
            data = fh.read().decode(errors="replace")
    except OSError:
        return None
    return "\n".join(data.replace("\r", "").splitlines()[-lines:])


def cmd_status(args):
    paths = Paths(args.state_dir)
    state = virsh(paths, "domstate", args.domain).stdout.strip()
    inactive = virsh(paths, "dumpxml", "--inactive", args.domain).stdout
    out = {"domain": args.domain, "state": state, "power": "on" if state in ("running", "paused") else "off",
           "boot_devices": _boot_devs(inactive), "boot_devices_live": None, "qemu_pid": None}
    if out["power"] == "on":
        out["boot_devices_live"] = _boot_devs(virsh(paths, "dumpxml", args.domain).stdout)
        with contextlib.suppress(OSError, ValueError):
            with open(os.path.join(paths.run, "qemu", args.domain + ".pid")) as fh:
                out["qemu_pid"] = host_pid(paths, int(fh.read()))
    log_el = ET.fromstring(inactive).find("devices/serial/log")
    out["console_log"] = log_el.get("file") if log_el is not None else None
    out["console_tail"] = _tail(out["console_log"], args.lines) if out["console_log"] else None
    bmc_conf = os.path.join(paths.vbmc_domains, args.domain, "config")
    if os.path.exists(bmc_conf):
        import configparser
        cp = configparser.ConfigParser()
        cp.read(bmc_conf)
        sec = cp["VirtualBMC"]
        out["bmc"] = {"address": sec.get("address"), "port": sec.getint("port"),
                      "username": sec.get("username"), "active": sec.get("active")}
    if args.json:
        print(json.dumps(out, indent=2))
    else:
        for key, value in out.items():
            if key != "console_tail":
                print("%s: %s" % (key, value))
        if out["console_tail"]:
            print("console:\n" + out["console_tail"])
    return 0


# -------------------------------------------------------------------- main


def build_parser():
    p = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    sub = p.add_subparsers(dest="cmd", required=True)

    def add(name, func, help_text):
        sp = sub.add_parser(name, help=help_text)
        sp.add_argument("--state-dir", required=True, help="this lab's libvirt/vbmc state directory")
        sp.set_defaults(func=func)
        return sp

    sp = add("libvirtd", cmd_libvirtd, "run libvirtd in the foreground, isolated")
    sp.add_argument("--netns", help="network namespace name (/run/netns/NAME)")
    sp.add_argument("--libvirtd", default=LIBVIRTD)
    sp = add("wait", cmd_wait, "wait until libvirtd answers")
    sp.add_argument("--timeout", type=float, default=60)
    add("uri", cmd_uri, "print the libvirt URI")
    sp = add("define", cmd_define, "define a node's domain (idempotent)")
    sp.add_argument("--node-json", required=True)
    sp.add_argument("--timeout", type=float, default=60, help="wait this long for libvirtd")
    sp = add("vbmcd", cmd_vbmcd, "run vbmcd in the foreground")
    sp.add_argument("--netns")
    sp.add_argument("--server-port", type=int, default=VBMC_SERVER_PORT,
                    help="vbmcd control port on the namespace's loopback")
    sp.add_argument("--vbmcd")
    sp = add("add-bmc", cmd_add_bmc, "configure the BMC of a domain")
    sp.add_argument("--domain", required=True)
    sp.add_argument("--address", required=True)
    sp.add_argument("--port", type=int, default=623)
    sp.add_argument("--user", required=True)
    sp.add_argument("--password-file", required=True)
    sp.add_argument("--netns", help="restart a changed BMC through vbmcd in this namespace")
    sp.add_argument("--server-port", type=int, default=VBMC_SERVER_PORT)
    sp.add_argument("--vbmc")
    sp = add("status", cmd_status, "power state, boot devices, console tail")
    sp.add_argument("--domain", required=True)
    sp.add_argument("--json", action="store_true")
    sp.add_argument("--lines", type=int, default=20)
    return p


def main(argv=None):
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except (RuntimeError, TimeoutError, subprocess.TimeoutExpired) as exc:
        print("gridops_lab_libvirt: %s: %s" % (args.cmd, exc), file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
