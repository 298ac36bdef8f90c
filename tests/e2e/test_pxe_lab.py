"""The lab, network-booted by its own deploy server: playbooks/pxe.yml on the lab's inventory.

Every lab node is powered on over IPMI from the deploy server container and
boots the test ramdisk from it (node-1 over iPXE/HTTP, node-2 over
pxelinux/TFTP); then netboot switches them all to ``local`` and their next
boot goes to disk.  Figures on FIGURES lines (pytest -s).
"""
import json
import subprocess
import time

import pytest

from gridops_test import ansible_run as ansible
from gridops_test.lab import Lab

pytestmark = [pytest.mark.root, pytest.mark.qemu, pytest.mark.slow]


def figures(label, **values):
    print("FIGURES %s %s" % (label, json.dumps(values, sort_keys=True)), flush=True)


@pytest.fixture(scope="module")
def lab(tmp_path_factory):
    lab = Lab(tmp_path_factory.mktemp("pxelab"), lab_node_count=2, lab_node_memory_mb=256, lab_node_disk_gb=1)
    try:
        start = time.monotonic()
        lab.up()
        figures("pxe-lab-up", seconds=round(time.monotonic() - start, 1), nodes=2)
        yield lab
    finally:
        lab.close()
        assert lab.leftovers() == {}, lab.leftovers()


def netboot(lab, **args):
    argv = ["ansible", "-i", str(lab.inventory), "deploy_server", "-m", "gridops.metal.netboot", "-a", json.dumps(args)]
    env = ansible.env(ANSIBLE_LOAD_CALLBACK_PLUGINS="1", ANSIBLE_STDOUT_CALLBACK="json")
    res = subprocess.run(argv, cwd=ansible.REPO, env=env, capture_output=True, text=True, timeout=300, check=False)
    out = json.loads(res.stdout)["plays"][0]["tasks"][0]["hosts"]
    result = next(iter(out.values()))
    assert res.returncode == 0 and not result.get("failed"), result
    return result


def test_every_lab_node_boots_from_the_deploy_server(lab, guest_initramfs):
    start = time.monotonic()
    lab.playbook("pxe.yml", {
        "pxe_server_files": [{"dest": "images/test/vmlinuz", "src": guest_initramfs["vmlinuz"]},
                             {"dest": "images/test/initramfs.img", "src": guest_initramfs["initramfs"]}],
        "pxe_server_initial_profile": {"kind": "kernel", "kernel": "images/test/vmlinuz",
                                       "initrd": "images/test/initramfs.img",
                                       "params": "console=ttyS0 loglevel=4 panic=-1"}})
    figures("pxe-lab-converge", seconds=round(time.monotonic() - start, 1))
    hosts = lab.hosts()
    nodes = lab.nodes()
    assert nodes == ["node-1", "node-2"]
    switched = netboot(lab, nodes=[{"mac": hosts["node-2"]["mac"], "loader": "pxelinux"}])
    assert switched["nodes"]["node-2"]["loader"] == "pxelinux" and switched["dhcp_reloaded"]

    started = {}
    for node in nodes:
        lab.mark(node)
        lab.ipmitool(node, "chassis", "power", "on")
        started[node] = time.monotonic()
    seconds = {}
    for node in nodes:
        ready = lab.wait_console(node, r"GRIDOPS-INITRAMFS-READY ip=(\S+)")
        seconds[node] = round(time.monotonic() - started[node], 1)
        assert ready.group(1) == hosts[node]["ip"], "the node's reserved address"
    assert "boot.ipxe : " in lab.console("node-1") and "pxelinux.0 : " in lab.console("node-2")
    figures("pxe-lab-boot", to_ramdisk_seconds=seconds, loaders={"node-1": "ipxe", "node-2": "pxelinux"})

    res = netboot(lab, nodes=[{"mac": hosts[node]["mac"], "profile": "local"} for node in nodes])
    assert sorted(res["changed_nodes"]) == nodes
    assert all(res["nodes"][node]["previous"]["kind"] == "kernel" for node in nodes)
    for node in nodes:
        lab.ipmitool(node, "chassis", "power", "off")
        lab.mark(node)
        lab.ipmitool(node, "chassis", "power", "on")
    for node in nodes:
        lab.wait_console(node, r"Booting from Hard Disk")
        assert "GRIDOPS-INITRAMFS-READY" not in lab.console(node)
        lab.ipmitool(node, "chassis", "power", "off")
