#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: (c) 2026, gridops.metal developers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import absolute_import, division, print_function
__metaclass__ = type

DOCUMENTATION = r"""
---
module: lab_artifact
short_description: Build or reuse a kernel, initramfs, root file system, container image, environment image or guest disk from Debian packages
version_added: 0.1.0
description:
  - Makes, from Debian packages only, the artifacts the lab and the tests boot or run, the deploy
    environment and the images nodes are deployed with, and keeps them in a cache shared by every
    run on the machine.
  - C(kernel) is Debian's kernel for guests, C(vmlinuz) and its modules tree. The meta package
    (C(linux-image-amd64)) is followed to the exact C(linux-image-<abi>-amd64) package, whose
    version is part of the cache key, and only that one package is downloaded.
  - C(initramfs) is a small busybox initramfs with the kernel's virtio and ext4 modules. Its
    C(/init) mounts C(/proc), C(/sys) and C(/dev), loads the modules, asks DHCP for an address
    on the interface, optionally starts dropbear for the given keys, prints
    C(GRIDOPS-INITRAMFS-READY ip=<address>) on the console, then leaves a shell on the console
    from which C(poweroff) powers the guest off. On the kernel command line C(gridops.net=0)
    skips the network, C(gridops.hook=/path) runs a program after the ready marker and
    C(gridops.poweroff) powers off at the end; C(BOOTIF=01-<mac>), as pxelinux and iPXE pass it,
    makes it use the interface with that MAC.
  - C(rootfs) is a C(debootstrap) root file system (C(minbase) by default) kept as C(rootfs.tar.zst)
    with a manifest of the installed packages.
  - C(container_image) is a podman image, C(localhost/<name>:<tag>), imported from a rootfs with
    systemd, systemd-sysv, dbus, python3, python3-apt and iproute2 plus the recipe's packages,
    with C(/var/lib/apt/lists) kept. Its command is C(/sbin/init); run it with C(--systemd=always).
  - C(image) is an environment image to deploy onto nodes (see the C(image_builder) role), a C(rootfs)
    with the kernel package, extra files, enabled systemd services and a first-boot script, as one
    compressed tarball with its sha256 and the paths of its kernel and initrd. Its ssh host keys are
    removed and made again on each node's first boot; C(/etc/machine-id) is empty.
  - C(disk_image) is a qcow2 disk of a Debian guest that QEMU boots with the C(vmlinuz) and C(initrd.img)
    next to it (C(-kernel), C(-initrd), and C(-append) with C(cmdline)), a rootfs with systemd, sshd, python3,
    Debian's kernel and a small initrd (virtio and ext4 only), the whole disk one ext4 file system made with
    C(mke2fs -d) (no loop mount, no partition table, no boot loader). systemd-networkd asks DHCP on the
    recipe's interface (C(eth0), as the command line has C(net.ifnames=0)). C(gridops.ssh_key=<base64 of
    authorized_keys>) on the command line lets a key in as root, so one cached disk serves every run with its
    own key; each guest makes its own SSH host key. Boot it from a qcow2 overlay to keep it unchanged.
  - The cache key is the sha256 of the kind, the builder's version, the recipe with its defaults,
    and what was resolved from the machine (package versions, hashes of copied host files). A
    changed recipe gives a new artifact; an unchanged one is reused.
  - Builds run under a lock per key into a temporary directory renamed into place when complete,
    so concurrent runs sharing a cache build each artifact once and a failed build leaves nothing.
  - Runs where the artifacts are wanted, usually C(localhost). C(rootfs), C(container_image), C(image) and C(disk_image) need root.
author:
  - gridops.metal developers (@gridops)
options:
  kind:
    description:
      - Which artifact to build.
    type: str
    required: true
    choices: [kernel, initramfs, rootfs, container_image, image, disk_image]
  recipe:
    description:
      - What to build. Options not given take their defaults, listed here per kind.
      - "C(kernel): C(package) (default C(linux-image-amd64)), a meta package or an exact
        C(linux-image-<abi>-amd64)."
      - "C(initramfs): C(kernel) (a C(kernel) recipe, default C({})); C(modules) (default
        C([virtio_pci, virtio_net, virtio_blk, crc32c_generic, ext4]); their dependencies are added,
        built-in ones skipped); C(network) (default C(true)); C(interface) (default C(eth0));
        C(hostname) (default C(gridops-initramfs)); C(authorized_keys) (list of public keys for root;
        when not empty dropbear is included and started); C(binaries) (host programs copied with
        their shared libraries, for example C(/sbin/sfdisk)); C(files) (list of dicts with C(path)
        and either C(content) or C(src) (a file on the build host), optional C(mode), default C(0644));
        C(init_hook) (shell code sourced by C(/init) before the ready marker)."
      - "C(rootfs): C(suite) (default C(bookworm)); C(mirror) (default C(http://deb.debian.org/debian));
        C(variant) (C(minbase), C(buildd) or C(-), default C(minbase)); C(components) (default C([main]));
        C(packages) (extra packages, default C([]))."
      - "C(container_image): C(name) (default C(gridops-systemd)); C(suite); C(mirror); C(components);
        C(packages) (extra packages besides the systemd base)."
      - "C(image): C(suite), C(mirror), C(variant), C(components), C(packages) as for C(rootfs);
        C(kernel) (kernel package, default C(linux-image-amd64), empty for none); C(files) (as for
        C(initramfs)); C(services) (systemd units to enable); C(first_boot) (a script run once, at the
        first boot, by a systemd unit); C(compression) (C(zstd), C(gzip), C(xz) or C(none), default C(zstd))."
      - "C(disk_image): C(suite), C(mirror), C(components), C(packages) (besides the base: systemd-sysv, udev, dbus,
        openssh-server, python3, python3-apt, linux-image-amd64, initramfs-tools, kmod, e2fsprogs, iproute2,
        iputils-ping, procps); C(size) (of the disk, default C(4G)); C(hostname) (default C(gridops-guest));
        C(interface) (asks DHCP, default C(eth0), empty for none); C(modules) (of the initrd, default
        C([virtio_pci, virtio_blk, crc32c_generic, ext4])); C(files) (as for C(initramfs))."
    type: dict
    default: {}
  cache_dir:
    description:
      - The cache directory.
      - Defaults to the environment variable E(GRIDOPS_CACHE) on the target, or C(~/.cache/gridops-metal).
    type: path
  force:
    description:
      - Rebuild even when the artifact is in the cache (an artifact that it depends on is reused).
      - Useful for a C(rootfs) when the suite has moved on, as the mirror's state is not part of the key.
    type: bool
    default: false
attributes:
  check_mode:
    support: full
    description: Reports whether a build is needed (V(changed)) and the cache key, without building.
  diff_mode:
    support: none
    description: Artifacts are binary; the key says what changed.
notes:
  - The packages are those of the machine's APT sources for C(kernel), and of O(recipe)'s mirror
    for C(rootfs), C(container_image) and C(image). The initramfs uses C(busybox-static) and C(dropbear-bin)
    from the machine.
  - A missing package list makes the module run C(apt-get update) once, also in check mode.
requirements:
  - apt, dpkg-deb and depmod (C(kernel))
  - busybox-static, and dropbear-bin when keys are given (C(initramfs))
  - debootstrap, tar and zstd (C(rootfs), C(image), C(disk_image))
  - mke2fs (e2fsprogs) and qemu-img (qemu-utils) (C(disk_image))
  - podman (C(container_image))
seealso:
  - name: debootstrap
    description: The tool that makes the root file systems.
    link: https://wiki.debian.org/Debootstrap
"""

