# -*- coding: utf-8 -*-
# Copyright: (c) 2026, gridops.metal developers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import absolute_import, division, print_function

__metaclass__ = type

DOCUMENTATION = r"""
---
name: oar
short_description: The nodes of OAR jobs as an inventory
version_added: 0.1.0
description:
  - Reads OAR jobs and makes their nodes an inventory, joined with a cluster description, so playbooks run over
    "the nodes of job 4711" (C(oarsub -t deploy -l nodes=4,walltime=2)) without copying host names.
  - The jobs come from C(oarstat -f -J), run on this machine or over SSH on the OAR frontend (O(frontend)),
    or from the OAR REST API (O(api_url)), C(GET /jobs/details.json), which lists jobs with their nodes in one call.
  - Understands OAR 2.5's field names (C(Job_Id), C(job_user), C(startTime), C(assigned_network_address)) and
    OAR 3's and the REST API's (C(id), C(owner), C(start_time), C(nodes)). Node names are the resources'
    C(network_address).
  - The file name must end in C(.oar.yml) or C(.oar.yaml).
author:
  - gridops.metal developers (@gridops)
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
    choices: [gridops.metal.oar]
  api_url:
    description:
      - Base URL of the OAR REST API (for example C(https://oar.example.org/oarapi)). When set, jobs come from
        C(<api_url>/jobs/details.json) instead of C(oarstat).
    type: str
    env:
      - name: GRIDOPS_OAR_API_URL
  api_user:
    description: User for HTTP basic authentication to the REST API.
    type: str
    env:
      - name: GRIDOPS_OAR_API_USER
  api_password:
    description: Password for HTTP basic authentication to the REST API. Keep it in the environment or a vault.
    type: str
    env:
      - name: GRIDOPS_OAR_API_PASSWORD
  validate_certs:
    description: Whether to check the REST API's TLS certificate.
    type: bool
    default: true
  oarstat_path:
    description: The C(oarstat) command (on O(frontend) when that is set).
    type: str
    default: oarstat
"""

EXAMPLES = r"""
# job4711.oar.yml: the nodes of job 4711, with their MAC, IP and BMC from the site's description.
plugin: gridops.metal.oar
job_ids: [4711]
cluster_description: /etc/gridops/site-nodes.yml

---
# mine.oar.yml: every running job of alice, read on the frontend, grouped by job type.
plugin: gridops.metal.oar
frontend: alice@frontend.nancy.example.org
users: [alice]
keyed_groups:
  - key: job_types
    prefix: type

---
# api.oar.yml: through the REST API, cached for 5 minutes (never past a walltime).
plugin: gridops.metal.oar
api_url: https://api.example.org/oarapi
api_user: alice
cache: true
cache_plugin: ansible.builtin.jsonfile
cache_connection: ~/.cache/gridops-inventory
cache_timeout: 300
"""

import json

from urllib.error import HTTPError, URLError
from urllib.parse import urlencode

from ansible.module_utils.urls import open_url

from ansible_collections.gridops.metal.plugins.module_utils import _reservations as rsv
from ansible_collections.gridops.metal.plugins.plugin_utils._reservation_inventory import ReservationInventory

# OAR's own spelling of its states: the API filters on them exactly.
_OAR_STATES = dict((s.lower(), s) for s in (
    "Waiting", "Hold", "toLaunch", "toError", "toAckReservation", "Launching", "Running", "Suspended",
    "Resuming", "Finishing", "Terminated", "Error"))
_PAGE = 500


class InventoryModule(ReservationInventory):

    NAME = "gridops.metal.oar"
    SUFFIXES = (".oar.yml", ".oar.yaml")
    SOURCE_OPTIONS = ("api_url", "api_user", "oarstat_path", "frontend")

    def source(self):
        if self.get_option("api_url"):
            return "oar (%s/jobs/details.json)" % self.get_option("api_url").rstrip("/")
        where = " on %s" % self.get_option("frontend") if self.get_option("frontend") else ""
        return "oar (%s -f -J%s)" % (self.get_option("oarstat_path"), where)

    def fetch(self):
        if self.get_option("api_url"):
            return self._fetch_api()
        argv = [self.get_option("oarstat_path"), "-f", "-J"]
        for job_id in self.get_option("job_ids"):
            argv += ["-j", str(job_id)]
        return rsv.parse_oarstat(self.run_command(argv, "oarstat"), self.source())

    def _fetch_api(self):
        query = {"limit": _PAGE}
        if self.get_option("job_ids"):
            query["ids"] = ":".join(str(j) for j in self.get_option("job_ids"))
        elif self.get_option("states"):
            query["state"] = ",".join(_OAR_STATES.get(s.lower(), s) for s in self.get_option("states"))
        if len(self.get_option("users")) == 1:
            query["user"] = self.get_option("users")[0]
        jobs = []
        while True:
            query["offset"] = len(jobs)
            page, total = rsv.parse_oar_api(self._get("jobs/details.json?" + urlencode(query)), self.source())
            jobs += page
            if not page or total is None or len(jobs) >= total:
                return jobs

    def _get(self, path):
        url = "%s/%s" % (self.get_option("api_url").rstrip("/"), path)
        try:
            response = open_url(url, headers={"Accept": "application/json"}, timeout=self.get_option("timeout"),
                                validate_certs=self.get_option("validate_certs"),
                                url_username=self.get_option("api_user"), url_password=self.get_option("api_password"),
                                force_basic_auth=bool(self.get_option("api_user")))
            return response.read().decode("utf-8", "replace")
        except HTTPError as exc:
            detail = ""
            try:
                detail = json.loads(exc.read().decode("utf-8", "replace")).get("message", "")
            except (ValueError, AttributeError):
                pass
            reason = "HTTP %d %s%s" % (exc.code, exc.reason, ": " + detail if detail else "")
            raise rsv.SourceUnavailable(self.source(), reason)
        except (URLError, OSError) as exc:
            raise rsv.SourceUnavailable(self.source(), "no answer: %s" % getattr(exc, "reason", exc))
