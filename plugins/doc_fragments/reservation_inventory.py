# -*- coding: utf-8 -*-
# Copyright: (c) 2026, gridops.metal developers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import absolute_import, division, print_function
__metaclass__ = type


class ModuleDocFragment(object):

    # What the oar, slurm and reservation inventory plugins share.
    DOCUMENTATION = r"""
options:
  job_ids:
    description:
      - Only these jobs. A job id the source does not know is an error; a known job left out by
        O(users), O(names) or O(states) gives a warning.
    type: list
    elements: str
    default: []
  users:
    description: Only the jobs of these users.
    type: list
    elements: str
    default: []
  names:
    description: Only the jobs with these names.
    type: list
    elements: str
    default: []
  states:
    description:
      - Only the jobs in these states, compared without regard to case (OAR says C(Running), Slurm C(RUNNING)).
      - An empty list keeps every state; the nodes of a job that has not started are usually not known yet.
    type: list
    elements: str
    default: [running]
  cluster_description:
    description:
      - A YAML or JSON file that joins each reserved node to its facts, with the lab's inventory schema
        (C(mac), C(ip), C(bmc_address), C(bmc_port), C(bmc_user), C(bmc_password), C(bmc_kind), C(disk_device),
        C(cluster)).
      - 'Its keys: C(nodes), a mapping of node name to facts (required); C(vars), facts of every node;
        C(clusters), a mapping of cluster template to facts of its nodes; C(cluster), the cluster of nodes
        that name none. A node''s own facts win over its cluster''s, which win over C(vars).'
      - A node is looked up by its name, then by its short name (the scheduler may give FQDNs).
      - The lab's C(inventory.json) is a valid description.
      - A reserved node missing from the description stays in the inventory, without facts, and a warning
        names it.
      - For thousands of nodes, prefer JSON, which loads several times faster than YAML.
    type: path
notes:
  - 'Every reserved node has the variables C(job_id), C(job_scheduler), C(job_user), C(job_state), C(job_name),
    C(job_queue), C(job_types), C(job_walltime) (seconds, null when unlimited), C(job_started_at) and
    C(job_ends_at) (ISO 8601, UTC), set once on its job''s group, and its facts from O(cluster_description)
    as host variables.'
  - 'Groups: C(reserved) (every reserved node), C(job_<id>) per job, and a group per cluster template, child of
    C(nodes), as in the site inventory schema. A node in several jobs is in each job''s group and has the
    C(job_*) variables of the job with the highest id, as host variables.'
  - Values that come from the scheduler (job names, user names) are marked unsafe, so they are never templated.
  - With O(cache), the jobs are read again after O(cache_timeout) seconds, and never later than the end of the
    first job's walltime. When the source cannot be read or answers nonsense and a cached inventory exists, a
    warning says so and the cached inventory is used, without the jobs past their walltime.
"""

    # Where the scheduler's commands run: the oar and slurm plugins.
    FRONTEND = r"""
options:
  frontend:
    description:
      - Run the scheduler's commands over SSH on this host (C(user@host), or a host of C(~/.ssh/config)), a
        frontend or login node, instead of here.
    type: str
  ssh_args:
    description: Arguments of C(ssh) before the host, with O(frontend).
    type: list
    elements: str
    default: ['-o', 'BatchMode=yes', '-o', 'ConnectTimeout=10']
  timeout:
    description: Seconds to wait for each command (or REST API request).
    type: int
    default: 30
"""
