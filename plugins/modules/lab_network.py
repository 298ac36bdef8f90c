#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: (c) 2026, gridops.metal developers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import absolute_import, division, print_function

__metaclass__ = type

DOCUMENTATION = r"""
---
module: lab_network
short_description: Network namespaces, bridge, veth and taps of a gridops lab
version_added: 0.1.0
description:
  - Creates or removes the private network of a lab built by the C(gridops.metal.lab) role.
  - The I(fabric) namespace holds the provisioning bridge, one tap per node and the BMC addresses;
    the I(server) namespace, which the deploy server container joins, is linked to the bridge by a veth pair.
    Nothing is routed to or from the host.
  - With O(state=present), the subnet is first checked against every route of the host; a clash is refused before anything is created.
  - With O(state=absent), every process still running inside the namespaces is stopped (TERM, then KILL) before they are deleted,
    so taps, bridge and veth go with them, even after an interrupted lab start.
author:
  - gridops.metal developers (@gridops)
attributes:
  check_mode:
    description: Reports the actions that would be taken without taking them.
    support: full
  diff_mode:
    description: Not supported.
    support: none
options:
  state:
    description: Whether the lab network should exist.
    type: str
    choices: [present, absent]
    default: present
  fabric_netns:
    description: Name of the namespace holding the bridge, taps and BMC addresses.
    type: str
    required: true
  server_netns:
    description: Name of the namespace the deploy server joins.
    type: str
    required: true
  bridge:
    description: Name of the provisioning bridge (15 characters at most).
    type: str
  veth_bridge_side:
    description: Name of the veth end enslaved to the bridge.
    type: str
  server_ifname:
    description: Name of the veth end inside the server namespace.
    type: str
    default: eth0
  subnet:
    description:
      - The lab's IPv4 subnet, checked against the host's routes; a private range.
      - Required with O(state=present).
    type: str
  server_addresses:
    description: Addresses (CIDR) of the deploy server's interface, IPv4 and IPv6.
    type: list
    elements: str
    default: []
  bmc_addresses:
    description:
      - Addresses (CIDR) of the virtual BMCs, put on the bridge.
      - Other addresses found on the bridge are removed.
    type: list
    elements: str
    default: []
  taps:
    description: Tap devices (one per node) to create and enslave to the bridge.
    type: list
    elements: str
    default: []
  tap_prefix:
    description: Taps starting with this prefix that are not in O(taps) are removed (nodes taken out of the lab).
    type: str
"""

EXAMPLES = r"""
- name: Create the network of lab "demo"
  gridops.metal.lab_network:
    fabric_netns: gridops-lab-demo
    server_netns: gridops-lab-demo-srv
    bridge: brdemo
    veth_bridge_side: vsdemo
    subnet: 10.213.0.0/24
    server_addresses: [10.213.0.1/24, "fd42:213::1/64"]
    bmc_addresses: [10.213.0.201/24]
    taps: [tdemo-1]
    tap_prefix: tdemo-

- name: Remove it, with anything still running inside
  gridops.metal.lab_network:
    state: absent
    fabric_netns: gridops-lab-demo
    server_netns: gridops-lab-demo-srv
"""

RETURN = r"""
actions:
  description: What was done (or, in check mode, would be done), one line per action.
  returned: always
  type: list
  elements: str
  sample: ["create namespace gridops-lab-demo", "create bridge brdemo"]
"""

from ansible.module_utils.basic import AnsibleModule
from ansible_collections.gridops.metal.plugins.module_utils._lab import (
    LabError, check_subnet_clash, network_absent, network_present)


def main():
    module = AnsibleModule(
        argument_spec=dict(
            state=dict(type="str", choices=["present", "absent"], default="present"),
            fabric_netns=dict(type="str", required=True),
            server_netns=dict(type="str", required=True),
            bridge=dict(type="str"),
            veth_bridge_side=dict(type="str"),
            server_ifname=dict(type="str", default="eth0"),
            subnet=dict(type="str"),
            server_addresses=dict(type="list", elements="str", default=[]),
            bmc_addresses=dict(type="list", elements="str", default=[]),
            taps=dict(type="list", elements="str", default=[]),
            tap_prefix=dict(type="str"),
        ),
        required_if=[("state", "present", ("bridge", "veth_bridge_side", "subnet"))],
        supports_check_mode=True,
    )
    params = module.params

    def runner(argv):
        return module.run_command(argv)

    try:
        if params["state"] == "present":
            check_subnet_clash(runner, params["subnet"])
            actions = network_present(runner, params, check_mode=module.check_mode)
        else:
            actions = network_absent(runner, params, check_mode=module.check_mode)
    except LabError as exc:
        module.fail_json(msg=str(exc))
    module.exit_json(changed=bool(actions), actions=actions)


if __name__ == "__main__":
    main()
