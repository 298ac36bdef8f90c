"""The lab's `virtualbmc` BMC kind, end to end on real daemons.

roles/lab/files/gridops_lab_libvirt.py runs a private libvirtd (network
namespace of the lab, private mount and PID namespaces) and vbmcd; one node is
defined and driven over IPMI-over-LAN with ipmitool from inside the namespace.

Measured figures are printed on a `FIGURES` line (run pytest with -s).
"""
import json
import os
import pathlib
import re
import shutil
import subprocess
import sys
import time

import pytest

from gridops_test import net, procs

REPO = pathlib.Path(__file__).resolve().parents[2]
SCRIPT = REPO / "roles" / "lab" / "files" / "gridops_lab_libvirt.py"
BMC_IP = "10.213.0.102"
BMC_USER = "gridops"
BMC_PASSWORD = "lab-secret"

pytestmark = [pytest.mark.root, pytest.mark.qemu, pytest.mark.slow]


def _missing_tools():
    bindir = os.path.dirname(sys.executable)
    wanted = {"libvirtd": "/usr/sbin/libvirtd", "virsh": "/usr/bin/virsh",
              "vbmcd": os.path.join(bindir, "vbmcd"), "ipmitool": shutil.which("ipmitool") or "ipmitool",
              "qemu-system-x86_64": shutil.which("qemu-system-x86_64") or "qemu-system-x86_64"}
    return [name for name, path in wanted.items() if not os.path.exists(path)]


def script(*args, timeout=120):
    """Run a gridops_lab_libvirt.py subcommand with this interpreter (finds the venv's vbmc)."""
    return procs.run([sys.executable, str(SCRIPT)] + [str(a) for a in args], timeout=timeout)


def rss_kib(pid):
    try:
        with open("/proc/%d/status" % pid) as fh:
            for line in fh:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


def children(pid):
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open("/proc/%s/stat" % entry) as fh:
                    if int(fh.read().rsplit(")", 1)[1].split()[1]) == pid:
                        found.append(int(entry))
            except (OSError, ValueError, IndexError):
                continue
    return found


def comm(pid):
    try:
        with open("/proc/%d/comm" % pid) as fh:
            return fh.read().strip()
    except OSError:
        return ""


def qemu_pids(marker):
    """Host PIDs of QEMU processes whose command line mentions marker (our disk)."""
    pids = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open("/proc/%s/cmdline" % entry, "rb") as fh:
                    argv = fh.read().split(b"\0")
            except OSError:
                continue
            if argv and argv[0].endswith(b"qemu-system-x86_64") and any(marker.encode() in a for a in argv):
                if procs.pid_alive(int(entry)):
                    pids.append(int(entry))
    return pids


