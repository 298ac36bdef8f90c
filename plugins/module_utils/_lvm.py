# -*- coding: utf-8 -*-
# Copyright: (c) 2026, gridops.metal developers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

"""The lvm role's model: check volume groups and logical volumes against a host's disks.

``plan(volume_groups, safe_mode, probe)`` takes the role's ``lvm_volume_groups``
and what the host reports (``lsblk``, ``pvs``, ``vgs``, ``lvs``, and the
resolved device paths), and returns what to do: the volume groups with their
devices, the logical volumes and thin pools in creation order, the devices to
wipe (forced only), the packages needed.  Nothing is refused later than here:
every problem is collected and reported at once, one line each, naming the
field (``lvm_volume_groups[0].pvs[1]: /dev/vdc holds an ext4 file system``).

Sizes are checked in extents as LVM counts them: 1 MiB per device for the
label and metadata, thin pools with their metadata (size/1024, at least
2 MiB) and one spare of it per volume group.  Existing volumes never shrink.

Plain Python (standard library only): the lvm_plan module and the unit tests use it.
"""

from __future__ import absolute_import, division, print_function
__metaclass__ = type

import re

MIB = 1024 * 1024
PE_START = MIB
DEFAULT_PESIZE = 4 * MIB
_UNITS = {"b": 1, "s": 512, "k": 1024, "m": MIB, "g": 1024 * MIB, "t": 1024 ** 4, "p": 1024 ** 5, "e": 1024 ** 6}
_SIZE = re.compile(r"^([0-9]+(?:\.[0-9]+)?)([bBsSkKmMgGtTpPeE]?)$")
_PERCENT = re.compile(r"^([0-9]+(?:\.[0-9]+)?)%(VG|PVS|FREE|ORIGIN)$")
_NAME = re.compile(r"^[A-Za-z0-9+_.][A-Za-z0-9+_.-]{0,126}$")
_VG_FIELDS = ("name", "pvs", "pesize", "force", "logical_volumes")
_LV_FIELDS = ("name", "size", "type", "thin_pool", "state", "opts")


class LvmPlanError(Exception):
    """The layout is refused; the message lists every problem, one a line."""


class _Problems(list):
    def add(self, where, message):
        self.append("%s: %s" % (where, message))


def human(nbytes):
    for unit, size in (("TiB", 1024 ** 4), ("GiB", 1024 ** 3), ("MiB", MIB), ("KiB", 1024)):
        if nbytes >= size:
            return ("%.2f" % (nbytes / size)).rstrip("0").rstrip(".") + " " + unit
    return "%d B" % nbytes


def parse_size(text, default_unit="m"):
    """Bytes of an lvcreate-style size (512m, 1.5G, 100 = 100 MiB); None when it is not one."""
    match = _SIZE.match(str(text).strip())
    if not match:
        return None
    unit = (match.group(2) or default_unit).lower()
    return int(float(match.group(1)) * _UNITS[unit])


