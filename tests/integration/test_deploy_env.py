"""The deploy_env role against a deploy server container, and its ramdisk booted in QEMU.

The role builds the deploy kernel and initramfs on the controller (this
machine), with the deploy key made on the server, and publishes them where
pxe_server's deploy profile points.  A QEMU (TCG) guest then boots exactly
the published files with the command line that profile writes; the server
reaches it over SSH with its deploy key and uses every tool: partitioning,
ext4 and xfs, tar in three compressions, a stream received with nc,
extlinux.  Last, pxe_server's deploy profile network-boots a guest into it
(the contract between the two roles).  Build and boot figures are printed on
FIGURES lines (pytest -s).
"""
import hashlib
import json
import re
import subprocess
import time

import pytest

from gridops_test import ansible_run, artifacts, environments, procs
from gridops_test.pxe import Guest, PxeBed

MAC = "52:54:00:61:00:11"
GUEST_IP = "10.213.61.11"
SUBNET = "10.213.61"
KEY = "/etc/gridops-metal/deploy/id_ed25519"
ROOT = "/srv/gridops-pxe"
READY = re.compile(r"GRIDOPS-INITRAMFS-READY ip=(\S+)")

pytestmark = [pytest.mark.root, pytest.mark.qemu, pytest.mark.slow]


def figures(label, **values):
    print("FIGURES %s %s" % (label, json.dumps(values, sort_keys=True)), flush=True)


@pytest.fixture(scope="module")
def bed(tmp_path_factory):
    image = environments.server_image()
    bed = PxeBed(tmp_path_factory.mktemp("deploy-env"), image["image"], subnet=SUBNET,
                 nodes={"node-1": {"mac": MAC, "ip": GUEST_IP, "netboot_profile": "deploy"}})
    try:
        yield bed
    finally:
        bed.close()


@pytest.fixture(scope="module")
def converged(bed):
    """Two runs of the role: (first, second) PlaybookResults and their durations."""
    def run():
        start = time.monotonic()
        res = ansible_run.playbook("environments.yml", bed.inventory, args=["--tags", "deploy_env"], timeout=900)
        return res, round(time.monotonic() - start, 1)
    return [run(), run()]


def server_file(bed, path):
    res = bed.exec("cat", path, check=True)
    return res.stdout


def test_converge_is_idempotent_and_never_logs_the_private_key(bed, converged):
    (first, first_s), (second, second_s) = converged
    assert second.changed() == 0, second
    private = bed.exec("cat", KEY).stdout
    body = "".join(private.strip().splitlines()[1:-1])
    assert "PRIVATE KEY" in private and body
    for res in (first, second):
        assert body[:40] not in res.stdout + res.stderr
        assert "PRIVATE KEY" not in res.stdout + res.stderr
    figures("deploy_env-converge", first_seconds=first_s, second_seconds=second_s,
            first_changed=first.changed())


def test_key_pair_and_published_files(bed, converged):
    modes = bed.exec("stat", "-c", "%a %U %n", KEY, KEY + ".pub", "/etc/gridops-metal/deploy").stdout.split("\n")
    assert modes[0].startswith("600 root") and modes[1].startswith("644 root") and modes[2].startswith("700 root")
    config = json.loads(server_file(bed, "/etc/gridops-metal/deploy_env.json"))
    assert config["private_key"] == KEY and config["kernel"] == "deploy/vmlinuz"
    assert config["public_key"] == server_file(bed, KEY + ".pub").strip()
    link = bed.exec("readlink", ROOT + "/deploy").stdout.strip()
    assert link == "deploy.%s" % config["key"][:12]
    manifest = json.loads(server_file(bed, ROOT + "/deploy/manifest.json"))
    assert manifest["kernel_version"] == config["kernel_version"]
    # The published files are the cached build's, byte for byte.
    build = artifacts.engine().Cache().load("initramfs", config["key"])
    entry = artifacts.engine().Cache().entry("initramfs", config["key"])
    published = bed.exec("sha256sum", ROOT + "/deploy/initrd.img").stdout.split()[0]
    with open("%s/%s" % (entry, build["initramfs"]), "rb") as fh:
        assert published == hashlib.sha256(fh.read()).hexdigest()
    figures("deploy_env-ramdisk", size=build["size"], build_seconds=build["build_seconds"],
            kernel=manifest["kernel_version"], modules=len(manifest["modules"]))


