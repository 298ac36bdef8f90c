"""playbooks/hypervisors.yml on a KVM host: libvirtd answers, its pools and network are active."""
import json

from gridops_test.molecule import run_playbook

VIRSH = "virsh --connect qemu:///system "


def test_libvirtd_answers(host):
    # Socket-activated, as Debian runs it (the daemon exits when idle): the socket is up, a client wakes it.
    assert host.service("libvirtd.socket").is_running and host.service("libvirtd.socket").is_enabled
    caps = host.check_output(VIRSH + "capabilities")
    assert host.service("libvirtd").is_running
    assert "<domain type='qemu'" in caps
    assert host.check_output(VIRSH + "version --daemon").startswith("Compiled against library")


def test_pools_active_and_autostarted(host):
    for pool in ("images", "vmvg"):
        info = host.check_output(VIRSH + "pool-info " + pool)
        assert "State:          running" in info and "Autostart:      yes" in info, info
    assert "<path>/dev/vmvg</path>" in host.check_output(VIRSH + "pool-dumpxml vmvg")
    # The logical pool is the volume group: its volumes are the LVs, and a new volume is a new LV.
    assert "base-image" in host.check_output(VIRSH + "vol-list vmvg")
    host.check_output(VIRSH + "vol-create-as vmvg molecule-vol 16M")
    try:
        assert "molecule-vol" in host.check_output("lvs --noheadings -o lv_name vmvg")
    finally:
        host.run(VIRSH + "vol-delete molecule-vol --pool vmvg")


def test_network_on_the_bridge(host):
    info = host.check_output(VIRSH + "net-info vms")
    assert "Active:         yes" in info and "Autostart:      yes" in info and "Bridge:         brvm" in info
    link = json.loads(host.check_output("ip -j -d link show dev brvm"))[0]
    assert link["linkinfo"]["info_kind"] == "bridge"
    assert json.loads(host.check_output("ip -j link show dev eth1"))[0]["master"] == "brvm"


def test_hugepages_and_nested_when_the_cpu_has_it(host):
    assert "HugePages_Total:      16" in host.file("/proc/meminfo").content_string
    assert host.file("/etc/sysctl.d/90-gridops-kvm.conf").contains("vm.nr_hugepages=16")
    # TCG's qemu64 CPU announces SVM (emulated): the guest loads kvm_amd, so nested is configured and the
    # check guest is a KVM guest; without SVM/VMX or /dev/kvm it would be a TCG one.
    has_virt = host.run("grep -qwE 'vmx|svm' /proc/cpuinfo").rc == 0
    assert host.file("/etc/modprobe.d/gridops-kvm-nested.conf").exists == has_virt
    kvm = has_virt and host.file("/dev/kvm").exists
    assert host.file("/etc/libvirt/gridops-check-guest.xml").contains("<domain type='%s'>" % ("kvm" if kvm else "qemu"))


def test_the_check_guest_runs(host):
    # What the role ran at converge, again: libvirt starts QEMU with it (TCG here) and destroys it.
    res = host.run(VIRSH + "create /etc/libvirt/gridops-check-guest.xml --autodestroy")
    assert res.rc == 0 and "gridops-check-guest' created" in res.stdout, res.stderr
    assert "gridops-check-guest" not in host.check_output(VIRSH + "list --all --name")


def test_pools_and_networks_that_name_nothing_are_refused(host):
    rc, said, output, _seconds = run_playbook("refusals.yml")
    assert rc == 0 and said, output
    assert "kvm_hypervisor_pools[1].volume_group: novg does not exist on this host" in said["missing"]
    assert "kvm_hypervisor_networks[0].bridge: nobridge is no bridge on this host" in said["missing"]
    assert "lost" not in host.check_output(VIRSH + "pool-list --all --name")
