#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: (c) 2026, gridops.metal developers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import absolute_import, division, print_function
__metaclass__ = type

DOCUMENTATION = r"""
---
module: rights
short_description: Grant, revoke, list and check who may deploy on which nodes and partitions
version_added: 0.1.0
description:
  - Manages the deployment rights (Kadeploy's C(karights)) in the registry of the deploy server, the
    SQLite database that also holds the environments (M(gridops.metal.environment)).
  - A right lets a user deploy on a node, on one partition or on all of them (C(*)), until an optional
    expiry time; the deploy engine checks them before it touches a node. Reservation hooks grant the
    rights of a job's nodes until its walltime ends.
  - Nodes are given as node sets in ClusterShell's syntax (C(node-[1-8]), C(node-[1-8]!node-3)), and
    listed folded the same way.
  - Granting again what is granted changes nothing; granting it with another expiry time changes that time.
  - An expired right gives nothing and is listed only with O(include_expired); O(operation=revoke) with
    O(expired=true) drops the expired rights.
  - Every call is one transaction; a refused call (an unknown user name, a bad node set, an expiry time in
    the past) names the field and leaves the registry unchanged.
  - Runs on the deploy server.
author:
  - gridops.metal developers (@gridops)
options:
  operation:
    description:
      - V(grant) lets O(user) deploy on O(nodes) and O(partitions) until O(expires).
      - V(revoke) withdraws O(user)'s rights on O(nodes) (default all) and O(partitions) (default all).
      - V(list) returns the rights (of O(user), on O(nodes)), folded into node sets.
      - V(check) says whether O(user) may deploy now on every one of O(nodes), on O(partition).
    type: str
    choices: [grant, revoke, list, check]
    default: grant
  user:
    description:
      - The user the rights are for. Required except to list, and to revoke with O(expired=true).
    type: str
  nodes:
    description:
      - "Node sets, for example C([node-[1-8], gpu-1]). Write a YAML list: a string is split at its commas."
      - Required for V(grant) and V(check).
    type: list
    elements: str
  partitions:
    description:
      - For V(grant), the partitions (default C(*), every partition); for V(revoke), only these (default all).
      - Partition names are those of the cluster template (for example C(deploy), C(tmp)) or C(*).
    type: list
    elements: str
  partition:
    description: For V(check), the partition to deploy on, or C(*) for the whole disk.
    type: str
    default: '*'
  expires:
    description:
      - For V(grant), when the rights end, in ISO 8601 with a time zone (C(2026-05-01T12:00:00Z),
        C(2026-05-01 14:00:00+02:00)) or in seconds since the epoch. None, the default, never ends.
    type: str
  origin:
    description: For V(grant), where the rights come from, kept with them (for example C(oar:4242)).
    type: str
  expired:
    description: For V(revoke), drop only the expired rights (of O(user), or of every user without it).
    type: bool
    default: false
  include_expired:
    description: For V(list), also the expired rights.
    type: bool
    default: false
  registry:
    description: The registry database; created (with its directory) when missing.
    type: path
    default: /var/lib/gridops-metal/registry.sqlite
attributes:
  check_mode:
    support: full
    description: Runs the whole call, then rolls the transaction back.
  diff_mode:
    support: full
    description: Shows the user's rights before and after (V(grant), V(revoke)).
requirements:
  - ClusterShell on the deploy server (Debian's C(python3-clustershell))
seealso:
  - module: gridops.metal.environment
  - plugin: gridops.metal.expand_hostlist
    plugin_type: filter
"""

EXAMPLES = r"""
- name: Alice may deploy on node-1 to node-8 until the end of her job
  gridops.metal.rights:
    user: alice
    nodes: ["node-[1-8]"]
    expires: "2026-05-01T18:00:00Z"
    origin: oar:4242

- name: Bob may write the tmp partition of the GPU nodes only
  gridops.metal.rights:
    user: bob
    nodes: ["gpu-[1-4]"]
    partitions: [tmp]

- name: Take node-3 back from alice
  gridops.metal.rights:
    operation: revoke
    user: alice
    nodes: [node-3]

- name: Everything granted on node-1 to node-8
  gridops.metal.rights:
    operation: list
    nodes: ["node-[1-8]"]
  register: granted

- name: May alice deploy a whole disk on node-1 and node-2?
  gridops.metal.rights:
    operation: check
    user: alice
    nodes: ["node-[1-2]"]
  register: may

- name: Drop every expired right
  gridops.metal.rights:
    operation: revoke
    expired: true
"""

