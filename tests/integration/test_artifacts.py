"""The artifact builder end to end: boot the kernel + initramfs, run the images.

Guests run under QEMU TCG with the serial console on a socket (so the test can
type on it) that also logs to a file.  Build and boot figures are printed on
`FIGURES` lines (run pytest with -s): a result's ``build_seconds`` is the cold
build that made the artifact, ``seconds`` what this call took.
"""
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import time

import pytest

from gridops_test import artifacts, net, procs

READY = re.compile(r"GRIDOPS-INITRAMFS-READY ip=(\S+)")
GUEST_MAC = "52:54:00:21:30:17"
GUEST_IP = "10.213.0.117"


def figures(label, **values):
    print("FIGURES %s %s" % (label, json.dumps(values, sort_keys=True)), flush=True)


def built(label, result, again):
    """Print the cold build figure of result and the time of a second (cached) call."""
    assert again["changed"] is False and again["key"] == result["key"]
    figures(label, key=result["key"][:12], build_seconds=result["build_seconds"],
            first_call_seconds=result["seconds"], cached_call_seconds=again["seconds"],
            size=result.get("size"))


class Guest:
    """A QEMU TCG guest booting kernel + initramfs, its console on a socket and a log."""

    def __init__(self, daemon_factory, tmp_path, initramfs, append, nic=None, netns=None):
        self.log = tmp_path / "serial.log"
        self.sock = tmp_path / "console.sock"
        argv = ["qemu-system-x86_64", "-accel", "tcg", "-m", "256", "-smp", "1",
                "-display", "none", "-monitor", "none", "-no-reboot",
                "-chardev", "socket,id=con0,path=%s,server=on,wait=off,logfile=%s" % (self.sock, self.log),
                "-serial", "chardev:con0",
                "-kernel", initramfs["vmlinuz"], "-initrd", initramfs["initramfs"],
                "-append", "console=ttyS0 loglevel=4 panic=-1 " + append]
        if nic:
            argv += ["-netdev", "tap,id=n0,ifname=%s,script=no,downscript=no" % nic,
                     "-device", "virtio-net-pci,netdev=n0,mac=%s" % GUEST_MAC]
        else:
            argv += ["-nic", "none"]
        self.started = time.monotonic()
        self.daemon = daemon_factory(argv, netns=netns, name="qemu")

    def console(self):
        try:
            return self.log.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def wait_for(self, pattern, timeout=180):
        """Wait until pattern shows on the console; return the match."""
        def seen():
            match = re.search(pattern, self.console())
            if match is None and not self.daemon.alive():
                raise AssertionError("QEMU exited before %r:\n%s\n%s" % (pattern, self.daemon.log(), self.console()))
            return match
        try:
            return procs.wait_for(seen, timeout, interval=0.2, what=pattern)
        except TimeoutError:
            raise AssertionError("no %r on the console after %ss:\n%s" % (pattern, timeout, self.console()))

    def type(self, text):
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as conn:
            conn.connect(str(self.sock))
            conn.sendall(text.encode())
            time.sleep(0.5)

    def wait_exit(self, timeout=60):
        try:
            return self.daemon.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            raise AssertionError("QEMU still running after %ss:\n%s" % (timeout, self.console()))


@pytest.mark.root
@pytest.mark.qemu
def test_initramfs_boots_and_powers_off_from_the_console(guest_initramfs, daemon_factory, tmp_path):
    built("initramfs", guest_initramfs, artifacts.initramfs(cache_dir=guest_initramfs["cache_dir"]))
    built("kernel", guest_initramfs["kernel"], artifacts.kernel(cache_dir=guest_initramfs["cache_dir"]))
    guest = Guest(daemon_factory, tmp_path, guest_initramfs, "gridops.net=0")
    ready = guest.wait_for(READY.pattern)
    boot = time.monotonic() - guest.started
    assert ready.group(1) == "none"
    assert "GRIDOPS-INITRAMFS-START kernel=%s" % guest_initramfs["kernel_version"] in guest.console()
    assert "ERROR" not in guest.console().split("GRIDOPS-INITRAMFS-START", 1)[1]
    guest.type("\n")
    guest.wait_for(r"gridops-initramfs|# ", timeout=30)   # the console shell answers
    guest.type("poweroff\n")
    assert guest.wait_exit() == 0
    assert "GRIDOPS-INITRAMFS-POWEROFF" in guest.console()
    figures("initramfs-boot", ready_seconds=round(boot, 1),
            poweroff_seconds=round(time.monotonic() - guest.started - boot, 1))


