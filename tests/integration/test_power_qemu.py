"""gridops.metal.power on real machines: QEMU (TCG) nodes behind both BMC kinds.

* ipmi_sim: the lab's node script (roles/lab/files/gridops_lab_node.py) is the
  chassis control, so on/off/reset/cycle start and stop a QEMU process and the
  boot device decides what SeaBIOS boots next ("Booting from ROM" is iPXE,
  "Booting from Hard Disk" the empty disk);
* virtualbmc over a private libvirtd (roles/lab/files/gridops_lab_libvirt.py):
  its session quirk (SHA-1 answer to a SHA-256 offer) and its refusal of
  `power cycle` must be handled by the module;
* the escalation ladder on machines: a node PXE-booted into a ramdisk with sshd
  reboots at the soft level, one without sshd at the hard level, and one whose
  BMC is broken (wrong password, then ipmi_sim stopped) through the operator's
  command, here the lab's "PDU": the node script's `power cycle`.

Every state is cross-checked with `ipmitool -I lanplus -C 3` and the QEMU
process itself.
"""
import json
import os
import shutil
import time

import pytest

from gridops_test import bmcs, procs

pytestmark = [pytest.mark.root, pytest.mark.qemu, pytest.mark.slow]


def _need(*tools):
    missing = [t for t in tools if not shutil.which(t)]
    if missing:
        pytest.skip("missing: %s" % ", ".join(missing))


def one(ns, node, **request):
    (res,) = bmcs.run_engine(ns, [node], **request)["results"]
    assert not res["failed"], res["error"]
    return res


@pytest.fixture
def qemu_node(netns, bridge, tap_factory, tmp_path):
    _need("ipmi_sim", "ipmitool", "qemu-system-x86_64")
    node = bmcs.QemuNode(netns, bridge, tap_factory(bridge), tmp_path / "nodes", "52:54:00:21:50:01",
                         "10.213.0.151")
    try:
        yield node.start()
    finally:
        node.close()


def test_ipmi_sim_node(qemu_node, netns):
    ns, node = netns.name, qemu_node
    target = node.node()

    res = one(ns, target, state="query")
    assert res["previous_power"] == res["power"] == "off" and not res["changed"]
    assert node.qemu_pid() is None

    # on, from the disk (a one-time request, used by this power-on).
    node.mark_console()
    res = one(ns, target, state="on", boot_device="disk")
    assert res["actions"] == ["boot device disk (next boot)", "on"] and res["power"] == "on"
    pid = node.qemu_pid()
    assert pid and bmcs.ipmitool_power(ns, node.bmc_address) == "on"
    assert node.first_boot_device() == "Hard Disk"
    assert node.status()["last_boot_device"] == "disk"

    # query changes nothing.
    res = one(ns, target, state="query")
    assert not res["changed"] and res["power"] == "on" and node.qemu_pid() == pid

    # reset: a new boot; the one-time disk is spent, network first again.
    node.mark_console()
    res = one(ns, target, state="reset")
    assert res["actions"] == ["reset"]
    new_pid = node.qemu_pid()
    assert new_pid and new_pid != pid
    assert node.first_boot_device() == "ROM"
    pid = new_pid

    # pxe over a persistent disk: the override wins for one boot (cycle).
    node.cli("bootdev", "set", "disk", "--persistent")
    node.mark_console()
    res = one(ns, target, state="cycle", boot_device="pxe")
    assert res["actions"] == ["boot device pxe (next boot)", "cycle"] and res["power"] == "on"
    new_pid = node.qemu_pid()
    assert new_pid and new_pid != pid
    assert node.first_boot_device() == "ROM"
    assert bmcs.ipmitool_power(ns, node.bmc_address) == "on"

    # ... and the next boot follows the persistent disk again.
    node.mark_console()
    one(ns, target, state="cycle")
    assert node.first_boot_device() == "Hard Disk"

    # off, through the module this time.
    res, _wall = bmcs.run_module(ns, {"nodes": [target], "state": "off"})
    assert not res.get("failed") and res["nodes"][node.name]["actions"] == ["off"]
    assert node.qemu_pid() is None
    assert bmcs.ipmitool_power(ns, node.bmc_address) == "off"


@pytest.fixture
def vbmc_lab(netns, bridge, tmp_path):
    _need("libvirtd", "virsh", "ipmitool", "qemu-system-x86_64")
    if not os.path.exists(os.path.join(os.path.dirname(os.sys.executable), "vbmcd")):
        pytest.skip("virtualbmc missing")
    lab = bmcs.VirtualBmcLab(netns, bridge, tmp_path)
    try:
        yield lab.start()
    finally:
        lab.close()