EXAMPLES = r"""
- name: Guest kernel and a test initramfs that lets the lab's key in
  gridops.metal.lab_artifact:
    kind: initramfs
    recipe:
      authorized_keys:
        - "{{ lookup('ansible.builtin.file', 'lab_id_ed25519.pub') }}"
  register: lab_initramfs

- name: Boot it
  ansible.builtin.debug:
    msg: "qemu-system-x86_64 -kernel {{ lab_initramfs.vmlinuz }} -initrd {{ lab_initramfs.initramfs }}"

- name: A deploy ramdisk with partitioning tools and a post-boot hook
  gridops.metal.lab_artifact:
    kind: initramfs
    recipe:
      binaries: [/sbin/sfdisk, /sbin/mke2fs]
      files:
        - path: /usr/local/bin/deploy
          src: "{{ playbook_dir }}/files/deploy.sh"
          mode: "0755"
      init_hook: |
        echo deploy ramdisk $(cat /etc/hostname)

- name: The lab's deploy server image
  gridops.metal.lab_artifact:
    kind: container_image
    recipe:
      name: gridops-deploy-server
      packages: [dnsmasq, nginx-light, ipmitool, pxelinux, syslinux-common, ipxe, openssh-client, python3-pyghmi]
  register: deploy_server_image

- name: A small environment image with ssh, DHCP on every Ethernet interface and a first-boot script
  gridops.metal.lab_artifact:
    kind: image
    recipe:
      packages: [systemd-sysv, openssh-server, python3]
      files:
        - path: /etc/systemd/network/80-dhcp.network
          content: "[Match]\nName=e*\n[Network]\nDHCP=yes\n"
      services: [systemd-networkd]
      first_boot: |
        #!/bin/sh
        echo "first boot of $(hostname)" > /etc/motd
  register: node_image

- name: Would a minbase rootfs with openssh-server have to be built?
  gridops.metal.lab_artifact:
    kind: rootfs
    recipe:
      packages: [openssh-server, systemd-sysv]
    cache_dir: /var/cache/gridops-metal
  check_mode: true
  register: rootfs_plan
"""