@pytest.mark.root
@pytest.mark.qemu
def test_initramfs_hooks_and_extra_files(guest_kernel, daemon_factory, tmp_path):
    hooked = artifacts.initramfs(
        cache_dir=guest_kernel["cache_dir"], hostname="gridops-hooked",
        files=[{"path": "/usr/local/bin/hello", "mode": "0755",
                "content": "#!/bin/sh\necho HELLO-FROM-CMDLINE-HOOK $(cat /etc/gridops/greeting)\n"},
               {"path": "/etc/gridops/greeting", "content": "hi\n"}],
        init_hook='echo "RECIPE-HOOK on $(hostname)"\n')
    figures("initramfs-hooked", build_seconds=hooked["build_seconds"], changed=hooked["changed"], size=hooked["size"])
    guest = Guest(daemon_factory, tmp_path, hooked,
                  "gridops.net=0 gridops.hook=/usr/local/bin/hello gridops.poweroff")
    assert guest.wait_exit(timeout=180) == 0   # gridops.poweroff: off by itself
    console = guest.console()
    order = ["RECIPE-HOOK on gridops-hooked", "GRIDOPS-INITRAMFS-READY ip=none", "HELLO-FROM-CMDLINE-HOOK hi",
             "GRIDOPS-INITRAMFS-HOOK-DONE rc=0", "GRIDOPS-INITRAMFS-POWEROFF"]
    positions = [console.find(marker) for marker in order]
    assert -1 not in positions and positions == sorted(positions), console


@pytest.mark.root
@pytest.mark.qemu
def test_initramfs_dhcp_and_ssh(guest_initramfs_ssh, guest_ssh_key, netns, bridge, tap_factory,
                                daemon_factory, tmp_path):
    if not shutil.which("ssh"):
        pytest.skip("no ssh client")
    assert guest_initramfs_ssh["ssh"] is True
    tap = tap_factory(bridge)
    daemon_factory(["dnsmasq", "-d", "--conf-file=/dev/null", "--port=0", "--pid-file=",
                    "--user=root", "--interface=%s" % bridge.name, "--bind-interfaces",
                    "--dhcp-range=10.213.0.100,10.213.0.150,255.255.255.0,1h",
                    "--dhcp-host=%s,%s" % (GUEST_MAC, GUEST_IP),
                    "--dhcp-leasefile=%s" % (tmp_path / "leases"), "--log-dhcp"],
                   netns=netns.name, name="dnsmasq")
    guest = Guest(daemon_factory, tmp_path, guest_initramfs_ssh, "", nic=tap.name, netns=netns.name)
    ready = guest.wait_for(READY.pattern)
    boot = time.monotonic() - guest.started
    assert ready.group(1) == GUEST_IP
    ssh = ["ssh", "-i", guest_ssh_key["private"], "-o", "BatchMode=yes", "-o", "StrictHostKeyChecking=no",
           "-o", "UserKnownHostsFile=/dev/null", "-o", "ConnectTimeout=20", "-o", "LogLevel=ERROR",
           "root@%s" % GUEST_IP]
    start = time.monotonic()
    res = netns.run(ssh + ["uname", "-r"], check=False, timeout=120)
    ssh_seconds = time.monotonic() - start
    assert res.returncode == 0, res.stderr
    assert res.stdout.strip() == guest_initramfs_ssh["kernel_version"]
    denied = netns.run(["ssh", "-o", "BatchMode=yes", "-o", "StrictHostKeyChecking=no", "-o", "IdentitiesOnly=yes",
                        "-o", "IdentityFile=/dev/null", "-o", "UserKnownHostsFile=/dev/null",
                        "-o", "LogLevel=ERROR", "root@%s" % GUEST_IP, "true"], check=False, timeout=60)
    assert denied.returncode != 0
    netns.run(ssh + ["poweroff"], check=False, timeout=60)
    assert guest.wait_exit() == 0
    figures("initramfs-dhcp-ssh", ready_seconds=round(boot, 1), first_ssh_seconds=round(ssh_seconds, 1))


def _podman(*args, check=True, timeout=120):
    return procs.run(["podman"] + list(args), check=check, timeout=timeout)