def _extents(nbytes, extent):
    return -(-nbytes // extent)


def flatten_lsblk(tree):
    """path -> device dict (name, size, type, fstype, pttype, mountpoint, children, parent)."""
    devices = {}

    def walk(items, parent):
        for dev in items or []:
            path = dev.get("name") or dev.get("path")
            entry = {
                "path": path,
                "size": int(dev.get("size") or 0),
                "type": dev.get("type") or "",
                "fstype": dev.get("fstype") or "",
                "pttype": dev.get("pttype") or "",
                "mountpoint": dev.get("mountpoint") or "",
                "children": [c.get("name") or c.get("path") for c in dev.get("children") or []],
                "parent": parent,
            }
            devices.setdefault(path, entry)
            walk(dev.get("children"), path)

    walk((tree or {}).get("blockdevices"), None)
    return devices


def _report(probe, key, section):
    """Rows of an LVM JSON report (`pvs --reportformat json`), or the list given as is."""
    value = probe.get(key) or []
    if isinstance(value, dict):
        rows = []
        for report in value.get("report", []):
            rows += report.get(section, [])
        return rows
    return value


def _mounted(devices, path):
    """Mount points on path or below it."""
    dev = devices.get(path)
    if dev is None:
        return []
    found = [dev["mountpoint"]] if dev["mountpoint"] else []
    for child in dev["children"]:
        found += _mounted(devices, child)
    return found


def _device_problem(dev, devices, pv_vg, vg_name):
    """(refusal that force does not lift, or None; data that force may destroy, or None)."""
    mounts = _mounted(devices, dev["path"])
    if mounts:
        return "is mounted (%s)" % ", ".join(mounts), None
    owner = pv_vg.get(dev["path"])
    if owner is not None:
        if owner and owner != vg_name:
            return "is a physical volume of the volume group %s: take it out there first (vgreduce)" % owner, None
        return None, None   # already ours, or an unused physical volume
    if dev["fstype"] == "LVM2_member":
        return None, "holds an LVM physical volume of a volume group this host does not know"
    if dev["fstype"]:
        return None, "holds %s" % ("an %s file system" % dev["fstype"] if dev["fstype"][0] in "aeiox" else
                                   "a %s file system" % dev["fstype"])
    if dev["type"] != "part" and (dev["pttype"] or dev["children"]):
        parts = len([c for c in dev["children"] if devices.get(c, {}).get("type") == "part"])
        return None, "holds a partition table (%s, %d partition%s)" % (dev["pttype"] or "unknown", parts,
                                                                       "" if parts == 1 else "s")
    return None, None


def plan(volume_groups, safe_mode=True, probe=None):
    """Check the layout; return the plan, or raise LvmPlanError naming every problem."""
    probe = probe or {}
    problems = _Problems()
    devices = flatten_lsblk(probe.get("lsblk"))
    realpaths = probe.get("realpaths") or {}
    pv_rows = _report(probe, "pvs", "pv")
    pv_vg = dict((row["pv_name"], row.get("vg_name") or "") for row in pv_rows)
    vgs = dict((row["vg_name"], row) for row in _report(probe, "vgs", "vg"))
    lvs = {}
    for row in _report(probe, "lvs", "lv"):
        lvs[(row["vg_name"], row["lv_name"])] = row
    if not isinstance(volume_groups, list):
        raise LvmPlanError("lvm_volume_groups: must be a list")

    out_vgs, out_lvs, wipe, used = [], [], [], {}
    thin = False
    seen_vgs = {}
    for vi, vg in enumerate(volume_groups):
        where = "lvm_volume_groups[%d]" % vi
        if not isinstance(vg, dict):
            problems.add(where, "must be a dict")
            continue
        unknown = sorted(set(vg) - set(_VG_FIELDS))
        if unknown:
            problems.add(where, "unknown field(s) %s (known: %s)" % (", ".join(unknown), ", ".join(_VG_FIELDS)))
        name = vg.get("name")
        if not isinstance(name, str) or not _NAME.match(name) or name.startswith("-"):
            problems.add(where + ".name", "%r is not a volume group name" % (name,))
            continue
        if name in seen_vgs:
            problems.add(where + ".name", "%s is also lvm_volume_groups[%d]" % (name, seen_vgs[name]))
            continue
        seen_vgs[name] = vi
        force = vg.get("force", False) is True or not safe_mode
        existing = vgs.get(name)
        if existing:
            extent = int(existing["vg_extent_size"])
        else:
            extent = parse_size(vg.get("pesize") or "4", "m") if vg.get("pesize") not in (None, "") else DEFAULT_PESIZE
            if not extent or extent < 128 * 1024 or extent & (extent - 1):
                problems.add(where + ".pesize", "%r is not a power of 2 of at least 128k" % (vg.get("pesize"),))
                extent = DEFAULT_PESIZE
        pvs = vg.get("pvs") or []
        if not isinstance(pvs, list) or not all(isinstance(p, str) for p in pvs):
            problems.add(where + ".pvs", "must be a list of device paths")
            pvs = []
        if not pvs and not existing:
            problems.add(where + ".pvs", "a new volume group needs at least one device")
        resolved, new_extents, vg_wipe = [], 0, []
        for pi, given in enumerate(pvs):
            pwhere = "%s.pvs[%d]" % (where, pi)
            path = realpaths.get(given, given)
            dev = devices.get(path)
            if dev is None:
                problems.add(pwhere, "%s does not exist or is not a block device" % given)
                continue
            shown = given if given == path else "%s (%s)" % (given, path)
            if path in used:
                problems.add(pwhere, "%s is also %s" % (shown, used[path]))
                continue
            used[path] = pwhere
            hard, data = _device_problem(dev, devices, pv_vg, name)
            if hard:
                problems.add(pwhere, "%s %s" % (shown, hard))
                continue
            if data:
                if not force:
                    problems.add(pwhere, "%s %s: refused in safe mode (set force: true on the volume group, or "
                                 "lvm_safe_mode: false, to wipe it)" % (shown, data))
                    continue
                vg_wipe.append(path)
            resolved.append(path)
            if pv_vg.get(path) != name:
                usable = (dev["size"] - PE_START) // extent
                if usable < 1:
                    problems.add(pwhere, "%s (%s) is too small for one extent" % (shown, human(dev["size"])))
                new_extents += max(usable, 0)
        total = (int(existing["vg_extent_count"]) if existing else 0) + new_extents
        free = (int(existing["vg_free_count"]) if existing else 0) + new_extents
        has_spare = any(vn == name and ln.strip("[]").endswith("_pmspare") for (vn, ln) in lvs)
        out_vgs.append({"name": name, "pvs": resolved, "pesize": "%dk" % (extent // 1024), "exists": bool(existing),
                        "wipe": vg_wipe, "extent_size": extent, "extents": total})
        wipe += vg_wipe

        lv_list = vg.get("logical_volumes") or []
        if not isinstance(lv_list, list):
            problems.add(where + ".logical_volumes", "must be a list")
            lv_list = []
        pools, names = {}, {}
        for li, lv in enumerate(lv_list):
            if isinstance(lv, dict) and (lv.get("type") == "thin-pool"):
                pools[lv.get("name")] = li
        for (vn, ln), row in lvs.items():
            if vn == name and (row.get("segtype") == "thin-pool" or row.get("lv_attr", "").startswith("t")):
                pools.setdefault(ln, None)
        spent = 0
        for li, lv in enumerate(lv_list):
            lwhere = "%s.logical_volumes[%d]" % (where, li)
            if not isinstance(lv, dict):
                problems.add(lwhere, "must be a dict")
                continue
            unknown = sorted(set(lv) - set(_LV_FIELDS))
            if unknown:
                problems.add(lwhere, "unknown field(s) %s (known: %s)" % (", ".join(unknown), ", ".join(_LV_FIELDS)))
            lname = lv.get("name")
            if not isinstance(lname, str) or not _NAME.match(lname) or lname.startswith("-"):
                problems.add(lwhere + ".name", "%r is not a logical volume name" % (lname,))
                continue
            if lname in names:
                problems.add(lwhere + ".name", "%s is also %s.logical_volumes[%d]" % (lname, where, names[lname]))
                continue
            names[lname] = li
            kind = lv.get("type") or ("thin" if lv.get("thin_pool") else "linear")
            if kind not in ("linear", "thin-pool", "thin"):
                problems.add(lwhere + ".type", "%r is not linear, thin-pool or thin" % (kind,))
                continue
            state = lv.get("state") or "present"
            if state not in ("present", "absent"):
                problems.add(lwhere + ".state", "%r is not present or absent" % (state,))
                continue
            current = lvs.get((name, lname))
            entry = {"vg": name, "name": lname, "kind": kind, "state": state, "opts": lv.get("opts") or "",
                     "lv": None if kind == "thin-pool" else lname,
                     "thinpool": lname if kind == "thin-pool" else (lv.get("thin_pool") or None),
                     "exists": current is not None, "size": None}
            if state == "absent":
                if current is not None and not force:
                    problems.add(lwhere + ".state", "removing %s/%s destroys its data: refused in safe mode "
                                 "(set force: true on the volume group, or lvm_safe_mode: false)" % (name, lname))
                    continue
                out_lvs.append(entry)
                continue
            if kind == "thin":
                pool = lv.get("thin_pool")
                if not pool:
                    problems.add(lwhere + ".thin_pool", "a thin volume needs its thin pool")
                    continue
                if pool not in pools:
                    problems.add(lwhere + ".thin_pool", "%s is no thin pool of %s (add it with type: thin-pool)"
                                 % (pool, name))
                    continue
                if pools[pool] is not None and pools[pool] > li:
                    problems.add(lwhere + ".thin_pool", "%s comes later in the list: put the pool first" % pool)
                    continue
                thin = True
            if kind == "thin-pool":
                thin = True
            size_text = lv.get("size")
            if size_text in (None, ""):
                if current is None:
                    problems.add(lwhere + ".size", "is required to create %s/%s" % (name, lname))
                    continue
                size_text = "%db" % int(current["lv_size"])
            size_text = str(size_text).strip()
            pct = _PERCENT.match(size_text)
            if pct:
                if pct.group(2) not in ("VG", "PVS") or kind == "thin":
                    problems.add(lwhere + ".size", "%s: only %%VG and %%PVS of a volume group are idempotent "
                                 "(and a thin volume needs an absolute size)" % size_text)
                    continue
                if float(pct.group(1)) > 100:
                    problems.add(lwhere + ".size", "%s is more than 100%%" % size_text)
                    continue
                want = int(float(pct.group(1)) * total / 100)
                entry["size"] = size_text
            else:
                nbytes = parse_size(size_text)
                if not nbytes:
                    problems.add(lwhere + ".size", "%r is not a size (512m, 20G, 10%%VG)" % size_text)
                    continue
                want = _extents(nbytes, extent)
                entry["size"] = size_text if size_text[-1].isalpha() else size_text + "m"
            if kind == "thin":
                out_lvs.append(entry)   # virtual: takes extents from its pool as it is written
                continue
            have = _extents(int(current["lv_size"]), extent) if current is not None else 0
            grow = max(want - have, 0)
            if kind == "thin-pool" and current is None:
                meta = _extents(max(2 * MIB, -(-want * extent // 1024)), extent)
                grow += meta
                if not has_spare:
                    grow += meta
                    has_spare = True
            if spent + grow > free:
                left = free - spent
                problems.add(lwhere + ".size", "%s/%s (%s%s) does not fit: %s has %s left%s" % (
                    name, lname, size_text, ", with its metadata" if kind == "thin-pool" and current is None else "",
                    name, human(max(left, 0) * extent),
                    " after the volumes before it" if spent else ""))
                continue
            spent += grow
            out_lvs.append(entry)

    if problems:
        raise LvmPlanError("\n".join(problems))
    packages = ["lvm2"] + (["thin-provisioning-tools"] if thin else [])
    return {"volume_groups": out_vgs, "logical_volumes": out_lvs, "wipe": wipe, "packages": packages}
