# Copyright: (c) 2026, gridops.metal developers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""QEMU (TCG) guests for the Molecule scenarios: up and down, leaving nothing behind.

    qemu_guest.py up   < SPEC.json      boot a guest, wait for SSH, print its connection as JSON
    qemu_guest.py down --state DIR      stop it and remove everything it made (idempotent)

SPEC: ``name``, ``state_base`` (the guest's files go to
``<state_base>/guest-<name>-<run suffix>``), ``image`` (the result of lab_artifact kind
disk_image: ``image``, ``vmlinuz``, ``initrd``, ``cmdline``,
``ssh_key_parameter``), and optional ``memory`` (MiB, 1024), ``cpus`` (2),
``disks`` (extra virtio disks vdb, vdc...: ``size`` such as 1G and
``content``: empty, ext4 or gpt), ``nics`` (extra NICs eth1, eth2... each on
QEMU hub ``hub``: NICs on one hub share a wire and nothing else, so no host
network is touched), ``timeout`` (seconds to wait for SSH, 300).

eth0 is user-mode networking, restricted (the guest reaches nothing outside)
with the guest's SSH forwarded to 127.0.0.1:<free port>.  The root disk is a
qcow2 overlay on the cached image; root's key is made for this guest and
given on the kernel command line.  QEMU runs under the lab's supervisor (a
child subreaper), so it is reaped on this machine whose PID 1 does not reap;
every file lives in the state directory, whose name carries the run suffix
(GRIDOPS_TEST_SUFFIX) so that tests/tiers.py can find leftovers.
"""
import base64
import json
import os
import signal
import socket
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
SUPERVISOR = os.path.join(HERE, "..", "..", "roles", "lab", "files", "gridops_lab_supervisor.py")
SUPERVISOR_MARKER = "gridops_lab_supervisor"
SSH_OPTIONS = ["-o", "BatchMode=yes", "-o", "StrictHostKeyChecking=no", "-o", "UserKnownHostsFile=/dev/null",
               "-o", "LogLevel=ERROR", "-o", "ConnectTimeout=10", "-o", "IdentitiesOnly=yes"]


def log(msg):
    sys.stderr.write("%s qemu_guest: %s\n" % (time.strftime("%H:%M:%S"), msg))
    sys.stderr.flush()


def run(argv, check=True, **kwargs):
    kwargs.setdefault("capture_output", True)
    return subprocess.run([str(a) for a in argv], check=check, **kwargs)


def free_port():
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def tail(path, lines=40):
    try:
        with open(path, errors="replace") as fh:
            return "\n".join(fh.read().splitlines()[-lines:])
    except OSError:
        return "(no %s)" % path


def make_disk(path, size, content):
    run(["truncate", "-s", size, path])
    if content == "ext4":
        run(["mke2fs", "-q", "-F", "-t", "ext4", "-L", "gridops-data", path])
    elif content == "gpt":
        run(["sfdisk", "-q", path], input=b"label: gpt\n,,L\n")
    elif content not in (None, "", "empty"):
        raise SystemExit("disk content %r: empty, ext4 or gpt" % content)


def qemu_argv(spec, state, port, key_b64):
    image = spec["image"]
    append = "%s %s=%s" % (image["cmdline"], image["ssh_key_parameter"], key_b64)
    argv = ["qemu-system-x86_64", "-name", "gridops-%s" % spec["name"], "-accel", "tcg",
            "-machine", "pc", "-m", str(spec.get("memory", 1024)), "-smp", str(spec.get("cpus", 2)),
            "-nodefaults", "-display", "none", "-vga", "none", "-no-user-config",
            "-kernel", image["vmlinuz"], "-initrd", image["initrd"], "-append", append,
            "-serial", "file:%s" % os.path.join(state, "serial.log"),
            "-pidfile", os.path.join(state, "qemu.pid"),
            "-drive", "file=%s,if=none,id=root,format=qcow2,cache=unsafe,discard=unmap" % os.path.join(state, "root.qcow2"),
            "-device", "virtio-blk-pci,drive=root,addr=0x10",
            "-netdev", "user,id=mgmt,restrict=on,hostfwd=tcp:127.0.0.1:%d-:22" % port,
            "-device", "virtio-net-pci,netdev=mgmt,mac=52:54:00:4d:00:00,addr=0x3"]
    for index, disk in enumerate(spec.get("disks", [])):
        path = os.path.join(state, "disk%d.raw" % (index + 1))
        argv += ["-drive", "file=%s,if=none,id=d%d,format=raw,cache=unsafe" % (path, index + 1),
                 "-device", "virtio-blk-pci,drive=d%d,addr=0x%x" % (index + 1, 0x11 + index)]
    for index, nic in enumerate(spec.get("nics", [])):
        argv += ["-netdev", "hubport,id=n%d,hubid=%d" % (index + 1, int(nic.get("hub", 1))),
                 "-device", "virtio-net-pci,netdev=n%d,mac=52:54:00:4d:%02x:%02x,addr=0x%x"
                 % (index + 1, int(nic.get("hub", 1)), index + 1, 0x4 + index)]
    return argv


def ssh_ready(key, port):
    res = run(["ssh", "-i", key, "-p", str(port)] + SSH_OPTIONS + ["root@127.0.0.1", "true"],
              check=False, timeout=60)
    return res.returncode == 0


def pid_cmdline(pid):
    try:
        with open("/proc/%d/cmdline" % pid, "rb") as fh:
            return fh.read().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""


def run_suffix():
    return os.environ.get("GRIDOPS_TEST_SUFFIX") or os.urandom(3).hex()


def up(spec):
    state = os.path.abspath(spec.get("state_dir") or os.path.join(
        spec["state_base"], "guest-%s-%s" % (spec["name"], run_suffix())))
    if os.path.exists(state):
        down(state)
    os.makedirs(state)
    started = time.monotonic()
    key = os.path.join(state, "id_ed25519")
    run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "molecule-%s" % spec["name"], "-f", key])
    with open(key + ".pub") as fh:
        key_b64 = base64.b64encode(fh.read().encode()).decode()
    run(["qemu-img", "create", "-q", "-f", "qcow2", "-F", "qcow2", "-b", spec["image"]["disk"],
         os.path.join(state, "root.qcow2")])
    for index, disk in enumerate(spec.get("disks", [])):
        make_disk(os.path.join(state, "disk%d.raw" % (index + 1)), disk.get("size", "1G"), disk.get("content"))
    port = free_port()
    config = {
        "pidfile": os.path.join(state, "supervisor.pid"),
        "log": os.path.join(state, "supervisor.log"),
        "loaded_file": os.path.join(state, "supervisor.loaded"),
        "services": [{"name": "qemu", "argv": qemu_argv(spec, state, port, key_b64),
                      "log": os.path.join(state, "qemu.log")}],
    }
    with open(os.path.join(state, "supervisor.json"), "w") as fh:
        json.dump(config, fh, indent=1)
    run([sys.executable, SUPERVISOR, "start", "--config", os.path.join(state, "supervisor.json")])
    deadline = time.monotonic() + int(spec.get("timeout", 300))
    while not ssh_ready(key, port):
        if time.monotonic() > deadline:
            detail = "QEMU log:\n%s\nserial console (tail):\n%s" % (
                tail(os.path.join(state, "qemu.log")), tail(os.path.join(state, "serial.log")))
            down(state)
            raise SystemExit("guest %s: no SSH on 127.0.0.1:%d after %ss\n%s"
                             % (spec["name"], port, spec.get("timeout", 300), detail))
        time.sleep(2)
    seconds = round(time.monotonic() - started, 1)
    log("guest %s up, SSH on 127.0.0.1:%d after %ss" % (spec["name"], port, seconds))
    return {"instance": spec["name"], "address": "127.0.0.1", "port": port, "user": "root",
            "identity_file": key, "state_dir": state, "boot_seconds": seconds}


def _stop(pid, marker, timeout):
    if pid <= 0 or marker not in pid_cmdline(pid):
        return
    os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and marker in pid_cmdline(pid):
        time.sleep(0.2)
    if marker in pid_cmdline(pid):
        os.kill(pid, signal.SIGKILL)


def down(state):
    """Stop the supervisor (it stops and reaps QEMU), kill what is left, remove the directory."""
    state = os.path.abspath(state)
    if not os.path.isdir(state):
        return {"state_dir": state, "removed": False}
    try:
        with open(os.path.join(state, "supervisor.pid")) as fh:
            pid = int(fh.read().strip() or 0)
    except (OSError, ValueError):
        pid = 0
    if pid and SUPERVISOR_MARKER in pid_cmdline(pid):
        _stop(pid, state, 20)
    # Anything still naming the state directory (a QEMU whose supervisor died) goes too.
    for entry in os.listdir("/proc"):
        if entry.isdigit() and int(entry) != os.getpid() and state in pid_cmdline(int(entry)):
            _stop(int(entry), state, 5)
    subprocess.run(["rm", "-rf", "--one-file-system", state], check=True)
    return {"state_dir": state, "removed": True}


def main(argv):
    if argv[:1] == ["up"]:
        print(json.dumps(up(json.load(sys.stdin))))
    elif len(argv) == 3 and argv[0] == "down" and argv[1] == "--state":
        print(json.dumps(down(argv[2])))
    else:
        raise SystemExit(__doc__)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