RETURN = r"""
rights:
  description:
    - The rights listed, or O(user)'s rights after V(grant) or V(revoke), grouped by user, partition, expiry
      and origin, with their nodes folded into a node set.
  returned: when O(operation) is V(grant), V(revoke) or V(list)
  type: list
  elements: dict
  contains:
    user:
      description: The user.
      type: str
    nodes:
      description: The nodes, as a node set.
      type: str
      sample: node-[1-2,4-8]
    node_count:
      description: How many nodes.
      type: int
    partition:
      description: The partition, or C(*) for all.
      type: str
    expires:
      description: When the rights end (ISO 8601, UTC), or null.
      type: str
      sample: "2026-05-01T18:00:00Z"
    expired:
      description: Whether that time has passed.
      type: bool
    origin:
      description: Where the rights come from, or null.
      type: str
revoked:
  description: The rights withdrawn, as in RV(rights).
  returned: when O(operation=revoke)
  type: list
  elements: dict
allowed:
  description: Whether O(user) may deploy on every node of O(nodes).
  returned: when O(operation=check)
  type: bool
denied:
  description: The nodes O(user) may not deploy on, as a node set (empty when none).
  returned: when O(operation=check)
  type: str
field:
  description: The field at fault when the call is refused.
  returned: failure
  type: str
  sample: expires
"""

from ansible.module_utils.basic import AnsibleModule, missing_required_lib
from ansible_collections.gridops.metal.plugins.module_utils import _registry, _rights


def run(module, reg):
    p = module.params
    operation = p["operation"]
    if operation in ("grant", "check"):
        for field in ("user", "nodes"):
            if not p[field]:
                module.fail_json(msg="%s: required for operation=%s" % (field, operation), field=field)
    if operation == "grant":
        return _rights.grant(reg, p["user"], p["nodes"], partitions=p["partitions"], expires=p["expires"],
                             origin=p["origin"])
    if operation == "revoke":
        return _rights.revoke(reg, p["user"], nodes=p["nodes"], partitions=p["partitions"], expired=p["expired"])
    if operation == "list":
        return {"changed": False, "rights": _rights.list_rights(reg, p["user"], nodes=p["nodes"],
                                                                include_expired=p["include_expired"])}
    return dict(_rights.check(reg, p["user"], p["nodes"], partition=p["partition"]), changed=False)


def main():
    module = AnsibleModule(
        argument_spec=dict(
            operation=dict(type="str", choices=["grant", "revoke", "list", "check"], default="grant"),
            user=dict(type="str"),
            nodes=dict(type="list", elements="str"),
            partitions=dict(type="list", elements="str"),
            partition=dict(type="str", default="*"),
            expires=dict(type="str"),
            origin=dict(type="str"),
            expired=dict(type="bool", default=False),
            include_expired=dict(type="bool", default=False),
            registry=dict(type="path", default=_registry.DEFAULT_PATH),
        ),
        supports_check_mode=True,
    )
    try:
        with _registry.Registry(module.params["registry"], check=module.check_mode) as reg:
            result = run(module, reg)
    except _rights.MissingClusterShell:
        module.fail_json(msg=missing_required_lib("ClusterShell (Debian: python3-clustershell)"))
    except _registry.Refused as exc:
        module.fail_json(msg=str(exc), field=exc.field)
    except _registry.RegistryError as exc:
        module.fail_json(msg=str(exc))
    diff = result.pop("diff", None)
    if module._diff and diff:
        result["diff"] = diff
    module.exit_json(**result)


if __name__ == "__main__":
    main()
