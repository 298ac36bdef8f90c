"""The pxe_server role on the lab's deploy server image: services, sockets, files, what it serves, refusals.

testinfra reaches the container with podman exec (about ten times faster than through Ansible); the
client side (HTTP and TFTP from the provisioning network) runs in the scenario's fabric namespace.
"""
import hashlib
import json
import os
import re
import subprocess

from gridops_test.molecule import run_playbook

ID = hashlib.sha1(os.environ["MOLECULE_PROJECT_DIRECTORY"].encode()).hexdigest()[:6]   # as vars/names.yml
CONTAINER = "gridops-molecule-pxe-%s" % ID
FABRIC = "gridops-mpxe-%s" % ID
SERVER, SERVER6 = "10.213.9.1", "fd42:213:9::1"
ROOT = "/srv/gridops-pxe"
HOSTS = "/etc/gridops-pxe/dhcp-hosts.d"
testinfra_hosts = ["podman://" + CONTAINER]

NODES = {  # as molecule.yml's inventory
    "node-1": ("52-54-00-21-39-01", "10.213.9.11", "ipxe", {"kind": "local"}),
    "node-2": ("52-54-00-21-39-02", "10.213.9.12", "ipxe", {"kind": "deploy"}),
    "node-3": ("52-54-00-21-39-03", "10.213.9.13", "pxelinux",
               {"kind": "kernel", "kernel": "images/rescue/vmlinuz", "initrd": ["images/rescue/initrd.img"],
                "params": "rescue"}),
    "node-4": ("52-54-00-21-39-04", "10.213.9.14", "ipxe",
               {"kind": "install", "answer_file": "preseed/node-4.cfg", "kernel": "images/rescue/vmlinuz",
                "initrd": ["images/rescue/initrd.img"]}),
}


def client(*argv):
    """A command on the provisioning network, as a node would run it."""
    return subprocess.run(["ip", "netns", "exec", FABRIC] + list(argv), capture_output=True, timeout=60, check=False)


def test_services_run_and_start_at_boot(host):
    for name in ("dnsmasq", "nginx"):
        service = host.service(name)
        assert service.is_running and service.is_enabled, name


def test_sockets_only_on_the_provisioning_interface(host):
    listening = []
    for line in host.check_output("ss -Hlnptu").splitlines():
        fields = line.split()
        listening.append((fields[0], fields[4], line))
    assert listening, "nothing listens"
    allowed = {SERVER, "[%s]" % SERVER6, "0.0.0.0%eth0"}
    for proto, local, line in listening:
        address, _sep, port = local.rpartition(":")
        assert port != "53", "no DNS: %s" % line
        assert address in allowed or address.startswith("[fe80::") and address.endswith("%eth0"), line
    found = set((proto, local) for proto, local, _line in listening)
    assert ("udp", "0.0.0.0%eth0:67") in found, "DHCP, on eth0 only"
    assert ("udp", SERVER + ":69") in found and ("tcp", SERVER + ":80") in found
    assert ("tcp", "[%s]:80" % SERVER6) in found


def test_dnsmasq_configuration(host):
    conf = host.file("/etc/dnsmasq.d/gridops-pxe.conf").content_string
    for line in ("port=0", "interface=eth0", "except-interface=lo", "bind-interfaces", "enable-tftp",
                 "tftp-root=%s" % ROOT, "dhcp-hostsdir=%s" % HOSTS,
                 "dhcp-range=10.213.9.100,10.213.9.150,255.255.255.0,12h", "enable-ra",
                 "dhcp-range=::,constructor:eth0,ra-only",
                 "dhcp-match=set:gridops-efi64,option:client-arch,7",
                 "dhcp-boot=tag:!gridops-pxelinux,tag:gridops-ipxe-client,http://%s/boot.ipxe" % SERVER):
        assert re.search("^%s$" % re.escape(line), conf, re.M), line
    assert host.run("dnsmasq --test").rc == 0


