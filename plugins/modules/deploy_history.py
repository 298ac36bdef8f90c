#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: (c) 2026, gridops.metal developers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import absolute_import, division, print_function
__metaclass__ = type

DOCUMENTATION = r"""
---
module: deploy_history
short_description: Which nodes fail how often and which deployment steps are slow (Kadeploy's kastat)
version_added: 0.1.0
description:
  - Reads the deployment history that M(gridops.metal.deploy) records in the registry of the deploy server.
  - Returns, per node, its deployments, failures, failure rate and failures by macro-step and micro-step; per
    micro-step, how many times it ran, its mean and maximum time and its failures; and the latest deployments.
  - Reads only; never changes anything.
author:
  - gridops.metal developers (@gridops)
options:
  nodes:
    description: Only these nodes (names or host ranges such as V(node-[1-8])).
    type: list
    elements: str
  since:
    description: Only deployments started at or after this time (ISO 8601, e.g. V(2026-11-01T00:00:00Z)).
    type: str
  limit:
    description: How many of the latest deployments to list.
    type: int
    default: 20
  registry:
    description: The registry.
    type: path
    default: /var/lib/gridops-metal/registry.sqlite
seealso:
  - module: gridops.metal.deploy
"""

EXAMPLES = r"""
- name: Nodes that failed to deploy this month
  gridops.metal.deploy_history:
    since: "2026-11-01T00:00:00Z"
  register: history

- name: Show the unreliable nodes
  ansible.builtin.debug:
    msg: "{{ history.nodes | dict2items | selectattr('value.failure_rate', 'gt', 0.2) | map(attribute='key') }}"
"""

RETURN = r"""
nodes:
  description: Per node - deployments, failed, failure_rate, failed_steps ({"BroadcastEnv/send" - count}).
  returned: always
  type: dict
micro_steps:
  description: Per C(macro-step/micro-step) - count, mean_seconds, max_seconds, failed.
  returned: always
  type: dict
recent:
  description: The latest deployments - id, user, environment, environment_version, method, started, seconds,
    nodes, deployed, failed.
  returned: always
  type: list
  elements: dict
"""

import os

from ansible.module_utils.basic import AnsibleModule, missing_required_lib
from ansible_collections.gridops.metal.plugins.module_utils import _deploy, _registry, _rights


def main():
    module = AnsibleModule(
        argument_spec=dict(
            nodes=dict(type="list", elements="str"),
            since=dict(type="str"),
            limit=dict(type="int", default=20),
            registry=dict(type="path", default=_registry.DEFAULT_PATH),
        ),
        supports_check_mode=True,
    )
    params = module.params
    if params["limit"] < 0:
        module.fail_json(msg="limit: %d is not a count >= 0" % params["limit"], field="limit")
    since = None
    if params["since"]:
        try:
            since = _registry.isotime(_rights.parse_time(params["since"], "since"))
        except _registry.Refused as exc:
            module.fail_json(msg=str(exc), field="since")
    if not os.path.exists(params["registry"]):
        module.exit_json(changed=False, nodes={}, micro_steps={}, recent=[])
    try:
        nodes = _rights.expand_nodes(params["nodes"]) if params["nodes"] else None
        with _registry.Registry(params["registry"], check=True) as reg:
            stats = _deploy.statistics(reg, nodes=nodes, since=since, limit=params["limit"])
    except _registry.Refused as exc:
        module.fail_json(msg=str(exc), field=exc.field)
    except _registry.RegistryError as exc:
        module.fail_json(msg=str(exc))
    except _rights.MissingClusterShell:
        module.fail_json(msg=missing_required_lib("ClusterShell (python3-clustershell) to read node sets"))
    module.exit_json(changed=False, **stats)


if __name__ == "__main__":
    main()