def test_virtualbmc_lab_node(netns, bridge, daemon_factory, tmp_path):
    missing = _missing_tools()
    if missing:
        pytest.skip("missing: %s" % ", ".join(missing))

    state = tmp_path / "lv"
    domain = net.unique_name("gtnode", maxlen=30)
    disk = tmp_path / "disk.img"
    console = tmp_path / "console.log"
    figures = {}

    def ipmi(*args):
        return netns.run(["ipmitool", "-I", "lanplus", "-C", "3", "-H", BMC_IP, "-p", "623",
                          "-U", BMC_USER, "-P", BMC_PASSWORD] + list(args), check=False, timeout=60)

    def status():
        return json.loads(script("status", "--state-dir", state, "--domain", domain, "--json",
                                 "--lines", "200").stdout)

    def console_text():
        try:
            return console.read_bytes().decode(errors="replace")
        except FileNotFoundError:
            return ""

    def virsh(*args):
        uri = script("uri", "--state-dir", state).stdout.strip()
        return procs.run(["virsh", "-q", "-c", uri] + list(args), check=False, timeout=60)

    libvirtd = vbmcd = None
    try:
        # -- libvirtd: ready when it answers on its socket in the state dir.
        start = time.monotonic()
        libvirtd = daemon_factory([sys.executable, str(SCRIPT), "libvirtd", "--state-dir", str(state),
                                   "--netns", netns.name], name="libvirtd")
        script("wait", "--state-dir", state, "--timeout", 60)
        figures["libvirtd_ready_s"] = round(time.monotonic() - start, 2)
        assert libvirtd.alive(), libvirtd.log()
        # Its bind mounts exist in its own mount namespace only.
        daemon_pid = next(p for p in netns.pids() if comm(p) == "libvirtd")
        inside = procs.run(["findmnt", "-rn", "-N", str(daemon_pid), "-o", "TARGET,SOURCE"]).stdout
        assert "/run/libvirt" in inside and str(state) in inside, inside
        outside = procs.run(["findmnt", "-rn", "-o", "TARGET,SOURCE"]).stdout
        assert str(state) not in outside and "/run/libvirt " not in outside, outside

        vbmcd = daemon_factory([sys.executable, str(SCRIPT), "vbmcd", "--state-dir", str(state),
                                "--netns", netns.name], name="vbmcd")

        # -- one node: sparse disk, network boot first.
        subprocess.run(["truncate", "-s", "1G", str(disk)], check=True)
        node = {"name": domain, "mac": "52:54:00:21:3b:02", "memory_mb": 256, "cpus": 1,
                "disk": str(disk), "bridge": bridge.name, "console_log": str(console),
                "default_boot": "network"}
        node_json = tmp_path / "node.json"
        node_json.write_text(json.dumps(node))
        start = time.monotonic()
        assert script("define", "--state-dir", state, "--node-json", node_json).stdout.strip() == "changed"
        figures["define_s"] = round(time.monotonic() - start, 2)
        # Idempotent: a second define changes nothing.
        before = virsh("dumpxml", "--inactive", domain).stdout
        assert script("define", "--state-dir", state, "--node-json", node_json).stdout.strip() == "unchanged"
        assert virsh("dumpxml", "--inactive", domain).stdout == before
        assert status()["boot_devices"] == ["network", "hd"]

        # -- its BMC at a secondary address of the bridge.
        net.ip("addr", "add", BMC_IP + "/24", "dev", bridge.name, netns=netns.name)
        password_file = tmp_path / "bmc.pass"
        password_file.write_text(BMC_PASSWORD + "\n")
        password_file.chmod(0o600)
        bmc_args = ["add-bmc", "--state-dir", state, "--domain", domain, "--address", BMC_IP,
                    "--port", "623", "--user", BMC_USER, "--password-file", password_file]
        assert script(*bmc_args).stdout.strip() == "changed"
        assert script(*bmc_args).stdout.strip() == "unchanged"

        # vbmcd starts new BMCs on its periodic sync (every 3 s).
        start = time.monotonic()

        def answered():
            res = ipmi("power", "status")
            return res if res.returncode == 0 else None

        res = procs.wait_for(answered, timeout=30, what="the BMC to answer")
        figures["bmc_answers_after_add_s"] = round(time.monotonic() - start, 2)
        assert "Chassis Power is off" in res.stdout
        assert qemu_pids(str(disk)) == []

        # -- power on: running, a QEMU process, network boot on the serial log.
        start = time.monotonic()
        res = ipmi("power", "on")
        assert res.returncode == 0, res.stderr

        def running():
            st = status()
            return st if st["state"] == "running" else None

        st = procs.wait_for(running, timeout=30, what="domain running")
        figures["power_on_to_running_s"] = round(time.monotonic() - start, 2)
        assert "Chassis Power is on" in ipmi("power", "status").stdout
        pid = st["qemu_pid"]
        assert pid and qemu_pids(str(disk)) == [pid]
        procs.wait_for(lambda: "iPXE" in console_text(), timeout=60, what="iPXE text on the serial console")
        figures["power_on_to_ipxe_text_s"] = round(time.monotonic() - start, 2)
        # iPXE names our NIC (its fixed MAC) when it starts configuring it.
        procs.wait_for(lambda: node["mac"] in console_text().lower(), timeout=60,
                       what="iPXE configuring net0 (%s)" % node["mac"])
        figures["power_on_to_net0_config_s"] = round(time.monotonic() - start, 2)
        assert "SeaBIOS" in console_text()

        # Memory of an idle node and of the daemons.
        time.sleep(2)
        lv_pids = [p for p in netns.pids() if comm(p) == "libvirtd"]
        vb_pids = [vbmcd.pid] + children(vbmcd.pid)
        figures["rss_kib"] = {
            "libvirtd": sum(rss_kib(p) for p in lv_pids),
            "libvirtd_wrappers": rss_kib(libvirtd.pid) + sum(rss_kib(p) for p in children(libvirtd.pid)),
            "vbmcd_and_bmcs": sum(rss_kib(p) for p in vb_pids),
            "vbmc_processes": len(vb_pids),
            "qemu_node_256M": rss_kib(pid),
        }

        # -- power off: shut off, QEMU gone (and reaped inside the namespace).
        res = ipmi("power", "off")
        assert res.returncode == 0, res.stderr
        procs.wait_for(lambda: status()["state"] == "shut off", timeout=30, what="domain shut off")
        procs.wait_for(lambda: qemu_pids(str(disk)) == [], timeout=15, what="QEMU gone")
        assert "Chassis Power is off" in ipmi("power", "status").stdout

        # -- boot device: disk first in the domain XML.
        res = ipmi("chassis", "bootdev", "disk")
        assert res.returncode == 0, res.stderr
        assert status()["boot_devices"][0] == "hd"
        assert "Hard-Drive" in ipmi("chassis", "bootparam", "get", "5").stdout
        xml = virsh("dumpxml", "--inactive", domain).stdout
        assert re.search(r"<boot dev='hd'/>", xml) and "useserial='yes'" in xml, xml

        # Takes effect at the next power on: SeaBIOS now tries the disk.
        offset = len(console_text())
        assert ipmi("power", "on").returncode == 0
        procs.wait_for(lambda: "Booting from Hard Disk" in console_text()[offset:], timeout=60,
                       what="boot from disk")
        pid = status()["qemu_pid"]
        assert pid

        # -- power cycle is refused by vbmc (known, see MACHINE.md) ...
        res = ipmi("power", "cycle")
        assert res.returncode != 0
        assert "Invalid data field in request" in (res.stderr + res.stdout), res
        assert status()["state"] == "running" and status()["qemu_pid"] == pid

        # ... while power reset works: same QEMU process, firmware starts again.
        offset = len(console_text())
        res = ipmi("power", "reset")
        assert res.returncode == 0, res.stderr
        procs.wait_for(lambda: "SeaBIOS" in console_text()[offset:], timeout=60, what="reset to reach SeaBIOS")
        assert status()["qemu_pid"] == pid

        assert ipmi("power", "off").returncode == 0
        procs.wait_for(lambda: status()["state"] == "shut off", timeout=30, what="domain shut off")
    finally:
        # Domains first (while libvirtd is up), then the daemons.
        if libvirtd is not None and libvirtd.alive():
            virsh("destroy", domain)
            virsh("undefine", domain)
        start = time.monotonic()
        if vbmcd is not None:
            vbmcd.stop()
        if libvirtd is not None:
            libvirtd.stop()
            figures["libvirtd_stop_s"] = round(time.monotonic() - start, 2)
        procs.reap_orphans()
        print("\nFIGURES %s" % json.dumps(figures, sort_keys=True))

    # -- nothing left: processes, QEMU, mounts.
    assert libvirtd.proc.returncode is not None and vbmcd.proc.returncode is not None
    assert libvirtd.proc.returncode == 0, libvirtd.log()
    assert netns.pids() == []
    assert qemu_pids(str(disk)) == []
    mounts = procs.run(["findmnt", "-rn", "-o", "TARGET,SOURCE"]).stdout
    assert str(tmp_path) not in mounts
    assert not os.path.exists(state / "nsinit.pid")


