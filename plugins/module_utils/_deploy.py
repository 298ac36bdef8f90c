# -*- coding: utf-8 -*-
# Copyright: (c) 2026, gridops.metal developers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The deployment engine of gridops.metal.deploy (Kadeploy's model).

Plain Python, no Ansible: the module checks its parameters with the
``normalize_*`` functions and calls :func:`deploy`.

A deployment takes a set of nodes through three macro-steps:

* ``SetDeploymentEnv``: the deploy ramdisk (variants ``reboot``: netboot
  profile ``deploy``, reboot by the power engine's escalation ladder, wait
  for the ramdisk's SSH; ``current``: the node already runs it), then the
  disk: read its size and partition table, partition by the cluster
  template, make the file systems;
* ``BroadcastEnv``: the image to every node at once (variants ``chain``, the
  pipelined chain of :mod:`_broadcast`, and ``pull``, every node fetching it
  from the server), its sha256 checked on every node; then the postinstall
  (host name, fstab, keys, fresh SSH host keys, the environment's and the
  caller's hooks) and the boot loader;
* ``BootNewEnv``: netboot profile ``local`` (or ``kernel``), reboot, wait
  until the new system answers SSH (not the ramdisk: another banner, and
  the host key made for it in postinstall).

Each macro-step is a list of attempts ``{variant, retries, timeout}`` tried
in order; after each attempt the nodes split into OK and KO and only KO
nodes go on to the next attempt.  A node that fails every attempt is
reported with its macro-step, micro-step and error, never dropped.

Everything that can be checked is checked before any node is touched
(:func:`prepare`): the node names and facts, the environment and its image's
sha256, the cluster template against the known disk sizes, the user's
rights.  A partition whose role is ``keep`` is never written: a disk whose
partition table does not match the template is repartitioned only when the
template keeps nothing.
"""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import base64
import concurrent.futures
import datetime
import json
import os
import re
import shlex
import socket
import subprocess
import threading
import time
import uuid

from ansible_collections.gridops.metal.plugins.module_utils import _broadcast, _power, _pxe
from ansible_collections.gridops.metal.plugins.module_utils._registry import Refused, isotime, utcnow

MACRO_STEPS = ("SetDeploymentEnv", "BroadcastEnv", "BootNewEnv")
STEP_KEYS = {"set_deployment_env": "SetDeploymentEnv", "broadcast_env": "BroadcastEnv", "boot_new_env": "BootNewEnv"}
VARIANTS = {"SetDeploymentEnv": ("reboot", "current"), "BroadcastEnv": ("chain", "pull"),
            "BootNewEnv": ("reboot",)}
DEFAULT_STEPS = {
    "set_deployment_env": [{"variant": "reboot", "retries": 1, "timeout": 600}],
    "broadcast_env": [{"variant": "chain", "retries": 1, "timeout": 1800},
                      {"variant": "pull", "retries": 0, "timeout": 1800}],
    "boot_new_env": [{"variant": "reboot", "retries": 1, "timeout": 600}],
}
ROLES = ("deploy", "swap", "tmp", "data", "keep")
LABELS = ("msdos", "gpt")
BOOT_MODES = ("disk", "kernel")
FILESYSTEMS = ("ext2", "ext3", "ext4", "xfs")
DEFAULT_MOUNTS = {"tmp": "/tmp"}
SECTOR = 512
MIB_SECTORS = 1024 * 1024 // SECTOR
GPT_TYPES = {"linux": "0FC63DAF-8483-4772-8E79-3D69D8477DE4", "swap": "0657FD6D-A4AB-43C4-84E5-0933C84B4F4F"}
MBR_TYPES = {"linux": "83", "swap": "82"}
ROOT = "/mnt/gridops"
WORKDIR = "/tmp/gridops-deploy"
SSH_MARKER = "GRIDOPS-DEPLOY-ENV"
_SIZE_RE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([KMGT]?)(?:i?B)?\s*$", re.I)
_UNITS = {"": 1, "K": 1.0 / 1024, "M": 1, "G": 1024, "T": 1024 * 1024}
_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
_MAC_RE = re.compile(r"^([0-9a-f]{2}[:-]){5}[0-9a-f]{2}$", re.I)


class DeployError(ValueError):
    """Bad input: raised before anything is touched; the message names the field."""


# ---------------------------------------------------------------------------
# Input: sizes, cluster template, nodes, hooks, steps


def parse_size(value, field):
    """A size in MiB from 512M, 8G, 1.5T, 2048 (MiB) or 'rest' (None)."""
    if isinstance(value, bool):
        raise DeployError("%s: %r is not a size such as 512M, 8G or rest" % (field, value))
    if isinstance(value, (int, float)):
        mib = float(value)
    elif isinstance(value, str) and value.strip().lower() in ("rest", "100%", "*"):
        return None
    else:
        match = _SIZE_RE.match(str(value))
        if not match:
            raise DeployError("%s: %r is not a size such as 512M, 8G or rest" % (field, value))
        mib = float(match.group(1)) * _UNITS[match.group(2).upper()]
    if mib < 1:
        raise DeployError("%s: %r is less than 1 MiB" % (field, value))
    return int(mib)


def normalize_template(template, environment=None):
    """The cluster template checked, with defaults; raises DeployError naming the field."""
    if not isinstance(template, dict):
        raise DeployError("cluster_template: a mapping is needed (disk, label, partitions)")
    unknown = set(template) - {"disk", "label", "partitions", "boot", "name"}
    if unknown:
        raise DeployError("cluster_template: unknown key(s) %s (known: boot, disk, label, name, partitions)"
                          % ", ".join(sorted(unknown)))
    out = {"name": str(template.get("name") or "default"), "disk": template.get("disk") or "/dev/sda",
           "label": template.get("label") or "msdos", "boot": template.get("boot") or "disk", "partitions": []}
    if not isinstance(out["disk"], str) or not out["disk"].startswith("/dev/"):
        raise DeployError("cluster_template.disk: %r is not a device path under /dev" % (out["disk"],))
    if out["label"] not in LABELS:
        raise DeployError("cluster_template.label: %r is not one of %s" % (out["label"], ", ".join(LABELS)))
    if out["boot"] not in BOOT_MODES:
        raise DeployError("cluster_template.boot: %r is not one of %s" % (out["boot"], ", ".join(BOOT_MODES)))
    parts = template.get("partitions")
    if not isinstance(parts, list) or not parts:
        raise DeployError("cluster_template.partitions: a non-empty list is needed")
    names, rest = set(), None
    for index, part in enumerate(parts):
        where = "cluster_template.partitions[%d]" % index
        if not isinstance(part, dict):
            raise DeployError("%s: a mapping is needed (name, role, size)" % where)
        unknown = set(part) - {"name", "role", "size", "filesystem", "mount", "options"}
        if unknown:
            raise DeployError("%s: unknown key(s) %s" % (where, ", ".join(sorted(unknown))))
        name = part.get("name")
        if not isinstance(name, str) or not _NAME_RE.match(name):
            raise DeployError("%s.name: %r is not a partition name (letters, digits, . _ -)" % (where, name))
        if name in names:
            raise DeployError("%s.name: %s is given twice" % (where, name))
        names.add(name)
        role = part.get("role")
        if role not in ROLES:
            raise DeployError("%s.role: %r is not one of %s" % (where, role, ", ".join(ROLES)))
        size = parse_size(part.get("size", "rest"), where + ".size")
        if size is None:
            if rest is not None:
                raise DeployError("%s.size: only one partition may take the rest of the disk (%s does)"
                                  % (where, rest))
            rest = name
        fs = part.get("filesystem")
        if role in ("tmp", "data") and fs is None:
            fs = "ext4"
        if role == "deploy" and fs is None and environment is not None:
            fs = environment.get("filesystem")
        if fs is not None and fs not in FILESYSTEMS:
            raise DeployError("%s.filesystem: %r is not one of %s" % (where, fs, ", ".join(FILESYSTEMS)))
        mount = part.get("mount", DEFAULT_MOUNTS.get(role))
        if mount is not None and (not isinstance(mount, str) or not mount.startswith("/") or mount == "/"):
            raise DeployError("%s.mount: %r is not an absolute mount point other than /" % (where, mount))
        out["partitions"].append({"name": name, "role": role, "size_mib": size, "filesystem": fs,
                                  "mount": mount if role in ("tmp", "data", "keep") else None,
                                  "options": str(part.get("options") or "defaults")})
    deploy = [p["name"] for p in out["partitions"] if p["role"] == "deploy"]
    if len(deploy) != 1:
        raise DeployError("cluster_template.partitions: exactly one partition with role deploy is needed, got %d"
                          % len(deploy))
    if out["label"] == "msdos" and len(out["partitions"]) > 4:
        raise DeployError("cluster_template.partitions: an msdos label holds at most 4 primary partitions, "
                          "got %d (use label: gpt)" % len(out["partitions"]))
    for number, part in enumerate(out["partitions"], 1):
        part["number"] = number
    return out


def partition_device(disk, number):
    """/dev/sda 1 -> /dev/sda1; /dev/nvme0n1 1 -> /dev/nvme0n1p1; /dev/disk/by-id/x 1 -> /dev/disk/by-id/x-part1."""
    if disk.startswith("/dev/disk/"):
        return "%s-part%d" % (disk, number)
    return "%s%s%d" % (disk, "p" if disk[-1].isdigit() else "", number)


def plan_layout(template, disk_bytes, disk=None):
    """Partitions with start and size in sectors for a disk of disk_bytes; DeployError if they do not fit."""
    disk = disk or template["disk"]
    total = int(disk_bytes) // SECTOR
    end = total - (34 if template["label"] == "gpt" else 0)
    end -= end % MIB_SECTORS
    start = MIB_SECTORS
    fixed = sum(p["size_mib"] for p in template["partitions"] if p["size_mib"] is not None)
    rest = (end - start) // MIB_SECTORS - fixed
    if rest < (1 if any(p["size_mib"] is None for p in template["partitions"]) else 0):
        raise DeployError("cluster_template.partitions: %d MiB of fixed sizes%s do not fit %s (%d MiB usable of %d MiB)"
                          % (fixed, " and a rest partition" if rest == 0 else "", disk,
                             (end - start) // MIB_SECTORS, total // MIB_SECTORS))
    out = []
    for part in template["partitions"]:
        size = (part["size_mib"] if part["size_mib"] is not None else rest) * MIB_SECTORS
        out.append(dict(part, start=start, sectors=size, device=partition_device(disk, part["number"])))
        start += size
    return out


def part_type(template, part, environment):
    kind = "swap" if part["role"] == "swap" else "linux"
    if template["label"] == "gpt":
        return GPT_TYPES[kind]
    if part["role"] == "deploy" and environment.get("partition_type"):
        return "%x" % int(environment["partition_type"])
    return MBR_TYPES[kind]


def sfdisk_script(template, layout, environment):
    """What sfdisk reads to write the template's table (the deploy partition bootable)."""
    lines = ["label: %s" % ("gpt" if template["label"] == "gpt" else "dos"), "unit: sectors", ""]
    for part in layout:
        line = "start=%d, size=%d, type=%s" % (part["start"], part["sectors"], part_type(template, part, environment))
        if part["role"] == "deploy":
            line += ", attrs=LegacyBIOSBootable" if template["label"] == "gpt" else ", bootable"
        if template["label"] == "gpt":
            line += ', name="%s"' % part["name"]
        lines.append(line)
    return "\n".join(lines) + "\n"


def table_matches(template, layout, table):
    """Whether an existing table (sfdisk --json's partitiontable, or None) has the layout's partitions."""
    if not table:
        return False, "the disk has no partition table"
    label = table.get("label")
    want = "gpt" if template["label"] == "gpt" else "dos"
    if label != want:
        return False, "the disk's label is %s, the template's %s" % (label, want)
    have = table.get("partitions") or []
    if len(have) != len(layout):
        return False, "the disk has %d partition(s), the template %d" % (len(have), len(layout))
    for mine, theirs in zip(layout, have):
        if int(theirs.get("start", -1)) != mine["start"] or int(theirs.get("size", -1)) != mine["sectors"]:
            return False, ("partition %d (%s) is at %s+%s on the disk, at %d+%d in the template"
                           % (mine["number"], mine["name"], theirs.get("start"), theirs.get("size"),
                              mine["start"], mine["sectors"]))
    return True, "the disk's table matches the template"


def normalize_steps(steps):
    """Macro-step attempts: {macro-step: [{variant, retries, timeout}]}, defaults where not given."""
    steps = steps or {}
    if not isinstance(steps, dict):
        raise DeployError("steps: a mapping of %s is needed" % ", ".join(STEP_KEYS))
    unknown = set(steps) - set(STEP_KEYS)
    if unknown:
        raise DeployError("steps: unknown macro-step(s) %s (known: %s)"
                          % (", ".join(sorted(unknown)), ", ".join(STEP_KEYS)))
    out = {}
    for key, macro in STEP_KEYS.items():
        attempts = steps.get(key)
        if attempts is None:
            attempts = DEFAULT_STEPS[key]
        if not isinstance(attempts, list) or not attempts:
            raise DeployError("steps.%s: a non-empty list of {variant, retries, timeout} is needed" % key)
        out[macro] = []
        for index, attempt in enumerate(attempts):
            where = "steps.%s[%d]" % (key, index)
            if isinstance(attempt, str):
                attempt = {"variant": attempt}
            if not isinstance(attempt, dict):
                raise DeployError("%s: a mapping {variant, retries, timeout} is needed" % where)
            unknown = set(attempt) - {"variant", "retries", "timeout"}
            if unknown:
                raise DeployError("%s: unknown key(s) %s" % (where, ", ".join(sorted(unknown))))
            variant = attempt.get("variant")
            if variant not in VARIANTS[macro]:
                raise DeployError("%s.variant: %r is not one of %s" % (where, variant, ", ".join(VARIANTS[macro])))
            default = dict((a["variant"], a) for a in DEFAULT_STEPS[key]).get(variant, DEFAULT_STEPS[key][0])
            retries, timeout = attempt.get("retries", default["retries"]), attempt.get("timeout", default["timeout"])
            if not isinstance(retries, int) or isinstance(retries, bool) or retries < 0:
                raise DeployError("%s.retries: %r is not a count >= 0" % (where, retries))
            if not isinstance(timeout, (int, float)) or isinstance(timeout, bool) or timeout <= 0:
                raise DeployError("%s.timeout: %r is not a positive number of seconds" % (where, timeout))
            out[macro].append({"variant": variant, "retries": retries, "timeout": float(timeout)})
    return out


def normalize_nodes(nodes, facts, expand, defaults=None):
    """Node names (host ranges expanded) joined to their facts; DeployError naming the node and field."""
    defaults = defaults or {}
    if not nodes:
        raise DeployError("nodes: at least one node is needed")
    try:
        names = expand(nodes)
    except Refused as exc:
        raise DeployError(str(exc))
    facts = facts or {}
    out = []
    for name in names:
        fact = facts.get(name)
        if not isinstance(fact, dict):
            raise DeployError("nodes: %s has no facts in node_facts (mac, ip, bmc_address...)" % name)
        node = {"name": name}
        for key in ("mac", "ip", "bmc_address", "bmc_port", "bmc_user", "bmc_password", "disk_device", "disk_size"):
            value = fact.get(key)
            node[key] = value if value is not None else defaults.get(key)
        for key in ("mac", "ip"):
            if not node[key]:
                raise DeployError("node_facts.%s.%s: missing" % (name, key))
        if not _MAC_RE.match(str(node["mac"])):
            raise DeployError("node_facts.%s.mac: %r is not a MAC address" % (name, node["mac"]))
        try:
            socket.inet_aton(str(node["ip"]))
        except (OSError, socket.error):
            raise DeployError("node_facts.%s.ip: %r is not an IPv4 address" % (name, node["ip"]))
        if node["disk_size"] is not None:
            size = parse_size(node["disk_size"], "node_facts.%s.disk_size" % name)
            if size is None:
                raise DeployError("node_facts.%s.disk_size: a size is needed, not rest" % name)
            node["disk_size"] = size * 1024 * 1024
        out.append(node)
    return out


def normalize_hooks(hooks, read=None):
    """Postinstall hooks as {name, kind (script|archive), data (bytes), run, args, chroot}."""
    read = read or _read_file
    out = []
    for index, hook in enumerate(hooks or []):
        where = "postinstall[%d]" % index
        if not isinstance(hook, dict):
            raise DeployError("%s: a mapping is needed (script, content or archive)" % where)
        unknown = set(hook) - {"name", "script", "content", "archive", "run", "args", "chroot"}
        if unknown:
            raise DeployError("%s: unknown key(s) %s" % (where, ", ".join(sorted(unknown))))
        given = [k for k in ("script", "content", "archive") if hook.get(k) is not None]
        if len(given) != 1:
            raise DeployError("%s: exactly one of script, content, archive is needed" % where)
        kind = given[0]
        if kind == "content":
            data = hook["content"].encode("utf-8")
        else:
            try:
                data = read(hook[kind])
            except (IOError, OSError) as exc:
                raise DeployError("%s.%s: cannot read %s: %s" % (where, kind, hook[kind], exc))
        run = hook.get("run")
        if kind == "archive" and not run:
            raise DeployError("%s.run: the script to run inside the archive is needed" % where)
        if run is not None and (kind != "archive" or run.startswith("/") or ".." in run.split("/")):
            raise DeployError("%s.run: a relative path inside the archive (archive hooks only)" % where)
        name = hook.get("name") or os.path.basename(hook.get(kind) if kind != "content" else "hook-%d" % index)
        if not _NAME_RE.match(str(name)):
            raise DeployError("%s.name: %r is not a hook name (letters, digits, . _ -)" % (where, name))
        out.append({"name": str(name), "kind": "archive" if kind == "archive" else "script", "data": data,
                    "run": run, "args": str(hook.get("args") or ""), "chroot": bool(hook.get("chroot", True))})
    return out


def _read_file(path):
    with open(path, "rb") as fh:
        return fh.read()


# ---------------------------------------------------------------------------
# Shell scripts run on the nodes (busybox sh in the deploy ramdisk)

DISK_SCRIPT = r"""
set -e
test -e /etc/gridops/server || { echo "not the deploy environment" >&2; exit 3; }
DISK=%(disk)s
test -b "$DISK" || { echo "$DISK is not a block device" >&2; exit 4; }
echo "SIZE $(blockdev --getsize64 "$DISK")"
echo "BANNER_CHECK"
sfdisk --json "$DISK" 2>/dev/null || echo '{}'
"""

PARTITION_SCRIPT = r"""
set -e
DISK=%(disk)s
umount -r %(root)s 2>/dev/null || true
swapoff -a 2>/dev/null || true
if [ %(write_table)s = yes ]; then
    wipefs -q -a "$DISK" >/dev/null
    sfdisk -q --wipe always --wipe-partitions always "$DISK" <<'EOF'
%(sfdisk)sEOF
    partprobe "$DISK" 2>/dev/null || blockdev --rereadpt "$DISK" 2>/dev/null || true
fi
sleep 0.2
%(format)s
echo PARTITIONED
"""

BROADCAST_PREPARE = r"""
set -e
mkdir -p %(root)s
umount %(root)s 2>/dev/null || true
%(mount)s
"""

POSTINSTALL_SCRIPT = r"""
set -e
ROOT=%(root)s
NODE=%(node)s
export GRIDOPS_ROOT="$ROOT" GRIDOPS_NODE="$NODE" GRIDOPS_DISK=%(disk)s GRIDOPS_ENVIRONMENT=%(environment)s
grep -qs " $ROOT " /proc/mounts || %(mount)s
test -d "$ROOT/etc" || { echo "the image left no /etc in the deploy partition" >&2; exit 5; }
echo "$NODE" > "$ROOT/etc/hostname"
if [ -f "$ROOT/etc/hosts" ] && ! grep -q "[[:space:]]$NODE\$" "$ROOT/etc/hosts"; then
    printf '127.0.1.1\t%%s\n' "$NODE" >> "$ROOT/etc/hosts"
fi
cat > "$ROOT/etc/fstab" <<'EOF'
%(fstab)sEOF
%(fstab_uuids)s
if [ -f "$ROOT/etc/machine-id" ]; then : > "$ROOT/etc/machine-id"; fi
rm -f "$ROOT/var/lib/dbus/machine-id"
mkdir -p "$ROOT/root/.ssh"
chmod 700 "$ROOT/root/.ssh"
cat > "$ROOT/root/.ssh/authorized_keys" <<'EOF'
%(keys)sEOF
chmod 600 "$ROOT/root/.ssh/authorized_keys"
bind() { for d in dev proc sys; do mkdir -p "$ROOT/$d"; mount --bind "/$d" "$ROOT/$d"; done; }
unbind() { for d in sys proc dev; do umount "$ROOT/$d" 2>/dev/null || true; done; }
trap unbind EXIT
bind
if [ -x "$ROOT/usr/bin/ssh-keygen" ]; then
    rm -f "$ROOT"/etc/ssh/ssh_host_*
    chroot "$ROOT" /usr/bin/ssh-keygen -A >/dev/null
    for k in "$ROOT"/etc/ssh/ssh_host_ed25519_key.pub; do [ -f "$k" ] && echo "HOSTKEY $(cat "$k")"; done
fi
mkdir -p %(work)s/hooks
%(hooks)s
unbind
trap - EXIT
echo POSTINSTALLED
"""

HOOK_SCRIPT = r"""
echo "HOOK %(name)s"
rm -rf %(dir)s; mkdir -p %(dir)s
base64 -d > %(dir)s/%(file)s <<'EOF'
%(data)s
EOF
%(unpack)s
chmod +x %(dir)s/%(run)s
%(exec)s || { rc=$?; echo "postinstall hook %(name)s failed (exit status $rc)" >&2; exit 6; }
rm -rf %(dir)s
"""

BOOTLOADER_SCRIPT = r"""
set -e
ROOT=%(root)s
DISK=%(disk)s
grep -qs " $ROOT " /proc/mounts || %(mount)s
resolve() {
    p=$1; n=0
    while [ -L "$ROOT$p" ] && [ $n -lt 10 ]; do
        t=$(readlink "$ROOT$p"); n=$((n + 1))
        case "$t" in /*) p=$t ;; *) p=$(dirname "$p")/$t ;; esac
    done
    echo "$p" | sed 's#//*#/#g'
}
K=$(resolve %(kernel)s)
test -f "$ROOT$K" || { echo "kernel %(kernel)s ($K) is not in the image" >&2; exit 7; }
I=""
if [ -n %(initrd)s ]; then
    I=$(resolve %(initrd)s)
    test -f "$ROOT$I" || { echo "initrd %(initrd)s ($I) is not in the image" >&2; exit 7; }
fi
UUID=$(blkid -s UUID -o value %(part)s)
echo "KERNEL $K"
echo "INITRD $I"
echo "UUID $UUID"
%(install)s
sync
echo BOOTLOADER
"""

EXTLINUX_INSTALL = r"""
mkdir -p "$ROOT/boot/extlinux"
{
    echo "SERIAL 0 115200"
    echo "DEFAULT gridops"
    echo "PROMPT 0"
    echo "TIMEOUT 1"
    echo "LABEL gridops"
    echo "  LINUX $K"
    [ -n "$I" ] && echo "  INITRD $I"
    echo "  APPEND root=UUID=$UUID ro %(params)s"
} > "$ROOT/boot/extlinux/extlinux.conf"
extlinux --install "$ROOT/boot/extlinux" >/dev/null 2>&1 || { extlinux --install "$ROOT/boot/extlinux"; exit 8; }
dd if=/usr/lib/syslinux/mbr/%(mbr)s of="$DISK" bs=440 count=1 conv=notrunc 2>/dev/null
%(activate)s
"""

FINISH_SCRIPT = r"""
sync
umount %(root)s 2>/dev/null || true
sync
echo FINISHED
"""


def q(value):
    return shlex.quote(str(value))


def mkfs_command(part):
    dev = q(part["device"])
    if part["role"] == "swap":
        return "mkswap %s >/dev/null" % dev
    fs = part["filesystem"]
    if fs == "xfs":
        return "mkfs.xfs -q -f %s" % dev
    return "mkfs.%s -q -F %s" % (fs, dev)


def format_commands(layout, write_table, image_kind):
    """mkfs of the partitions a deployment formats: deploy (tar images), swap, tmp, data (new table only)."""
    out = []
    for part in layout:
        if part["role"] == "keep" or (part["role"] == "data" and not write_table):
            continue
        if part["role"] == "deploy" and image_kind != "tar":
            continue
        if part["role"] != "swap" and not part["filesystem"]:
            continue
        out.append(mkfs_command(part))
    return "\n".join(out) or ":"


def mount_command(part):
    return "mount -t %s %s %s" % (q(part["filesystem"] or "auto"), q(part["device"]), q(ROOT))


def fstab(layout):
    """fstab lines with @UUID:<n>@ placeholders the postinstall script fills in from blkid."""
    lines = []
    for part in layout:
        ref = "UUID=@UUID%d@" % part["number"]
        if part["role"] == "deploy":
            lines.append("%s / %s errors=remount-ro 0 1" % (ref, part["filesystem"] or "auto"))
        elif part["role"] == "swap":
            lines.append("%s none swap sw 0 0" % ref)
        elif part["mount"]:
            lines.append("%s %s %s %s 0 2" % (ref, part["mount"], part["filesystem"] or "auto", part["options"]))
    return "\n".join(lines) + "\n"


def fstab_uuids(layout):
    out = []
    for part in layout:
        if part["role"] == "deploy" or part["role"] == "swap" or part["mount"]:
            out.append('u=$(blkid -s UUID -o value %s); sed -i "s/@UUID%d@/$u/" "$ROOT/etc/fstab"'
                       % (q(part["device"]), part["number"]))
    return "\n".join(out)


def hook_commands(hooks, environment_hooks):
    """The HOOK_SCRIPT blocks: the environment's hooks (in the ramdisk) then the caller's (chroot by default)."""
    out = []
    for index, hook in enumerate(list(environment_hooks) + list(hooks)):
        chroot = hook["chroot"]
        base = "/tmp/gridops-postinstall/%02d-%s" % (index, hook["name"])
        real = ("$ROOT" + base) if chroot else WORKDIR + "/hooks/%02d-%s" % (index, hook["name"])
        file_name = "archive.tar" if hook["kind"] == "archive" else "script"
        run = hook["run"] if hook["kind"] == "archive" else "script"
        unpack = ('tar -x -f %s/archive.tar -C %s' % (real, real)) if hook["kind"] == "archive" else ":"
        if chroot:
            inside = "cd %s && GRIDOPS_ROOT=/ ./%s %s" % (q(base), q(run), hook["args"])
            execute = 'chroot "$ROOT" /bin/sh -c %s' % q(inside)
        else:
            execute = "(cd %s && ./%s %s)" % (real, q(run), hook["args"])
        data = base64.encodebytes(hook["data"]).decode("ascii").strip()
        out.append(HOOK_SCRIPT % {"name": hook["name"], "dir": real, "file": file_name, "data": data,
                                  "unpack": unpack, "run": q(run), "exec": execute})
    return "\n".join(out)


def environment_hooks(environment, read=None):
    """The environment's own postinstall hooks (scripts on the server, run in the ramdisk, not in a chroot)."""
    hooks = []
    for index, hook in enumerate(environment.get("postinstall") or []):
        try:
            data = (read or _read_file)(hook["script"])
        except (IOError, OSError) as exc:
            raise DeployError("environment.postinstall[%d].script: cannot read %s: %s" % (index, hook["script"], exc))
        hooks.append({"name": hook.get("name") or os.path.basename(hook["script"]), "kind": "script", "data": data,
                      "run": None, "args": hook.get("args") or "", "chroot": False})
    return hooks


DECOMPRESS = {"none": "cat", "gzip": "gzip -dc", "xz": "xz -dc", "zstd": "zstd -qdc"}


def broadcast_target(environment, deploy_part):
    """The shell command a node runs with the image stream on its stdin."""
    image = environment["image"]
    unpack = DECOMPRESS[image.get("compression") or "none"]
    if image["kind"] == "tar":
        # GNU tar by its path: busybox's tar (first on a ramdisk's PATH) has no --xattrs.
        return "%s | /usr/bin/tar -x -p --numeric-owner --xattrs --xattrs-include='*' -f - -C %s" % (unpack, q(ROOT))
    return "%s | dd of=%s bs=4M 2>/dev/null" % (unpack, q(deploy_part["device"]))


# ---------------------------------------------------------------------------
# Talking to nodes


class Ssh:
    """ssh to a node's deploy ramdisk as root with the deploy key."""

    def __init__(self, private_key, user="root", port=22, connect_timeout=5):
        self.private_key = private_key
        self.user = user
        self.port = port
        self.connect_timeout = connect_timeout

    def argv(self, host, command=None):
        argv = ["ssh", "-o", "BatchMode=yes", "-o", "StrictHostKeyChecking=no", "-o", "UserKnownHostsFile=/dev/null",
                "-o", "LogLevel=ERROR", "-o", "ConnectTimeout=%d" % self.connect_timeout,
                "-o", "ServerAliveInterval=3", "-o", "ServerAliveCountMax=4", "-o", "IdentitiesOnly=yes",
                "-i", self.private_key, "-p", str(self.port), "-l", self.user, host]
        return argv + ([command] if command is not None else [])

    def run(self, host, script, timeout):
        """(rc, stdout, stderr) of sh reading script on stdin; rc None on timeout."""
        proc = subprocess.Popen(self.argv(host, "sh -s"), stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, start_new_session=True)
        try:
            out, err = proc.communicate(script.encode("utf-8"), timeout=max(1.0, timeout))
        except subprocess.TimeoutExpired:
            _kill(proc)
            out, err = proc.communicate()
            return None, out.decode("utf-8", "replace"), err.decode("utf-8", "replace")
        return proc.returncode, out.decode("utf-8", "replace"), err.decode("utf-8", "replace")


def _kill(proc):
    try:
        os.killpg(proc.pid, 9)
    except OSError:
        pass


def ssh_banner(host, port=22, timeout=3.0):
    """The SSH identification line a host sends, or None."""
    try:
        with socket.create_connection((host, port), timeout=timeout) as sock:
            sock.settimeout(timeout)
            data = b""
            while b"\n" not in data and len(data) < 1024:
                chunk = sock.recv(256)
                if not chunk:
                    break
                data += chunk
    except (OSError, socket.error):
        return None
    line = data.split(b"\n")[0].strip().decode("ascii", "replace")
    return line if line.startswith("SSH-") else None


def ssh_host_key(host, key_type="ed25519", port=22, timeout=5):
    """The host's public key ("ssh-ed25519 AAAA...") by ssh-keyscan, or None."""
    try:
        out = subprocess.run(["ssh-keyscan", "-T", str(timeout), "-p", str(port), "-t", key_type, host],
                             capture_output=True, text=True, timeout=timeout + 5, check=False).stdout
    except (OSError, subprocess.SubprocessError):
        return None
    for line in out.splitlines():
        fields = line.split()
        if len(fields) >= 3 and not line.startswith("#"):
            return "%s %s" % (fields[1], fields[2])
    return None


class StepFailed(Exception):
    def __init__(self, micro, message):
        Exception.__init__(self, message)
        self.micro = micro


def _tail(text, limit=400):
    text = (text or "").strip()
    return text if len(text) <= limit else "..." + text[-limit:]


def remote(ssh, node, micro, script, timeout, expect):
    """Run script on node; StepFailed(micro) unless it exits 0 and prints expect."""
    rc, out, err = ssh.run(node["ip"], script, timeout)
    if rc is None:
        raise StepFailed(micro, "timed out after %ds%s" % (timeout, (": " + _tail(err)) if err.strip() else ""))
    if rc == 255 and not out:
        raise StepFailed(micro, "ssh root@%s: %s" % (node["ip"], _tail(err) or "connection failed"))
    if rc != 0 or expect not in out:
        raise StepFailed(micro, "exit status %s: %s" % (rc, _tail(err) or _tail(out) or "no output"))
    return out


# ---------------------------------------------------------------------------
# The run


def deployment_id(now=None):
    now = now or utcnow()
    return "%s-%s" % (now.strftime("%Y%m%dT%H%M%SZ"), uuid.uuid4().hex[:6])


class Progress:
    """The live state of a deployment, written (atomically, at most every interval s) to a JSON file."""

    def __init__(self, path, deployment, nodes, interval=1.0, clock=time.monotonic):
        self.path = path
        self.interval = interval
        self.clock = clock
        self.lock = threading.Lock()
        self.started = clock()
        self.last = 0.0
        self.state = {"id": deployment, "step": "prepare", "nodes": dict((n, "pending") for n in nodes),
                      "bytes": 0, "bytes_total": 0, "done": False, "events": []}

    def update(self, force=False, event=None, **values):
        with self.lock:
            self.state.update(values)
            if event:
                self.state["events"] = (self.state["events"] + [event])[-20:]
            self.state["elapsed"] = round(self.clock() - self.started, 1)
            counts = {}
            for state in self.state["nodes"].values():
                counts[state] = counts.get(state, 0) + 1
            self.state["counts"] = counts
            if not self.path or (not force and self.clock() - self.last < self.interval):
                return
            self.last = self.clock()
            text = json.dumps(self.state, sort_keys=True)
        tmp = "%s.%d.tmp" % (self.path, os.getpid())
        try:
            with open(tmp, "w") as fh:
                fh.write(text + "\n")
            os.rename(tmp, self.path)
        except (IOError, OSError):
            pass

    def node(self, name, state, force=False):
        with self.lock:
            self.state["nodes"][name] = state
        self.update(force=force)


class Deployment:
    """One deployment: prepared inputs in, per-node results out."""

    def __init__(self, nodes, environment, template, steps, ssh, power_request, netboot_config=None,
                 dhcp_restart=None, hooks=(), env_hooks=(), authorized_keys=(), kernel_params="",
                 broadcast_port=0, server_address=None, window=32, power_window=25, power_spacing=0.0,
                 progress=None, workdir=WORKDIR, clock=time.monotonic):
        self.nodes = nodes
        self.env = environment
        self.template = template
        self.steps = steps
        self.ssh = ssh
        self.power_request = power_request
        self.netboot_config = netboot_config
        self.dhcp_restart = dhcp_restart or []
        self.hooks = list(hooks)
        self.env_hooks = list(env_hooks)
        self.keys = [k.strip() for k in authorized_keys if k and k.strip()]
        self.kernel_params = kernel_params or ""
        self.port = broadcast_port
        self.server_address = server_address
        self.window = max(1, int(window))
        self.power_window = power_window
        self.power_spacing = power_spacing
        self.progress = progress
        self.workdir = workdir
        self.clock = clock
        self.results = dict((n["name"], self._new_result(n)) for n in nodes)
        self.node_state = dict((n["name"], {}) for n in nodes)
        self.broadcasts = []
        self.lock = threading.Lock()

    @staticmethod
    def _new_result(node):
        return {"name": node["name"], "ip": node["ip"], "state": "pending", "failed_step": None,
                "failed_micro_step": None, "error": None, "steps": {}, "micro_steps": [], "attempts": [],
                "host_key": None, "seconds": None}

    # -- helpers -----------------------------------------------------------

    def _event(self, text):
        if self.progress:
            self.progress.update(event=text, force=True)

    def _micro(self, node, macro, micro, started, ok, error=None):
        with self.lock:
            self.results[node["name"]]["micro_steps"].append(
                {"step": macro, "micro_step": micro, "seconds": round(self.clock() - started, 2), "ok": ok,
                 "error": error})

    def _parallel(self, nodes, work):
        """work(node) in a thread pool; returns {name: exception or None}."""
        errors = {}
        if not nodes:
            return errors
        with concurrent.futures.ThreadPoolExecutor(max_workers=min(self.window, len(nodes))) as pool:
            futures = dict((pool.submit(work, n), n["name"]) for n in nodes)
            for future in concurrent.futures.as_completed(futures):
                try:
                    future.result()
                    errors[futures[future]] = None
                except StepFailed as exc:
                    errors[futures[future]] = exc
                except Exception as exc:  # a bug must fail the node, not the deployment
                    errors[futures[future]] = StepFailed("internal", "%s: %s" % (type(exc).__name__, exc))
        return errors

    def _timed(self, macro, micro, nodes, work):
        """Run work per node as micro-step micro; returns (ok nodes, {name: StepFailed})."""
        def one(node):
            started = self.clock()
            try:
                work(node)
            except StepFailed as exc:
                self._micro(node, macro, exc.micro or micro, started, False, str(exc))
                raise
            self._micro(node, macro, micro, started, True)
        errors = self._parallel(nodes, one)
        ok = [n for n in nodes if errors.get(n["name"]) is None]
        return ok, dict((k, v) for k, v in errors.items() if v is not None)

    def _netboot(self, nodes, profile_for):
        """One netboot call for every node (their own profile each); StepFailed for all on error."""
        if self.netboot_config is None:
            raise StepFailed("netboot", "no netboot configuration (pxe_server's %s)" % _pxe.CONFIG_PATH)
        entries = [{"name": n["name"], "mac": n["mac"], "ip": n["ip"], "profile": profile_for(n)} for n in nodes]
        try:
            res = _pxe.netboot(self.netboot_config, entries, state="present")
        except _pxe.NetbootError as exc:
            raise StepFailed("netboot", str(exc))
        if res.get("dhcp_reload") and self.dhcp_restart:
            proc = subprocess.run(self.dhcp_restart, capture_output=True, text=True, check=False)
            if proc.returncode != 0:
                raise StepFailed("netboot", "%s: exit status %d: %s"
                                 % (" ".join(self.dhcp_restart), proc.returncode, _tail(proc.stderr or proc.stdout)))

    def _reboot(self, nodes, timeout, soft_key=True):
        """Reboot by the power engine's escalation ladder; returns {name: StepFailed} of the failed ones."""
        request = dict(self.power_request)
        levels = dict((k, dict(v)) for k, v in request["levels"].items())
        if "soft" in levels and soft_key:
            levels["soft"].setdefault("private_key", None)
            levels["soft"]["private_key"] = levels["soft"]["private_key"] or self.ssh.private_key
            levels["soft"]["timeout"] = min(levels["soft"]["timeout"], timeout)
        request["levels"] = levels
        power_nodes = []
        for n in nodes:
            power_nodes.append({"name": n["name"], "host": n["ip"], "bmc_address": n.get("bmc_address") or "",
                                "bmc_port": int(n.get("bmc_port") or 623), "bmc_user": n.get("bmc_user") or "",
                                "bmc_password": n.get("bmc_password") or ""})
        results = _power.run(power_nodes, request, window=self.power_window, spacing=self.power_spacing)
        failed = {}
        for node, res in zip(nodes, results):
            with self.lock:
                self.results[node["name"]]["attempts"].append(
                    {"power": {"level": res["level"], "attempts": res["attempts"], "error": res["error"]}})
            if res["failed"]:
                failed[node["name"]] = StepFailed("reboot", res["error"] or "reboot failed")
        return failed

    def _wait_ramdisk(self, node, deadline):
        last = "no answer"
        while True:
            rc, out, err = self.ssh.run(node["ip"], "test -e /etc/gridops/server && echo %s" % SSH_MARKER,
                                        min(15.0, max(2.0, deadline - self.clock())))
            if rc == 0 and SSH_MARKER in out:
                self.node_state[node["name"]]["deploy_banner"] = ssh_banner(node["ip"])
                return
            if rc is not None and rc != 255:
                last = "SSH answers but not the deploy environment (no /etc/gridops/server)"
            else:
                last = _tail(err) or "no answer"
            if self.clock() >= deadline:
                raise StepFailed("wait_ssh", "the deploy environment did not answer SSH in time: %s" % last)
            time.sleep(2)

    # -- SetDeploymentEnv --------------------------------------------------

    def set_deployment_env(self, variant, nodes, timeout):
        macro = "SetDeploymentEnv"
        deadline = self.clock() + timeout
        failed = {}
        if variant == "reboot":
            started = self.clock()
            try:
                self._netboot(nodes, lambda n: {"kind": "deploy"})
            except StepFailed as exc:
                for n in nodes:
                    self._micro(n, macro, "netboot", started, False, str(exc))
                return [], dict((n["name"], exc) for n in nodes)
            for n in nodes:
                self._micro(n, macro, "netboot", started, True)
            started = self.clock()
            failed = self._reboot(nodes, timeout)
            for n in nodes:
                err = failed.get(n["name"])
                self._micro(n, macro, "reboot", started, err is None, str(err) if err else None)
            self._event("%s: %d node(s) rebooting into the deploy environment" % (macro, len(nodes) - len(failed)))
            nodes = [n for n in nodes if n["name"] not in failed]
        for n in nodes:
            self.progress and self.progress.node(n["name"], "SetDeploymentEnv")
        ok, errors = self._timed(macro, "wait_ssh", nodes, lambda n: self._wait_ramdisk(n, deadline))
        failed.update(errors)
        ok, errors = self._timed(macro, "disk", ok, lambda n: self._read_disk(n, deadline))
        failed.update(errors)
        ok, errors = self._timed(macro, "partition", ok, lambda n: self._partition(n, deadline))
        failed.update(errors)
        return ok, failed

    def _disk(self, node):
        return node.get("disk_device") or self.template["disk"]

    def _read_disk(self, node, deadline):
        disk = self._disk(node)
        out = remote(self.ssh, node, "disk", DISK_SCRIPT % {"disk": q(disk)}, deadline - self.clock(), "SIZE ")
        size = int(re.search(r"^SIZE (\d+)$", out, re.M).group(1))
        text = out.split("BANNER_CHECK", 1)[1]
        try:
            table = json.loads(text).get("partitiontable")
        except ValueError:
            raise StepFailed("disk", "cannot read sfdisk --json output: %s" % _tail(text))
        try:
            layout = plan_layout(self.template, size, disk)
        except DeployError as exc:
            raise StepFailed("disk", str(exc))
        match, why = table_matches(self.template, layout, table)
        keep = [p["name"] for p in layout if p["role"] == "keep"]
        if not match and keep:
            raise StepFailed("disk", "%s, and partition(s) %s must be kept: refusing to repartition %s"
                             % (why, ", ".join(keep), disk))
        state = self.node_state[node["name"]]
        state.update(disk=disk, disk_bytes=size, layout=layout, write_table=not match, table_reason=why)

    def _partition(self, node, deadline):
        state = self.node_state[node["name"]]
        layout = state["layout"]
        script = PARTITION_SCRIPT % {
            "disk": q(state["disk"]), "root": q(ROOT), "write_table": "yes" if state["write_table"] else "no",
            "sfdisk": sfdisk_script(self.template, layout, self.env),
            "format": format_commands(layout, state["write_table"], self.env["image"]["kind"])}
        remote(self.ssh, node, "partition", script, deadline - self.clock(), "PARTITIONED")

    # -- BroadcastEnv ------------------------------------------------------

    def _deploy_part(self, node):
        return next(p for p in self.node_state[node["name"]]["layout"] if p["role"] == "deploy")

    def broadcast_env(self, variant, nodes, timeout):
        macro = "BroadcastEnv"
        deadline = self.clock() + timeout
        failed = {}
        tar = self.env["image"]["kind"] == "tar"

        def prepare(n):
            mount = mount_command(self._deploy_part(n)) if tar else ":"
            script = BROADCAST_PREPARE % {"root": q(ROOT), "mount": mount} + "echo MOUNTED\n"
            remote(self.ssh, n, "mount", script, deadline - self.clock(), "MOUNTED")

        ok, errors = self._timed(macro, "mount", nodes, prepare)
        failed.update(errors)
        for n in ok:
            self.progress and self.progress.node(n["name"], "BroadcastEnv")
        ok, errors = self._send(variant, ok, deadline)
        failed.update(errors)
        ok, errors = self._timed(macro, "postinstall", ok, lambda n: self._postinstall(n, deadline))
        failed.update(errors)
        ok, errors = self._timed(macro, "bootloader", ok, lambda n: self._bootloader(n, deadline))
        failed.update(errors)
        return ok, failed

    def _send(self, variant, nodes, deadline):
        macro = "BroadcastEnv"
        if not nodes:
            return [], {}
        started = self.clock()
        receivers = []
        for n in nodes:
            target = broadcast_target(self.env, self._deploy_part(n))
            receivers.append(_broadcast.Receiver(n["name"], n["ip"], self._remote_argv(n["ip"]), target))
        total = int(self.env["image"].get("size") or os.path.getsize(self.env["image"]["file"]))

        def progress(event):
            if self.progress:
                sent = sum(v.get("bytes", 0) for v in event.get("nodes", {}).values())
                self.progress.update(bytes=sent, bytes_total=total * len(nodes), broadcast=event.get("nodes"))

        try:
            results = _broadcast.broadcast(
                self.env["image"]["file"], receivers, method=variant, sha256=self.env["image"]["sha256"],
                port=self.port, server_address=self.server_address, timeout=max(10.0, deadline - self.clock()),
                progress=progress, workdir=self.workdir + "/broadcast")
        except ValueError as exc:
            results = dict((n["name"], {"ok": False, "step": "start", "error": str(exc)}) for n in nodes)
        failed = {}
        ok = []
        for n in nodes:
            res = results.get(n["name"]) or {"ok": False, "step": "start", "error": "no result"}
            with self.lock:
                self.results[n["name"]]["attempts"].append(
                    {"broadcast": dict((k, v) for k, v in res.items() if k != "ok")})
            micro = "send" if res.get("step") not in ("verify",) else "verify"
            if res.get("ok"):
                ok.append(n)
                self._micro(n, macro, "send", started, True)
            else:
                err = StepFailed(micro, "%s (%s, %s)" % (res.get("error") or "failed", variant, res.get("step")))
                failed[n["name"]] = err
                self._micro(n, macro, micro, started, False, str(err))
        self.broadcasts.append({"method": variant, "nodes": len(nodes), "ok": len(ok),
                                "seconds": round(self.clock() - started, 2), "bytes": total})
        self._event("BroadcastEnv: %s sent %d bytes to %d/%d node(s) in %.1fs"
                    % (variant, total, len(ok), len(nodes), self.clock() - started))
        return ok, failed

    def _remote_argv(self, host):
        return lambda command: self.ssh.argv(host, command)

    def _postinstall(self, node, deadline):
        state = self.node_state[node["name"]]
        layout = state["layout"]
        deploy = self._deploy_part(node)
        script = POSTINSTALL_SCRIPT % {
            "root": q(ROOT), "node": q(node["name"]), "disk": q(state["disk"]),
            "environment": q(self.env["name"]), "mount": mount_command(deploy),
            "fstab": fstab(layout), "fstab_uuids": fstab_uuids(layout),
            "keys": "".join(k + "\n" for k in self.keys), "work": q(self.workdir),
            "hooks": hook_commands(self.hooks, self.env_hooks)}
        out = remote(self.ssh, node, "postinstall", script, deadline - self.clock(), "POSTINSTALLED")
        match = re.search(r"^HOSTKEY (\S+ \S+)", out, re.M)
        if match:
            self.results[node["name"]]["host_key"] = match.group(1)

    def _bootloader(self, node, deadline):
        state = self.node_state[node["name"]]
        deploy = self._deploy_part(node)
        boot = self.env.get("boot") or {}
        if not boot.get("kernel"):
            raise StepFailed("bootloader", "the environment has no boot.kernel: it cannot boot from disk")
        params = " ".join(p for p in (boot.get("params") or "", self.kernel_params) if p)
        if self.template["label"] == "gpt":
            activate = "sfdisk -q --part-attrs \"$DISK\" %d LegacyBIOSBootable" % deploy["number"]
        else:
            activate = "sfdisk -q --activate \"$DISK\" %d" % deploy["number"]
        install = EXTLINUX_INSTALL % {"params": params.replace("%", "%%").replace('"', ""),
                                      "mbr": "gptmbr.bin" if self.template["label"] == "gpt" else "mbr.bin",
                                      "activate": activate}
        script = BOOTLOADER_SCRIPT % {"root": q(ROOT), "disk": q(state["disk"]), "mount": mount_command(deploy),
                                      "kernel": q(boot["kernel"]), "initrd": q(boot.get("initrd") or ""),
                                      "part": q(deploy["device"]), "install": install}
        script += FINISH_SCRIPT % {"root": q(ROOT)}
        out = remote(self.ssh, node, "bootloader", script, deadline - self.clock(), "FINISHED")
        for key in ("KERNEL", "INITRD", "UUID"):
            match = re.search(r"^%s (.*)$" % key, out, re.M)
            state[key.lower()] = match.group(1).strip() if match else ""
        state["params"] = params

    # -- BootNewEnv --------------------------------------------------------

    def boot_new_env(self, variant, nodes, timeout):
        macro = "BootNewEnv"
        deadline = self.clock() + timeout
        started = self.clock()
        try:
            self._netboot(nodes, self._final_profile)
        except StepFailed as exc:
            for n in nodes:
                self._micro(n, macro, "netboot", started, False, str(exc))
            return [], dict((n["name"], exc) for n in nodes)
        for n in nodes:
            self._micro(n, macro, "netboot", started, True)
            self.progress and self.progress.node(n["name"], "BootNewEnv")
        started = self.clock()
        failed = self._reboot(nodes, timeout)
        for n in nodes:
            err = failed.get(n["name"])
            self._micro(n, macro, "reboot", started, err is None, str(err) if err else None)
        nodes = [n for n in nodes if n["name"] not in failed]
        ok, errors = self._timed(macro, "wait_system", nodes, lambda n: self._wait_system(n, deadline))
        failed.update(errors)
        return ok, failed

    def _final_profile(self, node):
        if self.template["boot"] != "kernel":
            return {"kind": "local"}
        state = self.node_state[node["name"]]
        published = self.node_state.get("__kernel__")
        if not published:
            raise StepFailed("netboot", "the environment's kernel was not published to the boot root")
        params = "root=UUID=%s ro %s" % (state.get("uuid"), state.get("params", ""))
        profile = {"kind": "kernel", "kernel": published["kernel"], "params": params.strip()}
        if published.get("initrd"):
            profile["initrd"] = published["initrd"]
        return profile

    def publish_kernel(self, node, boot_root):
        """Copy the environment's kernel and initrd from a deployed node to the boot root (boot: kernel)."""
        state = self.node_state[node["name"]]
        rel = "environments/%s-%s" % (self.env["name"], self.env["image"]["sha256"][:12])
        os.makedirs(os.path.join(boot_root, rel), exist_ok=True)
        out = {}
        for key, name in (("kernel", "vmlinuz"), ("initrd", "initrd.img")):
            path = state.get(key)
            if not path:
                continue
            dest = os.path.join(boot_root, rel, name)
            remote_path = q(ROOT + path)
            script = "mount | grep -q %s || %s; cat %s" % (q(" " + ROOT + " "), mount_command(self._deploy_part(node)),
                                                           remote_path)
            with open(dest + ".tmp", "wb") as fh:
                proc = subprocess.run(self.ssh.argv(node["ip"], script), stdout=fh, stderr=subprocess.PIPE,
                                      timeout=600, check=False)
            if proc.returncode != 0:
                raise StepFailed("bootloader", "cannot copy %s from %s: %s"
                                 % (path, node["name"], _tail(proc.stderr.decode())))
            os.rename(dest + ".tmp", dest)
            out[key] = "%s/%s" % (rel, name)
        self.node_state["__kernel__"] = out

    def _wait_system(self, node, deadline):
        before = self.node_state[node["name"]].get("deploy_banner")
        want_key = self.results[node["name"]]["host_key"]
        last = "no answer on port 22"
        while True:
            banner = ssh_banner(node["ip"])
            if banner and banner != before:
                if not want_key:
                    return
                key = ssh_host_key(node["ip"])
                if key == want_key:
                    return
                last = "SSH answers with host key %s, not the one made in postinstall" % (key,)
            elif banner:
                last = "still the deploy environment (%s)" % banner
            if self.clock() >= deadline:
                raise StepFailed("wait_system", "the new system did not answer SSH in time: %s" % last)
            time.sleep(2)

    # -- the automaton -----------------------------------------------------

    def run_macro(self, macro, nodes, action):
        """Try the attempts of a macro-step; returns the OK nodes, the KO ones get their error."""
        pending = list(nodes)
        ok_all = []
        last = {}
        for attempt in self.steps[macro]:
            for tries in range(attempt["retries"] + 1):
                if not pending:
                    break
                started = self.clock()
                self._event("%s: %s on %d node(s)%s" % (macro, attempt["variant"], len(pending),
                                                        " (retry %d)" % tries if tries else ""))
                ok, failed = action(attempt["variant"], pending, attempt["timeout"])
                seconds = round(self.clock() - started, 2)
                for n in ok:
                    step = self.results[n["name"]]["steps"].setdefault(macro, {"seconds": 0.0, "tries": 0})
                    step.update(variant=attempt["variant"], ok=True, seconds=round(step["seconds"] + seconds, 2),
                                tries=step["tries"] + 1)
                for name, err in failed.items():
                    step = self.results[name]["steps"].setdefault(macro, {"seconds": 0.0, "tries": 0})
                    step.update(variant=attempt["variant"], ok=False, seconds=round(step["seconds"] + seconds, 2),
                                tries=step["tries"] + 1, error=str(err), micro_step=err.micro)
                    last[name] = err
                ok_all.extend(ok)
                pending = [n for n in pending if n["name"] in failed]
        for n in pending:
            err = last[n["name"]]
            res = self.results[n["name"]]
            res.update(state="failed", failed_step=macro, failed_micro_step=err.micro, error=str(err))
            self.progress and self.progress.node(n["name"], "failed", force=True)
        return ok_all

    def run(self, boot_root=None):
        started = self.clock()
        nodes = self.run_macro("SetDeploymentEnv", self.nodes, self.set_deployment_env)
        nodes = self.run_macro("BroadcastEnv", nodes, self.broadcast_env)
        if nodes and self.template["boot"] == "kernel":
            try:
                self.publish_kernel(nodes[0], boot_root or self.netboot_config.root)
            except (StepFailed, OSError) as exc:
                for n in nodes:
                    self.results[n["name"]].update(state="failed", failed_step="BootNewEnv",
                                                   failed_micro_step="publish_kernel", error=str(exc))
                nodes = []
        nodes = self.run_macro("BootNewEnv", nodes, self.boot_new_env)
        for n in nodes:
            self.results[n["name"]]["state"] = "deployed"
            self.progress and self.progress.node(n["name"], "deployed")
        total = round(self.clock() - started, 2)
        for res in self.results.values():
            res["seconds"] = round(sum(s["seconds"] for s in res["steps"].values()), 2)
        if self.progress:
            self.progress.update(step="done", done=True, force=True)
        return [self.results[n["name"]] for n in self.nodes], total


# ---------------------------------------------------------------------------
# History (the registry's deployments tables)


def record(reg, deployment, user, environment, method, started, seconds, results, summary):
    with reg.transaction() as conn:
        conn.execute(
            "INSERT INTO deployments (id, user, environment, environment_version, environment_owner, image_sha256, "
            "method, started, ended, seconds, nodes, deployed, failed, result) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, "
            "?, ?, ?, ?)",
            (deployment, user, environment["name"], environment.get("version"), environment.get("owner"),
             environment["image"]["sha256"], method, isotime(started),
             isotime(started + datetime.timedelta(seconds=seconds)), seconds, len(results),
             sum(1 for r in results if r["state"] == "deployed"), sum(1 for r in results if r["state"] != "deployed"),
             json.dumps(summary, sort_keys=True)))
        for res in results:
            conn.execute(
                "INSERT INTO deployment_nodes (deployment, node, state, failed_step, failed_micro_step, error, seconds, "
                "steps) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                (deployment, res["name"], "deployed" if res["state"] == "deployed" else "failed", res["failed_step"],
                 res["failed_micro_step"], res["error"], res["seconds"] or 0.0,
                 json.dumps({"steps": res["steps"], "micro_steps": res["micro_steps"]}, sort_keys=True)))


def statistics(reg, nodes=None, since=None, limit=20):
    """kastat: per node, deployments and failures (by step); per micro-step, mean and max seconds."""
    with reg.transaction() as conn:
        query, args = "SELECT dn.*, d.started FROM deployment_nodes dn JOIN deployments d ON d.id = dn.deployment", []
        where = []
        if since:
            where.append("d.started >= ?")
            args.append(since)
        if where:
            query += " WHERE " + " AND ".join(where)
        rows = conn.execute(query, args).fetchall()
        recent = [dict(r) for r in conn.execute(
            "SELECT id, user, environment, environment_version, method, started, seconds, nodes, deployed, failed "
            "FROM deployments ORDER BY started DESC LIMIT ?", (int(limit),))]
    wanted = set(nodes) if nodes else None
    per_node, per_step = {}, {}
    for row in rows:
        if wanted is not None and row["node"] not in wanted:
            continue
        stats = per_node.setdefault(row["node"], {"deployments": 0, "failed": 0, "failed_steps": {}})
        stats["deployments"] += 1
        if row["state"] == "failed":
            stats["failed"] += 1
            key = "%s/%s" % (row["failed_step"], row["failed_micro_step"])
            stats["failed_steps"][key] = stats["failed_steps"].get(key, 0) + 1
        for micro in json.loads(row["steps"]).get("micro_steps", []):
            key = "%s/%s" % (micro["step"], micro["micro_step"])
            step = per_step.setdefault(key, {"count": 0, "total": 0.0, "max": 0.0, "failed": 0})
            step["count"] += 1
            step["total"] += micro["seconds"]
            step["max"] = max(step["max"], micro["seconds"])
            step["failed"] += 0 if micro["ok"] else 1
    for stats in per_node.values():
        stats["failure_rate"] = round(stats["failed"] / float(stats["deployments"]), 3)
    steps = dict((k, {"count": v["count"], "mean_seconds": round(v["total"] / v["count"], 2),
                      "max_seconds": round(v["max"], 2), "failed": v["failed"]}) for k, v in per_step.items())
    return {"nodes": per_node, "micro_steps": steps, "recent": recent}
