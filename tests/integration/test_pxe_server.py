"""pxe_server and netboot against real network boots.

A deploy server container (the lab's image) in a namespace of its own, linked
by a veth to a bridge in a second namespace, configured by playbooks/pxe.yml;
a QEMU (TCG) machine on a tap of that bridge boots from it:

* over pxelinux and TFTP, then over iPXE and HTTP, into the test ramdisk
  (GRIDOPS-INITRAMFS-READY on its serial console);
* as a UEFI machine (OVMF's own PXE) through syslinux.efi, and through
  iPXE's snponly.efi then HTTP;
* after ``netboot`` switched it to ``local``, into its disk;
* as an unknown client, into the default profile;
* with the server in proxy-DHCP mode next to another DHCP server.

Idempotence and the server's sockets and files are the Molecule scenario's
(molecule/pxe_server); this module is about what the nodes do.

Figures (power-on to ramdisk userspace per loader, converge times, 1,000
profiles through the module) are printed on FIGURES lines (pytest -s).
"""
import json
import os
import re
import subprocess
import time

import pytest

from gridops_test import procs, pxe

pytestmark = [pytest.mark.root, pytest.mark.qemu, pytest.mark.slow]

SUBNET = "10.213.7"
MAC = "52:54:00:21:37:01"
IP = SUBNET + ".11"
UNKNOWN_MAC = "52:54:00:21:37:99"
POOL = {"start": SUBNET + ".100", "end": SUBNET + ".150"}
FOREIGN_DHCP = SUBNET + ".254"


def figures(label, **values):
    print("FIGURES %s %s" % (label, json.dumps(values, sort_keys=True)), flush=True)


def _test_profile():
    return {"kind": "kernel", "kernel": "images/test/vmlinuz", "initrd": "images/test/initramfs.img",
            "params": "console=ttyS0 loglevel=4 panic=-1"}


@pytest.fixture(scope="module")
def bed(tmp_path_factory, deploy_server_image, guest_initramfs):
    bed = pxe.PxeBed(tmp_path_factory.mktemp("pxe"), deploy_server_image["image"], subnet=SUBNET,
                     extra_bridge_addresses=[FOREIGN_DHCP + "/24"],
                     nodes={"node-1": {"mac": MAC.upper().replace(":", "-"), "ip": IP, "netboot_loader": "pxelinux"}})
    try:
        bed.tap = bed.add_tap()
        bed.vars = {
            "pxe_server_log_dhcp": True,
            "pxe_server_dhcp_range": POOL,
            "pxe_server_files": [{"dest": "images/test/vmlinuz", "src": guest_initramfs["vmlinuz"]},
                                 {"dest": "images/test/initramfs.img", "src": guest_initramfs["initramfs"]}],
            "pxe_server_initial_profile": _test_profile(),
        }
        start = time.monotonic()
        bed.converge(bed.vars)
        figures("pxe-converge", first_seconds=round(time.monotonic() - start, 1))
        bed.guest = pxe.Guest(bed, bed.tap, MAC)
        yield bed
    finally:
        try:
            if getattr(bed, "guest", None):
                bed.guest.power_off()
        finally:
            bed.close()
            assert not procs_left(bed), procs_left(bed)


def procs_left(bed):
    """Processes still in the bed's namespaces, and the container, after close()."""
    left = []
    for ns in (bed.fabric, bed.server_ns):
        res = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True, check=True)
        if ns in res.stdout.split():
            left.append("netns " + ns)
    if pxe.podman("container", "exists", bed.container, check=False).returncode == 0:
        left.append("container " + bed.container)
    return left


def test_pxelinux_over_tftp_reaches_the_ramdisk(bed):
    since = bed.exec("date", "+%Y-%m-%d %H:%M:%S").stdout.strip()
    phases, address = bed.guest.boot_phases()
    bed.guest.power_off()
    assert address == IP, "the reservation made by MAC gives the node its address"
    console = bed.guest.console()
    assert "PXELINUX" in console and "Filename: pxelinux.0" in console
    log = bed.journal("dnsmasq", since=since)
    for sent in ("pxelinux.0", "pxelinux.cfg/01-52-54-00-21-37-01", "images/test/vmlinuz", "images/test/initramfs.img"):
        assert re.search(r"sent /srv/gridops-pxe/%s to %s" % (re.escape(sent), re.escape(IP)), log), (sent, log[-3000:])
    figures("pxe-boot-pxelinux-tftp", **phases)


def test_ipxe_over_http_reaches_the_ramdisk(bed):
    res = bed.netboot(nodes=[{"mac": MAC, "loader": "ipxe"}])
    assert res["nodes"]["node-1"]["previous"] == dict(_test_profile(), initrd=["images/test/initramfs.img"])
    assert res["dhcp_reload"] and res["dhcp_reloaded"], "a changed reservation restarts dnsmasq"
    before = bed.http_log()
    phases, address = bed.guest.boot_phases()
    bed.guest.power_off()
    assert address == IP
    requests = bed.http_log()[len(before):]
    for path in ("/boot.ipxe", "/ipxe/52-54-00-21-37-01.ipxe", "/images/test/vmlinuz", "/images/test/initramfs.img"):
        assert re.search(r'^%s .*"GET %s HTTP/1.1" 200 ' % (re.escape(IP), re.escape(path)), requests, re.M), \
            (path, requests)
    figures("pxe-boot-ipxe-http", **phases)