def test_libvirtd_sigterm_powers_off_running_domains(netns, bridge, daemon_factory, tmp_path):
    """Stopping libvirtd with a node running leaves no QEMU, process or mount behind."""
    missing = _missing_tools()
    if missing:
        pytest.skip("missing: %s" % ", ".join(missing))
    state = tmp_path / "lv"
    disk = tmp_path / "disk.img"
    subprocess.run(["truncate", "-s", "64M", str(disk)], check=True)
    node = {"name": net.unique_name("gtnode", maxlen=30), "mac": "52:54:00:21:3b:03", "memory_mb": 128,
            "cpus": 1, "disk": str(disk), "bridge": bridge.name, "console_log": str(tmp_path / "console.log")}
    (tmp_path / "node.json").write_text(json.dumps(node))
    libvirtd = daemon_factory([sys.executable, str(SCRIPT), "libvirtd", "--state-dir", str(state),
                               "--netns", netns.name], name="libvirtd")
    script("wait", "--state-dir", state, "--timeout", 60)
    # A second libvirtd on the same state dir refuses to start.
    second = subprocess.run([sys.executable, str(SCRIPT), "libvirtd", "--state-dir", str(state),
                             "--netns", netns.name], capture_output=True, text=True, timeout=30, check=False)
    assert second.returncode != 0 and "already runs" in second.stderr
    script("define", "--state-dir", state, "--node-json", tmp_path / "node.json")
    uri = script("uri", "--state-dir", state).stdout.strip()
    procs.run(["virsh", "-c", uri, "start", node["name"]])
    procs.wait_for(lambda: qemu_pids(str(disk)), timeout=30, what="QEMU started")

    start = time.monotonic()
    rc = libvirtd.stop()
    took = time.monotonic() - start
    print("\nFIGURES %s" % json.dumps({"libvirtd_stop_with_running_node_s": round(took, 2)}))
    assert rc == 0, libvirtd.log()
    assert took < 8, "libvirtd took %.1f s to stop" % took
    assert qemu_pids(str(disk)) == []
    assert netns.pids() == []
    assert str(tmp_path) not in procs.run(["findmnt", "-rn", "-o", "TARGET,SOURCE"]).stdout
    # The definition persists in the state dir for the next start.
    assert (state / "etc" / "libvirt" / "qemu" / (node["name"] + ".xml")).exists()
