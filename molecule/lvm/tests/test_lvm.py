"""The lvm role in a real guest: volumes really there, safe mode refusals before any change."""
import json

from gridops_test.molecule import run_playbook

MIB = 1024 * 1024


def lvs(host):
    out = host.check_output("lvs -a --reportformat json --units b --nosuffix -o vg_name,lv_name,lv_size,lv_attr,pool_lv,"
                            "data_percent")
    return dict(("%s/%s" % (lv["vg_name"], lv["lv_name"]), lv) for lv in json.loads(out)["report"][0]["lv"])


def test_volume_groups_on_their_disks(host):
    pvs = json.loads(host.check_output("pvs --reportformat json -o pv_name,vg_name"))["report"][0]["pv"]
    assert sorted((pv["pv_name"], pv["vg_name"]) for pv in pvs) == [
        ("/dev/vdb", "vmvg"), ("/dev/vdc", "vmvg"), ("/dev/vde", "scratchvg")]


def test_logical_volumes_thin_pool_and_thin_volume(host):
    found = lvs(host)
    assert found["vmvg/pool0"]["lv_attr"].startswith("t") and int(found["vmvg/pool0"]["lv_size"]) == 512 * MIB
    thin = found["vmvg/vm1-disk"]
    assert thin["lv_attr"].startswith("V") and thin["pool_lv"] == "pool0" and int(thin["lv_size"]) == 2048 * MIB
    assert int(found["vmvg/data"]["lv_size"]) == 200 * MIB
    assert 480 * MIB <= int(found["vmvg/images"]["lv_size"]) <= 512 * MIB   # 25% of 2 x 1020 MiB
    # The devices exist and take data: write through the thin volume.
    host.check_output("dd if=/dev/zero of=/dev/vmvg/vm1-disk bs=1M count=8 oflag=direct status=none")
    assert host.block_device("/dev/vmvg/data").size == 200 * MIB


def test_forced_disk_was_wiped_and_used_whole(host):
    assert "tmp" in [k.split("/")[1] for k in lvs(host) if k.startswith("scratchvg/")]
    assert sorted(host.check_output("lsblk -n -l -o NAME /dev/vde").split()) == ["scratchvg-tmp", "vde"]


def test_bad_layouts_are_refused_naming_the_field_before_any_change(host):
    before = lvs(host)
    rc, said, output, _seconds = run_playbook("refusals.yml")
    assert rc == 0 and said, output
    assert "lvm_volume_groups[0].pvs[0]: /dev/vdd holds an ext4 file system: refused in safe mode" in said["holds_data"]
    assert "lvm_volume_groups[0].logical_volumes[1].size: vmvg/huge (3G) does not fit" in said["does_not_fit"]
    assert ("lvm_volume_groups[0].pvs[0]: /dev/vdb is a physical volume of the volume group vmvg"
            in said["another_group"])
    assert "lvm_volume_groups[0].pvs[1]: /dev/vdx does not exist" in said["another_group"]
    # Nothing changed: the file system is still there, no new volume group or volume.
    assert host.check_output("blkid -o value -s TYPE /dev/vdd") == "ext4"
    assert lvs(host).keys() == before.keys()
    assert "datavg" not in host.check_output("vgs -o vg_name --noheadings")