def test_one_reservation_and_two_boot_files_per_node(host):
    for name, (dashed, ip, loader, profile) in NODES.items():
        dhcp = host.file("%s/%s" % (HOSTS, dashed)).content_string
        assert dhcp.splitlines()[1] == "%s,set:gridops-%s,%s,%s" % (dashed.replace("-", ":"), loader, ip, name)
        for path in ("%s/pxelinux.cfg/01-%s" % (ROOT, dashed), "%s/ipxe/%s.ipxe" % (ROOT, dashed)):
            header = [line for line in host.file(path).content_string.splitlines() if "gridops.metal netboot" in line]
            assert header and json.loads(header[0].split(" profile=", 1)[1]) == profile, path
    assert sorted(host.file(HOSTS).listdir()) == sorted(d for d, _ip, _l, _p in NODES.values())
    ipxe = host.file("%s/ipxe/52-54-00-21-39-04.ipxe" % ROOT).content_string
    assert "url=http://%s/preseed/node-4.cfg hostname=node-4 BOOTIF=01-52-54-00-21-39-04" % SERVER in ipxe
    assert "dhcp-ignore" not in host.file("/etc/dnsmasq.d/gridops-pxe.conf").content_string, "unknown clients served"


def test_loaders_and_defaults_in_the_boot_root(host):
    for name in ("pxelinux.0", "ldlinux.c32", "syslinux.efi", "ldlinux.e64", "undionly.kpxe", "snponly.efi",
                 "boot.ipxe", "ipxe/default.ipxe", "pxelinux.cfg/default"):
        f = host.file("%s/%s" % (ROOT, name))
        assert f.is_file and f.size > 0 and f.mode == 0o644, name
    assert not host.file(ROOT + "/ipxe.efi").exists, "only the iPXE EFI build that UEFI clients get"
    for name in ("pxelinux.cfg", "ipxe"):
        assert host.file("%s/%s" % (ROOT, name)).mode == 0o755
    assert "LOCALBOOT 0" in host.file(ROOT + "/pxelinux.cfg/default").content_string
    assert not host.file("/etc/nginx/sites-enabled/default").exists
    netboot = json.loads(host.file("/etc/gridops-pxe/netboot.json").content_string)
    assert netboot["http_url"] == "http://" + SERVER and netboot["root"] == ROOT


def test_http_and_tftp_serve_the_boot_root_to_the_network(host):
    expected = host.file(ROOT + "/boot.ipxe").content_string.encode()
    res = client("curl", "-sSf", "http://%s/boot.ipxe" % SERVER)
    assert res.returncode == 0 and res.stdout == expected, res.stderr
    res = client("curl", "-sSf", "-g", "http://[%s]/ipxe/52-54-00-21-39-02.ipxe" % SERVER6)
    assert res.returncode == 0 and b"kernel http://10.213.9.1/deploy/vmlinuz " in res.stdout, res.stderr
    assert client("curl", "-s", "-o", "/dev/null", "-w", "%{http_code}", "http://%s/nope" % SERVER).stdout == b"404"
    res = client("curl", "-sSf", "tftp://%s/pxelinux.cfg/01-52-54-00-21-39-03" % SERVER)
    assert res.returncode == 0 and b"LINUX images/rescue/vmlinuz" in res.stdout, res.stderr
    # Read-only: dnsmasq's TFTP server refuses writes.
    assert client("curl", "-sS", "-T", "/etc/hostname", "tftp://%s/upload" % SERVER).returncode != 0
    assert not host.file(ROOT + "/upload").exists


def _state(host):
    return host.check_output("find /etc/dnsmasq.d /etc/gridops-pxe %s /etc/nginx/sites-enabled -type f -o -type l "
                             "| sort | xargs sha1sum" % ROOT)


def test_bad_input_is_refused_naming_the_field_before_any_change(host):
    before = _state(host)
    rc, said, output, _seconds = run_playbook("refusals.yml")
    assert rc == 0 and said, output
    assert "node 'node-9': mac 52:54:00:21:39:01 is already used by node 'node-1'" in said["duplicate_mac"]
    assert "node 'node-9'.ip: 10.213.10.9 is outside the subnet 10.213.9.0/24" in said["outside_subnet"]
    assert "dhcp_range: start 10.213.9.150 is after end 10.213.9.100" in said["range_backwards"]
    assert "pxe_server_interface: eth7 is not an interface of pxe-server" in said["unknown_interface"]
    assert ("node 'node-9' profile kernel.kernel: 'images/nope/vmlinuz' not found under %s" % ROOT
            in said["missing_kernel"])
    assert _state(host) == before