RETURN = r"""
kind:
  description: The artifact kind.
  returned: always
  type: str
  sample: initramfs
key:
  description: The cache key, sha256 of the kind, builder version, recipe and resolved inputs.
  returned: always
  type: str
  sample: f1843adfa2c57ab92d430f48534f27c4c15f74416913b6800b0fac77d5ed951c
path:
  description: The artifact's directory in the cache (absent until built).
  returned: always
  type: str
  sample: /root/.cache/gridops-metal/initramfs/f1843adfa2c57ab92d430f48534f27c4c15f74416913b6800b0fac77d5ed951c
cache_dir:
  description: The cache directory used.
  returned: always
  type: str
  sample: /root/.cache/gridops-metal
recipe:
  description: The recipe with every default filled in, as hashed into the key.
  returned: always
  type: dict
inputs:
  description: What was resolved on the machine and is part of the key (package versions, file hashes, keys of artifacts built on).
  returned: always
  type: dict
  sample: {"package": "linux-image-6.1.0-56-amd64", "version": "6.1.192-2", "sha256": "a86e..."}
build_seconds:
  description: How long the build that made the artifact took (null in check mode when not built).
  returned: always
  type: float
  sample: 5.49
created:
  description: When the artifact was built (seconds since the epoch).
  returned: when the artifact exists
  type: int
seconds:
  description: How long this call took.
  returned: always
  type: float
  sample: 1.01
log:
  description: The log of the artifact's last build.
  returned: always
  type: str
vmlinuz:
  description: The kernel image.
  returned: when O(kind) is V(kernel), V(initramfs) or V(disk_image) and the artifact exists
  type: str
kernel_version:
  description: The kernel release (C(uname -r)) of the kernel and of the initramfs modules.
  returned: when O(kind) is V(kernel), V(initramfs) or V(disk_image) and the artifact exists
  type: str
  sample: 6.1.0-56-amd64
modules_dir:
  description: The kernel's modules tree (C(lib/modules/<release>), with modules.dep).
  returned: when O(kind=kernel) and the artifact exists
  type: str
config:
  description: The kernel's build configuration.
  returned: when O(kind=kernel) and the artifact exists
  type: str
package:
  description: The exact kernel package.
  returned: when O(kind=kernel) and the artifact exists
  type: str
  sample: linux-image-6.1.0-56-amd64
package_version:
  description: Its version.
  returned: when O(kind=kernel) and the artifact exists
  type: str
  sample: 6.1.192-2
initramfs:
  description: The gzip-compressed newc cpio initramfs.
  returned: when O(kind=initramfs) and the artifact exists
  type: str
modules:
  description: The modules in the initramfs, in load order.
  returned: when O(kind=initramfs) and the artifact exists
  type: list
  elements: str
  sample: [virtio_ring, virtio, virtio_pci, failover, net_failover, virtio_net]
builtin_modules:
  description: Requested modules that the kernel has built in (nothing to load).
  returned: when O(kind=initramfs) and the artifact exists
  type: list
  elements: str
ssh:
  description: Whether the initramfs starts dropbear.
  returned: when O(kind=initramfs) and the artifact exists
  type: bool
size:
  description: Size in bytes of the initramfs, or of the rootfs or image tarball.
  returned: when O(kind) is V(initramfs), V(rootfs) or V(image) and the artifact exists
  type: int
  sample: 1768101
tarball:
  description:
    - The root file system as a zstd-compressed tar (numeric owners, xattrs kept).
    - For O(kind=image), the image as a tar compressed as the recipe says (C(image.tar.zst), C(.tar.gz), C(.tar.xz), C(.tar)).
  returned: when O(kind) is V(rootfs) or V(image) and the artifact exists
  type: str
manifest:
  description: The installed packages, one C(name<TAB>version) a line.
  returned: when O(kind) is V(rootfs), V(image) or V(disk_image) and the artifact exists
  type: str
package_count:
  description: How many packages the root file system holds.
  returned: when O(kind) is V(rootfs), V(image) or V(disk_image) and the artifact exists
  type: int
sha256:
  description: The sha256 of the image tarball.
  returned: when O(kind=image) and the artifact exists
  type: str
compression:
  description: The compression of the image tarball.
  returned: when O(kind=image) and the artifact exists
  type: str
  sample: zstd
boot_kernel:
  description: The kernel inside the image (null when the image has none).
  returned: when O(kind=image) and the artifact exists
  type: str
  sample: /boot/vmlinuz-6.1.0-56-amd64
boot_initrd:
  description: The initrd inside the image (null when the image has none).
  returned: when O(kind=image) and the artifact exists
  type: str
  sample: /boot/initrd.img-6.1.0-56-amd64
image:
  description: The podman image reference; its tag comes from the key.
  returned: when O(kind=container_image)
  type: str
  sample: localhost/gridops-deploy-server:3f2a9c0d1e4b
image_id:
  description: The podman image id.
  returned: when O(kind=container_image) and the artifact exists
  type: str
rootfs_key:
  description: The key of the root file system the image or disk was made from.
  returned: when O(kind) is V(container_image), V(image) or V(disk_image) and the artifact exists
  type: str
disk:
  description: The qcow2 disk (the root file system is the whole disk, C(/dev/vda)).
  returned: when O(kind=disk_image) and the artifact exists
  type: str
initrd:
  description: The disk's initrd (initramfs-tools, virtio and ext4 modules only).
  returned: when O(kind=disk_image) and the artifact exists
  type: str
cmdline:
  description: The kernel command line to boot the disk with.
  returned: when O(kind=disk_image) and the artifact exists
  type: str
  sample: root=/dev/vda rw console=ttyS0 net.ifnames=0 systemd.firstboot=off
ssh_key_parameter:
  description: The kernel command line parameter that takes root's authorized keys, base64-encoded.
  returned: when O(kind=disk_image) and the artifact exists
  type: str
  sample: gridops.ssh_key
disk_bytes:
  description: Size of the qcow2 file.
  returned: when O(kind=disk_image) and the artifact exists
  type: int
kernel:
  description: The result for the kernel the initramfs was built for (same keys as for O(kind=kernel)).
  returned: when O(kind=initramfs)
  type: dict
rootfs:
  description: The result for the root file system the image or disk was made from (same keys as for O(kind=rootfs)).
  returned: when O(kind) is V(container_image), V(image) or V(disk_image)
  type: dict
"""

from ansible.module_utils.basic import AnsibleModule
from ansible_collections.gridops.metal.plugins.module_utils import _artifacts


def main():
    module = AnsibleModule(
        argument_spec=dict(
            kind=dict(type="str", required=True, choices=list(_artifacts.KINDS)),
            recipe=dict(type="dict", default={}),
            cache_dir=dict(type="path"),
            force=dict(type="bool", default=False),
        ),
        supports_check_mode=True,
    )
    try:
        result = _artifacts.build(module.params["kind"], module.params["recipe"],
                                  cache_dir=module.params["cache_dir"], force=module.params["force"],
                                  check=module.check_mode)
    except _artifacts.ArtifactError as exc:
        module.fail_json(msg=str(exc))
    module.exit_json(**result)


if __name__ == "__main__":
    main()