@pytest.mark.parametrize("loader, program", [("pxelinux", "syslinux.efi"), ("ipxe", "snponly.efi")])
def test_uefi_firmware_pxe_gets_the_efi_loader(bed, loader, program):
    """OVMF's own PXE client (DHCP option 93 = 7, no NIC ROM): syslinux.efi, or iPXE's snponly.efi then HTTP."""
    if not os.path.exists(pxe.Guest.OVMF_CODE):
        pytest.skip("no OVMF (Debian package ovmf)")
    bed.netboot(nodes=[{"mac": MAC, "loader": loader}])
    since = bed.exec("date", "+%Y-%m-%d %H:%M:%S").stdout.strip()
    guest = pxe.Guest(bed, bed.tap, MAC, name="uefi-" + loader, firmware="uefi", nic_rom=False)
    try:
        guest.power_on()
        _match, seconds = guest.wait_for(r"GRIDOPS-INITRAMFS-READY ip=" + re.escape(IP), timeout=180)
    finally:
        guest.power_off()
    assert "NBP filename is %s" % program in guest.console()
    log = bed.journal("dnsmasq", since=since)
    assert "sent /srv/gridops-pxe/%s to %s" % (program, IP) in log and "gridops-efi64" in log
    figures("pxe-boot-uefi-" + loader, ready=round(seconds, 2))


def test_netboot_local_makes_the_next_boot_go_to_disk(bed):
    res = bed.netboot(nodes=[{"mac": MAC, "profile": "local"}])
    node = res["nodes"]["node-1"]
    assert node["previous"]["kind"] == "kernel" and node["profile"] == {"kind": "local"}
    assert res["changed_nodes"] == ["node-1"] and not res["dhcp_reload"]
    bed.guest.power_on()
    bed.guest.wait_for(r"gridops\.metal: node-1: local disk")
    _match, seconds = bed.guest.wait_for(r"Booting from Hard Disk")
    time.sleep(1)
    bed.guest.power_off()
    assert not pxe.READY.search(bed.guest.console())
    figures("pxe-boot-local", to_disk_seconds=round(seconds, 2))
    query = bed.netboot(state="query", nodes=[{"mac": MAC}])
    assert query["nodes"]["node-1"]["profile"] == {"kind": "local"} and not query["changed"]


def test_unknown_client_gets_the_default_profile(bed):
    tap = bed.add_tap()
    stranger = pxe.Guest(bed, tap, UNKNOWN_MAC, name="stranger")
    try:
        stranger.power_on()
        stranger.wait_for(r"net0: %s\.(1[0-4]\d|150)/" % re.escape(SUBNET))   # an address from the pool
        stranger.wait_for(r"gridops\.metal: unknown node %s: local disk" % UNKNOWN_MAC)
        stranger.wait_for(r"Booting from Hard Disk")
    finally:
        stranger.power_off()


def test_module_renders_a_thousand_profiles(bed):
    """1,000 nodes in one netboot call on the server, in a scratch root (dnsmasq is not told)."""
    bed.exec("mkdir", "-p", "/tmp/bench/root/deploy", "/tmp/bench/hosts")
    bed.exec("touch", "/tmp/bench/root/deploy/vmlinuz", "/tmp/bench/root/deploy/initrd.img")
    nodes = [{"name": "n%04d" % i, "mac": "52:54:01:00:%02x:%02x" % (i // 256, i % 256),
              "ip": "10.100.%d.%d" % (i // 200, i % 200 + 1)} for i in range(1000)]
    scratch = {"root": "/tmp/bench/root", "dhcp_hostsdir": "/tmp/bench/hosts", "dhcp_restart_command": ["true"]}
    times = {}
    for label, profile in (("first", "local"), ("again", "local"), ("switch_all", "deploy")):
        start = time.monotonic()
        res = bed.netboot(nodes=[dict(n, profile=profile) for n in nodes], **scratch)
        times[label + "_seconds"] = round(time.monotonic() - start, 2)
        assert len(res["changed_nodes"]) == (0 if label == "again" else 1000)
    assert bed.exec("sh", "-c", "ls /tmp/bench/root/ipxe | wc -l").stdout.strip() == "1000"
    figures("pxe-render-1000-module", **times)


def test_proxy_mode_next_to_another_dhcp_server(bed, tmp_path):
    bed.netboot(nodes=[{"mac": MAC, "profile": _test_profile()}])
    foreign = subprocess.Popen(procs.netns_argv(bed.fabric, [
        "dnsmasq", "-k", "--conf-file=/dev/null", "--port=0", "--pid-file=", "--user=root",
        "--interface=%s" % bed.bridge, "--bind-interfaces", "--dhcp-range=%s.160,%s.199,255.255.255.0,1h" % (SUBNET, SUBNET),
        "--dhcp-leasefile=%s" % (tmp_path / "leases")]), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        start_new_session=True)
    try:
        start = time.monotonic()
        res = bed.converge(dict(bed.vars, pxe_server_dhcp_mode="proxy", pxe_server_dhcp_range={}))
        figures("pxe-converge", to_proxy_seconds=round(time.monotonic() - start, 1))
        conf = bed.exec("cat", "/etc/dnsmasq.d/gridops-pxe.conf").stdout
        assert ",proxy," in conf and "pxe-service=" in conf and "dhcp-range=%s.100" % SUBNET not in conf
        assert res.changed() > 0
        phases, address = bed.guest.boot_phases()
        bed.guest.power_off()
        assert re.match(r"%s\.1[6-9]\d$" % re.escape(SUBNET), address), "the address comes from the other server"
        console = bed.guest.console()
        assert "Booting from PXE menu" in console and "PXELINUX" in console, "the inventory's loader, pxelinux"
        figures("pxe-boot-proxy-pxelinux", **phases)
    finally:
        foreign.kill()
        foreign.wait()
