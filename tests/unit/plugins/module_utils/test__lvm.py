# -*- coding: utf-8 -*-
# Copyright: (c) 2026, gridops.metal developers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The lvm role's model: safe mode, sizes in extents, refusals naming the field."""

from __future__ import absolute_import, division, print_function
__metaclass__ = type

import pytest

from ansible_collections.gridops.metal.plugins.module_utils import _lvm

MIB = 1024 * 1024
GIB = 1024 * MIB


def _dev(name, size, **kw):
    dev = {"name": name, "size": size, "type": "disk", "fstype": None, "pttype": None, "mountpoint": None}
    dev.update(kw)
    return dev


def probe(pvs=(), vgs=(), lvs=()):
    """A host with vda (root, mounted), vdb/vdc 1 GiB empty, vdd ext4, vde with a GPT, vdf an old PV."""
    return {
        "lsblk": {"blockdevices": [
            _dev("/dev/vda", 4 * GIB, fstype="ext4", mountpoint="/"),
            _dev("/dev/vdb", GIB), _dev("/dev/vdc", GIB),
            _dev("/dev/vdd", 512 * MIB, fstype="ext4"),
            _dev("/dev/vde", 256 * MIB, pttype="gpt", children=[
                _dev("/dev/vde1", 254 * MIB, type="part", pttype="gpt")]),
            _dev("/dev/vdf", 256 * MIB, fstype="LVM2_member"),
        ]},
        "pvs": {"report": [{"pv": list(pvs)}]},
        "vgs": {"report": [{"vg": list(vgs)}]},
        "lvs": {"report": [{"lv": list(lvs)}]},
        "realpaths": {"/dev/disk/by-id/virtio-data1": "/dev/vdb"},
    }


def refusals(layout, safe_mode=True, **kw):
    with pytest.raises(_lvm.LvmPlanError) as info:
        _lvm.plan(layout, safe_mode, probe(**kw))
    return str(info.value).splitlines()


def test_a_fresh_group_with_thin_pool_and_volumes():
    res = _lvm.plan([{"name": "xenvg", "pvs": ["/dev/disk/by-id/virtio-data1", "/dev/vdc"], "logical_volumes": [
        {"name": "pool0", "size": "512m", "type": "thin-pool"},
        {"name": "vm1", "size": "4G", "thin_pool": "pool0"},
        {"name": "images", "size": "25%VG"},
        {"name": "scratch", "size": 100},
    ]}], True, probe())
    vg = res["volume_groups"][0]
    assert vg["pvs"] == ["/dev/vdb", "/dev/vdc"] and vg["exists"] is False and vg["wipe"] == []
    assert vg["extents"] == 2 * 255   # 1 MiB per device for LVM's label and metadata
    assert [(lv["name"], lv["lv"], lv["thinpool"], lv["size"]) for lv in res["logical_volumes"]] == [
        ("pool0", None, "pool0", "512m"), ("vm1", "vm1", "pool0", "4G"), ("images", "images", None, "25%VG"),
        ("scratch", "scratch", None, "100m")]
    assert res["packages"] == ["lvm2", "thin-provisioning-tools"]


def test_safe_mode_refuses_devices_with_data_and_names_them():
    layout = [{"name": "vg0", "pvs": ["/dev/vdd", "/dev/vde", "/dev/vdf", "/dev/vda", "/dev/vdz", "/dev/vdb",
                                      "/dev/vdb"]}]
    assert refusals(layout) == [
        "lvm_volume_groups[0].pvs[0]: /dev/vdd holds an ext4 file system: refused in safe mode (set force: true "
        "on the volume group, or lvm_safe_mode: false, to wipe it)",
        "lvm_volume_groups[0].pvs[1]: /dev/vde holds a partition table (gpt, 1 partition): refused in safe mode "
        "(set force: true on the volume group, or lvm_safe_mode: false, to wipe it)",
        "lvm_volume_groups[0].pvs[2]: /dev/vdf holds an LVM physical volume of a volume group this host does not "
        "know: refused in safe mode (set force: true on the volume group, or lvm_safe_mode: false, to wipe it)",
        "lvm_volume_groups[0].pvs[3]: /dev/vda is mounted (/)",
        "lvm_volume_groups[0].pvs[4]: /dev/vdz does not exist or is not a block device",
        "lvm_volume_groups[0].pvs[6]: /dev/vdb is also lvm_volume_groups[0].pvs[5]",
    ]


def test_force_wipes_data_but_never_a_mounted_device_or_another_groups_disk():
    res = _lvm.plan([{"name": "vg0", "pvs": ["/dev/vdd", "/dev/vde"], "force": True}], True, probe())
    assert res["volume_groups"][0]["wipe"] == ["/dev/vdd", "/dev/vde"] == res["wipe"]
    assert _lvm.plan([{"name": "vg0", "pvs": ["/dev/vdd"]}], False, probe())["wipe"] == ["/dev/vdd"]
    lines = refusals([{"name": "vg0", "pvs": ["/dev/vda", "/dev/vdb"], "force": True}],
                     pvs=[{"pv_name": "/dev/vdb", "vg_name": "other"}])
    assert lines == ["lvm_volume_groups[0].pvs[0]: /dev/vda is mounted (/)",
                     "lvm_volume_groups[0].pvs[1]: /dev/vdb is a physical volume of the volume group other: "
                     "take it out there first (vgreduce)"]


