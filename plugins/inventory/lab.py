# -*- coding: utf-8 -*-
# Copyright: (c) 2026, gridops.metal developers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import absolute_import, division, print_function

__metaclass__ = type

DOCUMENTATION = r"""
---
name: lab
short_description: Inventory of a gridops.metal lab
version_added: 0.1.0
description:
  - Reads the description that the C(gridops.metal.lab) role writes when it brings a lab up
    (C(<state_root>/<lab_name>/inventory.json)) and turns it into hosts and groups with the same
    schema as a real site's inventory.
  - Group C(lab_hypervisor) holds C(localhost), the machine the lab runs on; it is always present, so
    C(playbooks/lab_up.yml) can run before the lab exists.
  - Group C(deploy_server) holds the deploy server container, reached with the C(containers.podman.podman) connection.
  - Group C(nodes), and a group named after the nodes' cluster template, hold the nodes with C(mac), C(ip),
    C(bmc_address), C(bmc_port), C(bmc_user), C(bmc_password), C(bmc_kind), C(disk_device) and C(cluster).
  - The file name must end in C(.lab.yml) or C(.lab.yaml).
author:
  - gridops.metal developers (@gridops)
extends_documentation_fragment:
  - constructed
options:
  plugin:
    description: The name of this plugin.
    type: str
    required: true
    choices: [gridops.metal.lab]
  lab_name:
    description: Name of the lab (the role's C(lab_name)).
    type: str
    default: default
    env:
      - name: GRIDOPS_LAB_NAME
  state_root:
    description: Directory holding the labs' state (the role's C(lab_state_root)).
    type: path
    default: /var/lib/gridops-lab
    env:
      - name: GRIDOPS_LAB_STATE_ROOT
"""

EXAMPLES = r"""
# inventory/lab/default.lab.yml
plugin: gridops.metal.lab
lab_name: default
keyed_groups:
  - key: bmc_kind
    prefix: bmc
"""

import json
import os
import sys

from ansible.errors import AnsibleParserError
from ansible.plugins.inventory import BaseInventoryPlugin, Constructable


class InventoryModule(BaseInventoryPlugin, Constructable):

    NAME = "gridops.metal.lab"

    def verify_file(self, path):
        return super(InventoryModule, self).verify_file(path) and path.endswith((".lab.yml", ".lab.yaml"))

    def parse(self, inventory, loader, path, cache=True):
        super(InventoryModule, self).parse(inventory, loader, path, cache)
        self._read_config_data(path)
        lab_name = self.get_option("lab_name")
        state_dir = os.path.join(self.get_option("state_root"), lab_name)

        self.inventory.add_group("lab_hypervisor")
        self.inventory.add_host("localhost", group="lab_hypervisor")
        for key, value in (("ansible_connection", "local"),
                           ("ansible_python_interpreter", sys.executable),
                           ("lab_name", lab_name),
                           ("lab_state_root", self.get_option("state_root"))):
            self.inventory.set_variable("localhost", key, value)
        for group in ("deploy_server", "nodes"):
            self.inventory.add_group(group)

        desc_path = os.path.join(state_dir, "inventory.json")
        if not os.path.exists(desc_path):
            # No lab yet: lab_up.yml creates it.
            return
        try:
            with open(desc_path) as fh:
                desc = json.load(fh)
            server = desc["deploy_server"]
            nodes = desc["nodes"]
        except (IOError, OSError, ValueError, KeyError, TypeError) as exc:
            raise AnsibleParserError("lab %s: cannot read %s: %s" % (lab_name, desc_path, exc))

        strict = self.get_option("strict")
        for key, value in desc.get("vars", {}).items():
            self.inventory.set_variable("all", key, value)

        self.inventory.add_host(server["name"], group="deploy_server")
        for key, value in server.get("vars", {}).items():
            self.inventory.set_variable(server["name"], key, value)

        cluster = desc.get("cluster")
        if cluster:
            self.inventory.add_group(cluster)
            self.inventory.add_child("nodes", cluster)
        for name in sorted(nodes):
            self.inventory.add_host(name, group=cluster or "nodes")
            hostvars = nodes[name]
            for key, value in hostvars.items():
                self.inventory.set_variable(name, key, value)
            self._set_composite_vars(self.get_option("compose"), hostvars, name, strict=strict)
            self._add_host_to_composed_groups(self.get_option("groups"), hostvars, name, strict=strict)
            self._add_host_to_keyed_groups(self.get_option("keyed_groups"), hostvars, name, strict=strict)