def test_check_mode_changes_nothing(bed, converged):
    res = ansible_run.playbook("environments.yml", bed.inventory, args=["--tags", "deploy_env", "--check"],
                               timeout=600)
    assert res.changed() == 0, res


GUEST_SCRIPT = r"""
set -e
for tool in sfdisk parted partprobe wipefs blkid mkfs.ext4 mkfs.xfs tune2fs tar gzip xz zstd extlinux \
            nc sha256sum mkfifo tee dd; do
    command -v "$tool" >/dev/null || { echo "MISSING $tool"; exit 1; }
done
echo "NODE $(hostname) SERVER $(cat /etc/gridops/server)"
printf 'label: dos\n,32M,L,*\n,,L\n' | sfdisk -q /dev/vda
parted -s /dev/vda print | grep -q '^ 2 '
mkfs.ext4 -q -F /dev/vda1
mkfs.xfs -q -f /dev/vda2
mkdir -p /mnt/a /mnt/b
mount -t ext4 /dev/vda1 /mnt/a
mount -t xfs /dev/vda2 /mnt/b
# A stream from the server, as in a chained broadcast: received with nc, checked, extracted.
nc -w 10 @SERVER@ 9000 </dev/null | tee /mnt/b/stream.tar.zst | zstd -dc | tar -x -C /mnt/a
echo "STREAM $(sha256sum < /mnt/b/stream.tar.zst)"
tar -C /etc -cJf /mnt/b/etc.tar.xz . && tar -tJf /mnt/b/etc.tar.xz | grep -q hostname
tar -C /etc -czf /mnt/b/etc.tar.gz . && tar -tzf /mnt/b/etc.tar.gz | grep -q hostname
cat /mnt/a/payload/hello
extlinux --install /mnt/a/payload 2>&1 || { echo "EXTLINUX FAILED"; ls -la /proc/mounts /sys/block; cat /proc/mounts; exit 1; }
test -s /mnt/a/payload/ldlinux.sys
dd if=/usr/lib/syslinux/mbr/mbr.bin of=/dev/vda bs=440 count=1 conv=notrunc 2>/dev/null
umount /mnt/a /mnt/b
echo GUEST-SCRIPT-OK
"""


