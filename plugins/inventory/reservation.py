# -*- coding: utf-8 -*-
# Copyright: (c) 2026, gridops.metal developers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import absolute_import, division, print_function

__metaclass__ = type

DOCUMENTATION = r"""
---
name: reservation
short_description: The nodes of the jobs in the reservation hooks' spool as an inventory
version_added: 0.1.0
description:
  - Reads the spool directory that the C(gridops.metal.reservation_hooks) role's hooks keep on the scheduler host,
    one JSON file per running job, written when the job starts and removed when it ends. Works with any
    scheduler that can run a script at job start and end.
  - Reading files asks nothing of the scheduler, so it stays fast with many jobs and when the scheduler is busy.
  - An entry past its job's walltime (its end hook did not run) is left out with a warning; so is an entry that
    cannot be read.
  - The file name must end in C(.reservation.yml) or C(.reservation.yaml).
author:
  - gridops.metal developers (@gridops)
extends_documentation_fragment:
  - constructed
  - inventory_cache
  - gridops.metal.reservation_inventory
options:
  plugin:
    description: The name of this plugin.
    type: str
    required: true
    choices: [gridops.metal.reservation]
  spool_dir:
    description: The hooks' spool directory (the role's C(reservation_hooks_spool_dir)).
    type: path
    default: /var/lib/gridops-metal/reservations
    env:
      - name: GRIDOPS_RESERVATION_SPOOL
  schedulers:
    description: Only the jobs of these schedulers (C(oar), C(slurm)); all by default.
    type: list
    elements: str
    default: []
"""

EXAMPLES = r"""
# jobs.reservation.yml: every running job the hooks recorded, joined with the site's description.
plugin: gridops.metal.reservation
spool_dir: /var/lib/gridops-metal/reservations
cluster_description: /etc/gridops/site-nodes.yml
keyed_groups:
  - key: job_user
    prefix: user
"""

from ansible.utils.display import Display

from ansible_collections.gridops.metal.plugins.module_utils import _reservations as rsv
from ansible_collections.gridops.metal.plugins.plugin_utils._reservation_inventory import ReservationInventory

display = Display()


class InventoryModule(ReservationInventory):

    NAME = "gridops.metal.reservation"
    SUFFIXES = (".reservation.yml", ".reservation.yaml")
    SOURCE_OPTIONS = ("spool_dir", "schedulers")

    def source(self):
        return "spool %s" % self.get_option("spool_dir")

    def fetch(self):
        jobs, problems = rsv.read_spool(self.get_option("spool_dir"))
        for problem in problems:
            display.warning("%s: left out" % problem)
        schedulers = self.get_option("schedulers")
        return [job for job in jobs if not schedulers or job["scheduler"] in schedulers]

    def _select(self, jobs):
        kept, notes = super(InventoryModule, self)._select(jobs)
        kept, ended = rsv.drop_ended(kept)
        if ended:
            notes.append("%s: job(s) %s past their walltime but still in the spool (did the end hook run?): "
                         "left out" % (self.source(), ", ".join(ended)))
        return kept, notes
