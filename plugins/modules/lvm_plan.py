#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: (c) 2026, gridops.metal developers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import absolute_import, division, print_function
__metaclass__ = type

DOCUMENTATION = r"""
---
module: lvm_plan
short_description: Check an LVM layout against a host's disks before anything changes
version_added: 0.1.0
description:
  - Reads the host's block devices (C(lsblk)) and LVM state (C(pvs), C(vgs), C(lvs)), checks the wanted volume
    groups and logical volumes against them, and returns what to do. Changes nothing.
  - "Refused, each problem on its own line naming the field (C(lvm_volume_groups[0].pvs[1]: ...)): a device that
    does not exist, is mounted, or belongs to another volume group; in safe mode, a device that holds a file
    system, a partition table or an unknown LVM label; sizes that do not fit in the volume group, counted in
    extents as LVM does (1 MiB per device for its label and metadata, thin pools with their metadata and one spare);
    C(%FREE) and C(%ORIGIN) sizes (not idempotent); removing an existing volume in safe mode."
  - Existing volumes are never shrunk; a bigger size grows them.
  - The P(gridops.metal.lvm#role) role runs it first, then makes the changes with M(community.general.lvg) and
    M(community.general.lvol).
author:
  - gridops.metal developers (@gridops)
attributes:
  check_mode:
    support: full
    description: Reads only; the same in check mode.
  diff_mode:
    support: none
    description: Nothing changes.
options:
  volume_groups:
    description:
      - The wanted volume groups, as in the role's O(gridops.metal.lvm#role:main:lvm_volume_groups).
      - Each has C(name), C(pvs) (device paths; symlinks such as C(/dev/disk/by-id/...) are resolved),
        optional C(pesize) (new groups only, default C(4m)), C(force) (take devices that hold data, wiping them)
        and C(logical_volumes), each with C(name), C(size) (C(512m), C(20G), C(10%VG), C(100%PVS); a number alone
        is MiB), C(type) (V(linear), V(thin-pool) or V(thin)), C(thin_pool) (the pool of a thin volume),
        C(state) (V(present) or V(absent)) and C(opts) (more C(lvcreate) options).
    type: list
    elements: dict
    required: true
  safe_mode:
    description:
      - Refuse devices that hold a file system, a partition table or an unknown LVM label, and the removal of
        existing logical volumes, unless the volume group says C(force).
    type: bool
    default: true
notes:
  - Without lvm2 installed the LVM state is taken as empty; C(lsblk) still shows LVM labels.
requirements:
  - util-linux (lsblk); lvm2 for an existing LVM state
seealso:
  - module: community.general.lvg
  - module: community.general.lvol
"""

EXAMPLES = r"""
- name: Check the layout before anything changes
  gridops.metal.lvm_plan:
    volume_groups:
      - name: xenvg
        pvs: [/dev/sdb, /dev/sdc]
        logical_volumes:
          - {name: pool0, size: 200G, type: thin-pool}
          - {name: vm1-disk, size: 40G, thin_pool: pool0}
          - {name: images, size: 20%VG}
  register: lvm_plan

- name: Create what it says
  community.general.lvg:
    vg: "{{ item.name }}"
    pvs: "{{ item.pvs }}"
  loop: "{{ lvm_plan.volume_groups }}"
"""

RETURN = r"""
volume_groups:
  description: The volume groups, with their devices resolved.
  returned: success
  type: list
  elements: dict
  sample: [{"name": "xenvg", "pvs": ["/dev/sdb"], "pesize": "4096k", "exists": false, "wipe": [],
            "extent_size": 4194304, "extents": 25599}]
logical_volumes:
  description:
    - The logical volumes and thin pools in creation order; C(lv) and C(thinpool) are what
      M(community.general.lvol) takes (a thin pool has C(lv) null).
  returned: success
  type: list
  elements: dict
  sample: [{"vg": "xenvg", "name": "pool0", "kind": "thin-pool", "lv": null, "thinpool": "pool0", "size": "200G",
            "state": "present", "opts": "", "exists": false}]
wipe:
  description: Devices whose signatures must be wiped first (forced devices that hold data).
  returned: success
  type: list
  elements: str
packages:
  description: The packages the layout needs (C(lvm2), and C(thin-provisioning-tools) for thin pools).
  returned: success
  type: list
  elements: str
"""

import json
import os

from ansible.module_utils.basic import AnsibleModule
from ansible_collections.gridops.metal.plugins.module_utils import _lvm


def _json(module, argv, what):
    rc, out, err = module.run_command(argv)
    if rc != 0:
        module.fail_json(msg="%s failed: %s" % (what, (err or out).strip()), rc=rc)
    try:
        return json.loads(out)
    except ValueError:
        module.fail_json(msg="%s did not print JSON: %s" % (what, out[:200]))


def probe(module, volume_groups):
    lsblk = module.get_bin_path("lsblk", required=True)
    found = {"lsblk": _json(module, [lsblk, "-J", "-b", "-p", "-o", "NAME,SIZE,TYPE,FSTYPE,PTTYPE,MOUNTPOINT"],
                            "lsblk")}
    pvs = module.get_bin_path("pvs")
    if pvs:
        report = ["--reportformat", "json", "--units", "b", "--nosuffix"]
        found["pvs"] = _json(module, [pvs] + report + ["-o", "pv_name,vg_name,pv_size"], "pvs")
        found["vgs"] = _json(module, [module.get_bin_path("vgs", required=True)] + report +
                             ["-o", "vg_name,vg_size,vg_free,vg_extent_size,vg_extent_count,vg_free_count"], "vgs")
        found["lvs"] = _json(module, [module.get_bin_path("lvs", required=True), "-a"] + report +
                             ["-o", "lv_name,vg_name,lv_size,lv_attr,pool_lv,segtype"], "lvs")
    paths = set()
    for vg in volume_groups:
        if isinstance(vg, dict) and isinstance(vg.get("pvs"), list):
            paths.update(p for p in vg["pvs"] if isinstance(p, str))
    found["realpaths"] = dict((p, os.path.realpath(p)) for p in paths)
    return found


def main():
    module = AnsibleModule(
        argument_spec=dict(
            volume_groups=dict(type="list", elements="dict", required=True),
            safe_mode=dict(type="bool", default=True),
        ),
        supports_check_mode=True,
    )
    try:
        result = _lvm.plan(module.params["volume_groups"], module.params["safe_mode"],
                           probe(module, module.params["volume_groups"]))
    except _lvm.LvmPlanError as exc:
        module.fail_json(msg="lvm: refused before any change:\n%s" % exc, problems=str(exc).splitlines())
    module.exit_json(changed=False, **result)


if __name__ == "__main__":
    main()