def test_virtualbmc_node(vbmc_lab, netns):
    ns, lab = netns.name, vbmc_lab
    name = bmcs.net.unique_name("gpv", maxlen=30)
    target = lab.add(name, "52:54:00:21:50:02", "10.213.0.152")
    address = target["bmc_address"]

    # The SHA-1 answer to pyghmi's SHA-256 offer is followed, not fatal.
    res = one(ns, target, state="query")
    assert res["power"] == "off" and res["bmc_auth"] == "RAKP-HMAC-SHA1"
    assert lab.qemu_pid(name) is None

    # vbmc reports the domain's first boot device as a valid request: network,
    # already what is asked, so nothing is set.
    lab.mark_console(name)
    res = one(ns, target, state="on", boot_device="pxe")
    assert res["actions"] == ["on"] and res["power"] == "on"
    assert res["previous_boot_device"]["device"] == res["boot_device"]["device"] == "pxe"
    pid = lab.qemu_pid(name)
    assert pid and bmcs.ipmitool_power(ns, address) == "on"
    assert lab.first_boot_device(name) == "ROM"

    # vbmc refuses `power cycle` (ipmitool shows it); the module powers off, then on.
    # It also keeps reporting the running machine's device until then: the new
    # one is checked after the power-on, without a warning.
    refused = bmcs.ipmitool(ns, address, "chassis", "power", "cycle")
    assert refused.returncode != 0 and "Invalid data field" in refused.stdout + refused.stderr
    lab.mark_console(name)
    res = one(ns, target, state="cycle", boot_device="disk")
    assert res["actions"] == ["boot device disk (next boot)", "off+on"] and res["power"] == "on"
    assert res["boot_device"]["device"] == "disk" and res["warnings"] == []
    new_pid = lab.qemu_pid(name)
    assert new_pid and new_pid != pid
    assert lab.first_boot_device(name) == "Hard Disk"
    assert bmcs.ipmitool_bootdev(ns, address) == "Force Boot from default Hard-Drive"

    # reset keeps the QEMU process (libvirt resets the machine in place), and
    # with it the old boot device: the result warns.
    lab.mark_console(name)
    res = one(ns, target, state="reset", boot_device="pxe")
    assert res["actions"] == ["boot device pxe (next boot)", "reset"] and lab.qemu_pid(name) == new_pid
    assert res["warnings"] == ["the BMC accepted boot device pxe but still reports disk: it may apply it only "
                               "at the next power-on (state=cycle powers off and on)"]
    assert lab.first_boot_device(name) == "Hard Disk"

    # A reboot at the hard level on this BMC goes off, then on: now pxe.  (The
    # BMC still reports disk, so pxe is asked for again.)
    lab.mark_console(name)
    res = one(ns, target, state="reboot", boot_device="pxe")
    assert res["level"] == "hard" and res["actions"] == ["boot device pxe (next boot)", "off+on"]
    assert res["boot_device"]["device"] == "pxe" and res["warnings"] == []
    assert lab.qemu_pid(name) not in (None, new_pid)
    assert lab.first_boot_device(name) == "ROM"

    res, _wall = bmcs.run_module(ns, {"nodes": [target], "state": "off"})
    assert not res.get("failed") and res["nodes"][name]["power"] == "off"
    procs.wait_for(lambda: lab.qemu_pid(name) is None, 30, what="QEMU gone")
    assert bmcs.ipmitool_power(ns, address) == "off"


TFTP_FILES = {"pxelinux.0": "/usr/lib/PXELINUX/pxelinux.0", "ldlinux.c32": "/usr/lib/syslinux/modules/bios/ldlinux.c32"}
PXELINUX_CFG = """DEFAULT ramdisk
PROMPT 0
LABEL ramdisk
  KERNEL vmlinuz
  INITRD initrd.img
  APPEND console=ttyS0 loglevel=4 panic=-1
"""


