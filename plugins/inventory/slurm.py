# -*- coding: utf-8 -*-
# Copyright: (c) 2026, gridops.metal developers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import absolute_import, division, print_function

__metaclass__ = type

DOCUMENTATION = r"""
---
name: slurm
short_description: The nodes of Slurm jobs (allocations) as an inventory
version_added: 0.1.0
description:
  - Reads Slurm jobs with C(squeue --json) and makes their nodes an inventory, joined with a cluster description,
    so playbooks run over the nodes of an allocation (C(salloc -N 4 -t 2:00:00)) without copying host names.
  - Jobs are selected here, not by C(squeue), whose C(-j) Slurm 22.05 ignores with C(--json). Node lists
    (C(node-[01-04])) are expanded with ClusterShell.
  - Each node's address (its C(NodeAddr), from C(sinfo --json)) becomes C(ansible_host) when it differs from its
    name, unless the cluster description sets C(ansible_host).
  - The commands run on this machine, or over SSH on a login node (O(frontend)).
  - Reads Slurm 22.05's JSON and the later one, with numbers as objects and states as lists.
  - The file name must end in C(.slurm.yml) or C(.slurm.yaml).
author:
  - gridops.metal developers (@gridops)
requirements:
  - ClusterShell (Python) on the controller
extends_documentation_fragment:
  - constructed
  - inventory_cache
  - gridops.metal.reservation_inventory
  - gridops.metal.reservation_inventory.frontend
options:
  plugin:
    description: The name of this plugin.
    type: str
    required: true
    choices: [gridops.metal.slurm]
  slurm_conf:
    description:
      - The cluster's C(slurm.conf), passed to the commands as E(SLURM_CONF). By default they find it themselves.
    type: str
    env:
      - name: SLURM_CONF
  squeue_path:
    description: The C(squeue) command (on O(frontend) when that is set).
    type: str
    default: squeue
  sinfo_path:
    description: The C(sinfo) command (on O(frontend) when that is set).
    type: str
    default: sinfo
  node_addresses:
    description: Whether to read the nodes' addresses with C(sinfo --json) and set C(ansible_host) from them.
    type: bool
    default: true
"""

EXAMPLES = r"""
# job.slurm.yml: the nodes of allocation 1234, with their MAC, IP and BMC from the site's description.
plugin: gridops.metal.slurm
job_ids: [1234]
cluster_description: /etc/gridops/site-nodes.yml

---
# mine.slurm.yml: every running job of bob, from the login node, one group per partition.
plugin: gridops.metal.slurm
frontend: bob@login.example.org
users: [bob]
keyed_groups:
  - key: job_queue
    prefix: partition
"""

from ansible_collections.gridops.metal.plugins.module_utils import _reservations as rsv
from ansible_collections.gridops.metal.plugins.plugin_utils._reservation_inventory import ReservationInventory


class InventoryModule(ReservationInventory):

    NAME = "gridops.metal.slurm"
    SUFFIXES = (".slurm.yml", ".slurm.yaml")
    SOURCE_OPTIONS = ("slurm_conf", "squeue_path", "sinfo_path", "node_addresses", "frontend")

    def source(self):
        where = " on %s" % self.get_option("frontend") if self.get_option("frontend") else ""
        return "slurm (%s --json%s)" % (self.get_option("squeue_path"), where)

    def _env(self):
        conf = self.get_option("slurm_conf")
        return {"SLURM_CONF": conf} if conf else None

    def fetch(self):
        out = self.run_command([self.get_option("squeue_path"), "--json"], "squeue", env=self._env())
        return rsv.parse_squeue(out, self.source())

    def addresses(self, nodes):
        if not self.get_option("node_addresses"):
            return {}
        out = self.run_command([self.get_option("sinfo_path"), "--json"], "sinfo", env=self._env())
        known = rsv.parse_sinfo(out, "slurm (%s --json)" % self.get_option("sinfo_path"))
        return dict((node, known[node]) for node in nodes if node in known)