def test_sizes_that_do_not_fit_are_refused_with_what_is_left():
    lines = refusals([{"name": "vg0", "pvs": ["/dev/vdb"], "logical_volumes": [
        {"name": "a", "size": "800m"}, {"name": "b", "size": "300m"}, {"name": "c", "size": "10%FREE"},
        {"name": "d", "size": "120%VG"}, {"name": "e", "size": "lots"}]}])
    assert lines == [
        "lvm_volume_groups[0].logical_volumes[1].size: vg0/b (300m) does not fit: vg0 has 220 MiB left after the "
        "volumes before it",
        "lvm_volume_groups[0].logical_volumes[2].size: 10%FREE: only %VG and %PVS of a volume group are idempotent "
        "(and a thin volume needs an absolute size)",
        "lvm_volume_groups[0].logical_volumes[3].size: 120%VG is more than 100%",
        "lvm_volume_groups[0].logical_volumes[4].size: 'lots' is not a size (512m, 20G, 10%VG)",
    ]


def test_thin_pool_metadata_and_spare_count():
    # 1020 MiB: a 1012 MiB pool needs 4 MiB metadata and 4 MiB spare: 1020 MiB in all, it fits; 1016 does not.
    ok = _lvm.plan([{"name": "vg0", "pvs": ["/dev/vdb"], "logical_volumes": [
        {"name": "pool", "size": "1012m", "type": "thin-pool"}]}], True, probe())
    assert ok["logical_volumes"][0]["kind"] == "thin-pool"
    lines = refusals([{"name": "vg0", "pvs": ["/dev/vdb"], "logical_volumes": [
        {"name": "pool", "size": "1016m", "type": "thin-pool"},
        {"name": "thin", "size": "10G", "thin_pool": "nopool"}]}])
    assert lines == [
        "lvm_volume_groups[0].logical_volumes[0].size: vg0/pool (1016m, with its metadata) does not fit: vg0 has "
        "1020 MiB left",
        "lvm_volume_groups[0].logical_volumes[1].thin_pool: nopool is no thin pool of vg0 (add it with type: thin-pool)",
    ]


def test_an_existing_group_counts_its_free_extents_and_never_shrinks():
    state = dict(pvs=[{"pv_name": "/dev/vdb", "vg_name": "vg0"}],
                 vgs=[{"vg_name": "vg0", "vg_extent_size": str(4 * MIB), "vg_extent_count": "255",
                       "vg_free_count": "55"}],
                 lvs=[{"vg_name": "vg0", "lv_name": "big", "lv_size": str(800 * MIB), "lv_attr": "-wi-a-----"}])
    res = _lvm.plan([{"name": "vg0", "pvs": ["/dev/vdb"], "logical_volumes": [
        {"name": "big", "size": "100m"}, {"name": "new", "size": "220m"}]}], True, probe(**state))
    assert res["volume_groups"][0]["exists"] is True and res["wipe"] == []
    assert [lv["exists"] for lv in res["logical_volumes"]] == [True, False]
    assert refusals([{"name": "vg0", "pvs": ["/dev/vdb"], "logical_volumes": [{"name": "big", "size": "1100m"}]}],
                    **state) == ["lvm_volume_groups[0].logical_volumes[0].size: vg0/big (1100m) does not fit: vg0 "
                                 "has 220 MiB left"]
    # Removing a volume destroys data: only when forced.
    assert refusals([{"name": "vg0", "pvs": [], "logical_volumes": [{"name": "big", "state": "absent"}]}],
                    **state) == ["lvm_volume_groups[0].logical_volumes[0].state: removing vg0/big destroys its data: "
                                 "refused in safe mode (set force: true on the volume group, or lvm_safe_mode: false)"]
    gone = _lvm.plan([{"name": "vg0", "force": True, "logical_volumes": [{"name": "big", "state": "absent"}]}],
                     True, probe(**state))
    assert gone["logical_volumes"][0]["state"] == "absent"


def test_names_fields_and_duplicates():
    lines = refusals([{"name": "vg0", "pvs": ["/dev/vdb"], "size": 3, "logical_volumes": [
        {"name": "-x", "size": "1m"}, {"name": "a", "size": "1m"}, {"name": "a", "size": "1m"},
        {"name": "t", "size": "1m", "type": "raid5"}]},
        {"name": "vg0", "pvs": ["/dev/vdc"]}, {"name": "new", "pvs": []}])
    assert lines == [
        "lvm_volume_groups[0]: unknown field(s) size (known: name, pvs, pesize, force, logical_volumes)",
        "lvm_volume_groups[0].logical_volumes[0].name: '-x' is not a logical volume name",
        "lvm_volume_groups[0].logical_volumes[2].name: a is also lvm_volume_groups[0].logical_volumes[1]",
        "lvm_volume_groups[0].logical_volumes[3].type: 'raid5' is not linear, thin-pool or thin",
        "lvm_volume_groups[1].name: vg0 is also lvm_volume_groups[0]",
        "lvm_volume_groups[2].pvs: a new volume group needs at least one device",
    ]