def _run_systemd_container(image, checks):
    name = net.unique_name("gart", maxlen=40)
    start = time.monotonic()
    try:
        _podman("run", "-d", "--rm", "--systemd=always", "--name", name, image)

        def system_state():
            # Until systemd has made its private socket, systemctl cannot connect: no state yet.
            res = _podman("exec", name, "systemctl", "is-system-running", "--wait", check=False, timeout=180)
            return res if res.stdout.strip() else None

        state = procs.wait_for(system_state, timeout=120, interval=0.5, what="systemd in %s" % name)
        seconds = time.monotonic() - start
        failed = _podman("exec", name, "systemctl", "--failed", "--no-legend", check=False).stdout
        assert state.stdout.strip() in ("running", "degraded"), (state.stdout, state.stderr, failed)
        for argv in checks:
            res = _podman("exec", name, *argv, check=False)
            assert res.returncode == 0, (argv, res.stdout, res.stderr)
        return seconds
    finally:
        _podman("rm", "-f", "-t", "0", name, check=False)
        procs.reap_orphans()


@pytest.mark.root
@pytest.mark.qemu
@pytest.mark.parametrize("fixture, packages", [
    ("systemd_image", ()),
    ("deploy_server_image", artifacts.DEPLOY_SERVER_PACKAGES),
])
def test_container_image_runs_systemd(fixture, packages, request):
    image = request.getfixturevalue(fixture)
    again = artifacts.engine().container_image(image["recipe"], cache_dir=image["cache_dir"])
    built(fixture + ".rootfs", image["rootfs"], again["rootfs"])
    built(fixture, image, again)
    assert image["image"].startswith("localhost/%s:%s" % (image["recipe"]["name"], image["key"][:12]))
    with open(image["rootfs"]["manifest"]) as fh:
        installed = set(line.split("\t")[0] for line in fh)
    wanted = set(artifacts.engine().CONTAINER_BASE_PACKAGES) | set(packages)
    assert wanted <= installed, wanted - installed
    seconds = _run_systemd_container(image["image"], [
        ["python3", "-c", "import apt; assert apt.Cache()['systemd'].is_installed"],
        ["sh", "-c", "ls /var/lib/apt/lists/*_Packages"],
        ["test", "-s", "/etc/machine-id"],
    ] + ([["dpkg-query", "-W"] + list(packages)] if packages else []))
    figures(fixture + "-run", running_seconds=round(seconds, 1), image=image["image"],
            rootfs_size=image["rootfs"]["size"], packages=image["rootfs"]["package_count"])


def test_module_check_mode_and_reuse(guest_initramfs, tmp_path):
    """lab_artifact through Ansible: a cached artifact is unchanged; check mode builds nothing."""
    def module(args, check=False, ok=True):
        argv = [os.path.join(os.path.dirname(sys.executable), "ansible"), "localhost", "-i", "localhost,",
                "-c", "local", "-m", "gridops.metal.lab_artifact", "-a", json.dumps(args)]
        env = dict(os.environ, ANSIBLE_LOAD_CALLBACK_PLUGINS="1", ANSIBLE_STDOUT_CALLBACK="json",
                   ANSIBLE_PYTHON_INTERPRETER=sys.executable)
        res = subprocess.run(argv + (["--check"] if check else []), capture_output=True, text=True,
                             env=env, timeout=300, check=False)
        assert (res.returncode == 0) == ok, res.stdout + res.stderr
        return json.loads(res.stdout)["plays"][0]["tasks"][0]["hosts"]["localhost"]

    cache_dir = guest_initramfs["cache_dir"]
    same = module({"kind": "initramfs", "cache_dir": cache_dir})
    assert same["changed"] is False and same["key"] == guest_initramfs["key"]
    assert same["initramfs"] == guest_initramfs["initramfs"] and same["vmlinuz"] == guest_initramfs["vmlinuz"]
    new_recipe = {"hostname": "never-built-%s" % net.run_suffix()}
    planned = module({"kind": "initramfs", "cache_dir": cache_dir, "recipe": new_recipe}, check=True)
    assert planned["changed"] is True and planned["key"] != guest_initramfs["key"]
    assert not os.path.exists(planned["path"])
    bad = module({"kind": "rootfs", "cache_dir": cache_dir, "recipe": {"packges": ["x"]}}, check=True, ok=False)
    assert bad["failed"] is True and "unknown option(s) packges" in bad["msg"]