def test_escalation_levels_on_machines(netns, bridge, tap_factory, daemon_factory, tmp_path, guest_initramfs_ssh,
                                       guest_ssh_key):
    """One task, three outcomes: soft where sshd runs, hard where it does not, very hard where the BMC is broken."""
    _need("ipmi_sim", "ipmitool", "qemu-system-x86_64", "dnsmasq", "ssh")
    if not all(os.path.exists(p) for p in TFTP_FILES.values()):
        pytest.skip("pxelinux missing")
    tftp = tmp_path / "tftp"
    (tftp / "pxelinux.cfg").mkdir(parents=True)
    for name, src in TFTP_FILES.items():
        shutil.copy(src, tftp / name)
    shutil.copy(guest_initramfs_ssh["vmlinuz"], tftp / "vmlinuz")
    shutil.copy(guest_initramfs_ssh["initramfs"], tftp / "initrd.img")
    (tftp / "pxelinux.cfg" / "default").write_text(PXELINUX_CFG)

    parent = tmp_path / "nodes"
    sshd = bmcs.QemuNode(netns, bridge, tap_factory(bridge), parent, "52:54:00:21:50:11", "10.213.0.161")
    plain = bmcs.QemuNode(netns, bridge, tap_factory(bridge), parent, "52:54:00:21:50:12", "10.213.0.162")
    # Only the node with sshd gets an address: the other loops in iPXE, unreachable.
    daemon_factory(["dnsmasq", "-k", "--conf-file=/dev/null", "--port=0", "--pid-file=", "--user=root",
                    "--interface=%s" % bridge.name, "--bind-interfaces", "--dhcp-range=10.213.0.0,static",
                    "--dhcp-host=%s,10.213.0.21" % sshd.mac, "--dhcp-leasefile=%s" % (tmp_path / "leases"),
                    "--dhcp-boot=pxelinux.0", "--enable-tftp", "--tftp-root=%s" % tftp]
                   + bridge.dnsmasq_ra_options(), netns=netns.name, name="dnsmasq")
    try:
        sshd.start()
        plain.start()
        ns = netns.name
        nodes = [sshd.node(host="10.213.0.21"), plain.node(host="10.213.0.22")]
        sshd.mark_console()
        start = time.monotonic()
        res, _wall = bmcs.run_module(ns, {"nodes": nodes, "state": "on"})
        assert res["changed_nodes"] == [sshd.name, plain.name], res
        sshd.wait_console(r"GRIDOPS-INITRAMFS-READY ip=10\.213\.0\.21", timeout=120)
        figures = {"power_on_to_ssh_ramdisk_s": round(time.monotonic() - start, 1)}
        pids = {sshd.name: sshd.qemu_pid(), plain.name: plain.qemu_pid()}

        # The "PDU" of the lab: the node script power-cycles the QEMU process itself.
        pdu = [bmcs.SYSTEM_PYTHON, str(bmcs.NODE_SCRIPT), "%s/{name}" % parent, "power", "cycle"]
        ladder = {"state": "reboot", "login_timeout": 3,
                  "soft": {"private_key": guest_ssh_key["private"], "connect_timeout": 3, "timeout": 30},
                  "hard": {"timeout": 30}, "very_hard": {"command": pdu, "timeout": 60}}
        sshd.mark_console()
        res, wall = bmcs.run_module(ns, dict(ladder, nodes=nodes))
        figures["ladder_task_s"] = round(wall, 1)
        figures["ladder_levels_s"] = dict((r["name"][:3] + str(i), [a["elapsed"] for a in r["attempts"]])
                                          for i, r in enumerate(res["nodes"].values()))
        assert not res.get("failed") and res["failed_nodes"] == [], res
        soft, hard = res["nodes"][sshd.name], res["nodes"][plain.name]
        assert soft["level"] == "soft" and soft["actions"] == ["ssh reboot"]
        # The guest rebooted itself: same QEMU process, a new firmware run on its console.
        assert sshd.qemu_pid() == pids[sshd.name]
        sshd.wait_console(r"GRIDOPS-INITRAMFS-POWEROFF[\s\S]*iPXE", timeout=60)
        assert hard["level"] == "hard" and hard["actions"] == ["cycle"]
        assert [a["level"] for a in hard["attempts"]] == ["soft", "hard"]
        assert hard["attempts"][0]["error"].startswith("ssh root@10.213.0.22:22: ")
        assert plain.qemu_pid() not in (None, pids[plain.name])
        pids[plain.name] = plain.qemu_pid()

        # A wrong password: the BMC refuses the hard level, the PDU cycles the node.
        res, wall = bmcs.run_module(ns, dict(ladder, nodes=[plain.node(host="10.213.0.22",
                                                                       bmc_password="not-the-password")]))
        figures["wrong_password_task_s"] = round(wall, 1)
        broken = res["nodes"][plain.name]
        assert broken["level"] == "very_hard" and not broken["failed"], broken
        assert "login refused: Incorrect password provided" in broken["attempts"][1]["error"]
        assert plain.qemu_pid() not in (None, pids[plain.name])
        pids[plain.name] = plain.qemu_pid()

        # A stopped BMC: no answer, the PDU again.
        plain.stop_bmc()
        res, wall = bmcs.run_module(ns, dict(ladder, nodes=[plain.node(host="10.213.0.22")]))
        figures["stopped_bmc_task_s"] = round(wall, 1)
        broken = res["nodes"][plain.name]
        assert broken["level"] == "very_hard" and broken["power"] is None, broken
        assert "no answer within 3s" in broken["attempts"][1]["error"]
        assert plain.qemu_pid() not in (None, pids[plain.name])
        print("\nFIGURES %s" % json.dumps(figures, sort_keys=True))
    finally:
        plain.close()
        sshd.close()