def test_ramdisk_boots_accepts_the_deploy_key_and_has_the_tools(bed, converged, daemon_factory, tmp_path):
    # The published files, as a node gets them, and the command line of pxe_server's deploy profile.
    for name in ("vmlinuz", "initrd.img"):
        with open(tmp_path / name, "wb") as fh:
            subprocess.run(["podman", "exec", bed.container, "cat", "%s/deploy/%s" % (ROOT, name)],
                           env=ansible_run.env(), stdout=fh, check=True, timeout=60)
    disk = tmp_path / "disk.img"
    with open(disk, "wb") as fh:
        fh.truncate(512 * 1024 * 1024)
    dhcp_log = tmp_path / "dnsmasq.leases"
    daemon_factory(["dnsmasq", "-k", "--conf-file=/dev/null", "--port=0", "--pid-file=", "--user=root",
                    "--interface=eth0", "--bind-interfaces", "--dhcp-range=%s.100,%s.150,1h" % (SUBNET, SUBNET),
                    "--dhcp-host=%s,%s" % (MAC, GUEST_IP), "--dhcp-leasefile=%s" % dhcp_log],
                   netns=bed.server_ns, name="dnsmasq")
    console = tmp_path / "console.log"
    tap = bed.add_tap()
    append = "console=ttyS0 panic=-1 gridops.server=http://%s.1 gridops.node=node-1 BOOTIF=01-%s" % (
        SUBNET, MAC.replace(":", "-"))
    qemu = daemon_factory(["qemu-system-x86_64", "-accel", "tcg", "-m", "384", "-smp", "1", "-nodefaults",
                           "-display", "none", "-no-reboot",
                           "-kernel", str(tmp_path / "vmlinuz"), "-initrd", str(tmp_path / "initrd.img"),
                           "-append", append,
                           "-drive", "file=%s,format=raw,if=none,id=d0" % disk, "-device", "virtio-blk-pci,drive=d0",
                           "-netdev", "tap,id=n0,ifname=%s,script=no,downscript=no" % tap,
                           "-device", "virtio-net-pci,netdev=n0,mac=%s" % MAC,
                           "-chardev", "file,id=s0,path=%s" % console, "-serial", "chardev:s0"],
                          netns=bed.fabric, name="qemu")
    start = time.monotonic()

    def ready():
        text = console.read_text(errors="replace") if console.exists() else ""
        if not qemu.alive():
            raise AssertionError("QEMU exited:\n%s\n%s" % (qemu.log(), text[-3000:]))
        return READY.search(text)
    match = procs.wait_for(ready, 180, interval=0.2, what="the deploy ramdisk")
    ready_seconds = time.monotonic() - start
    assert match.group(1) == GUEST_IP, console.read_text()
    assert "ERROR" not in console.read_text().split("GRIDOPS-INITRAMFS-START", 1)[1]

    ssh = ["ssh", "-i", KEY, "-o", "BatchMode=yes", "-o", "StrictHostKeyChecking=no", "-o", "UserKnownHostsFile=/dev/null",
           "-o", "ConnectTimeout=20", "-o", "LogLevel=ERROR"]
    first = bed.exec(*(ssh + ["root@" + GUEST_IP, "uname", "-r"]), check=False)
    ssh_seconds = time.monotonic() - start
    assert first.returncode == 0, first.stderr
    denied = bed.exec("ssh", "-o", "BatchMode=yes", "-o", "StrictHostKeyChecking=no", "-o", "IdentitiesOnly=yes",
                      "-o", "UserKnownHostsFile=/dev/null", "-o", "LogLevel=ERROR", "root@" + GUEST_IP, "true",
                      check=False)
    assert denied.returncode != 0

    # The payload: a zstd tar that the server streams with nc (openbsd, closing at EOF).
    bed.exec("sh", "-c", "mkdir -p /tmp/payload/payload && echo HELLO-PAYLOAD > /tmp/payload/payload/hello && "
                         "tar -C /tmp/payload -cf - . | zstd -q -o /tmp/payload.tar.zst")
    payload_sha = bed.exec("sha256sum", "/tmp/payload.tar.zst").stdout.split()[0]
    bed.exec("sh", "-c", "nohup nc -N -l 9000 < /tmp/payload.tar.zst >/dev/null 2>&1 &")
    script = GUEST_SCRIPT.replace("@SERVER@", "%s.1" % SUBNET)
    work_start = time.monotonic()
    res = bed.exec("sh", "-c", "%s root@%s sh -s <<'EOF'\n%sEOF" % (" ".join(ssh), GUEST_IP, script),
                   check=False, timeout=300)
    work_seconds = time.monotonic() - work_start
    assert res.returncode == 0 and "GUEST-SCRIPT-OK" in res.stdout, res.stdout + res.stderr
    assert "NODE node-1 SERVER http://%s.1" % SUBNET in res.stdout
    assert "STREAM %s" % payload_sha in res.stdout and "HELLO-PAYLOAD" in res.stdout
    with open(disk, "rb") as fh:
        assert fh.read(512)[510:] == b"\x55\xaa"
    bed.exec(*(ssh + ["root@" + GUEST_IP, "poweroff"]), check=False)
    qemu.proc.wait(60)
    figures("deploy_env-boot", ready_seconds=round(ready_seconds, 1), first_ssh_seconds=round(ssh_seconds, 1),
            tools_seconds=round(work_seconds, 1))


def test_pxe_server_deploy_profile_boots_it(bed, converged):
    start = time.monotonic()
    bed.converge({"pxe_server_deploy_params": "console=ttyS0 panic=-1"})
    converge_seconds = time.monotonic() - start
    guest = Guest(bed, bed.add_tap(), MAC, name="pxe-guest")
    try:
        match, seconds = guest.power_on().wait_for(READY.pattern, timeout=240)
        assert match.group(1) == GUEST_IP, guest.console()
        res = bed.exec("ssh", "-i", KEY, "-o", "BatchMode=yes", "-o", "StrictHostKeyChecking=no",
                       "-o", "UserKnownHostsFile=/dev/null", "-o", "ConnectTimeout=20", "-o", "LogLevel=ERROR",
                       "root@" + GUEST_IP, "hostname; cat /etc/gridops/server", check=False)
        assert res.returncode == 0, res.stderr
        assert res.stdout.split() == ["node-1", "http://%s.1" % SUBNET]
        ssh_seconds = time.monotonic() - guest.started
    finally:
        guest.power_off()
    figures("deploy_env-pxe", pxe_converge_seconds=round(converge_seconds, 1),
            power_on_to_ready_seconds=round(seconds, 1), power_on_to_ssh_seconds=round(ssh_seconds, 1))
