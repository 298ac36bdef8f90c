"""playbooks/hypervisors.yml on a Xen host, verified at the configuration level (no dom0 can run here)."""
import re

from gridops_test.molecule import run_playbook


def test_xen_and_the_xl_toolstack_are_installed(host):
    for package in ("xen-system-amd64", "xen-utils-common", "libvirt-daemon-driver-xen", "grub2-common"):
        assert host.package(package).is_installed, package
    assert host.file("/usr/sbin/xl").exists and not host.file("/usr/sbin/xm").exists
    assert host.check_output("ls /boot").count("xen-4.17") >= 1


def test_grub_boots_xen_by_default_with_dom0_limits(host):
    cfg = host.file("/boot/grub/grub.cfg").content_string
    title = re.search(r"^menuentry '([^']*, with Xen hypervisor)'", cfg, re.M).group(1)
    defaults = [d for d in re.findall(r'^\s*set default="([^"]*)"', cfg, re.M) if d != "${next_entry}"]
    assert defaults == [title], (defaults, title)
    entry = cfg[cfg.index("menuentry '%s'" % title):]
    hypervisor = re.search(r"^\s*multiboot2\s+/boot/xen-[^ ]+\.gz\s+(.*)$", entry, re.M)
    assert hypervisor, entry[:800]
    options = hypervisor.group(1).split()
    for option in ("dom0_mem=1024M,max:1024M", "dom0_max_vcpus=1-2", "dom0_vcpus_pin", "com1=115200,8n1",
                   "console=com1"):
        assert option in options, options
    assert re.search(r"^\s*module2\s+/boot/vmlinuz-", entry, re.M)


def test_xl_and_libvirt_configuration(host):
    xl = host.file("/etc/xen/xl.conf").content_string
    assert 'autoballoon="off"' in xl and 'vif.default.bridge="xenbr0"' in xl and "max_grant_frames=64" in xl
    assert host.file("/etc/libvirt/libxl.conf").contains("^autoballoon = 0")
    assert host.check_output("ip -j -d link show dev xenbr0").count('"info_kind":"bridge"') == 1


def test_the_check_domu_is_valid_for_libvirt(host):
    xml = "/etc/libvirt/gridops-check-domu.xml"
    assert "validates" in host.check_output("virt-xml-validate %s domain 2>&1" % xml)
    # libvirt's test driver takes Xen domains: define and start it there.
    out = host.check_output("virsh --connect test:///default 'define %s; start gridops-check-domu; "
                            "domstate gridops-check-domu; dumpxml gridops-check-domu'" % xml)
    assert "running" in out and "<source bridge='xenbr0'/>" in out and "type='xen'" in out


def test_bad_settings_are_refused_naming_the_field(host):
    rc, said, output, _seconds = run_playbook("refusals.yml")
    assert rc == 0 and said, output
    assert "xen_hypervisor_bridge: xen-br9 is no bridge on this host" in said["no_bridge"]
    bad = said["bad_settings"]
    assert "xen_hypervisor_dom0_memory: lots is not a size in M or G" in bad
    assert "xen_hypervisor_dom0_vcpus: two is not a number or a range" in bad
    assert "xen_hypervisor_cmdline[0]: dom0_mem=1G: use xen_hypervisor_dom0_memory" in bad
    assert host.file("/etc/default/grub.d/gridops-xen.cfg").contains("dom0_mem=1024M,max:1024M")
