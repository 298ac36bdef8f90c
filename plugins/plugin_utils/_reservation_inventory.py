# -*- coding: utf-8 -*-
# Copyright: (c) 2026, gridops.metal developers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

"""What the oar, slurm and reservation inventory plugins share: selection, cache, join, hosts and groups.

A plugin says where its jobs come from (:meth:`ReservationInventory.fetch`);
this class selects them, caches them (never past the first walltime end),
joins every node to the cluster description, and fills the inventory.
"""

from __future__ import absolute_import, division, print_function
__metaclass__ = type

import hashlib
import keyword
import json
import os
import re
import shlex
import subprocess
import time

from ansible.errors import AnsibleParserError
from ansible.module_utils.common.text.converters import to_native
from ansible.plugins.inventory import BaseInventoryPlugin, Cacheable, Constructable
from ansible.utils.display import Display
from ansible.utils.unsafe_proxy import wrap_var

import yaml

from ansible_collections.gridops.metal.plugins.module_utils import _reservations as rsv

display = Display()

_CACHE_FORMAT = 1
# Options that change what is fetched: a cached result made with other values is not reused.
_SELECTION_OPTIONS = ("job_ids", "users", "names", "states")
# The C loader when there is one: a 10,000-node description loads in a fraction of the time.
_YAML_LOADER = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
_DIGITS = re.compile(r"(\d+)")
# Names Jinja reads as constants or operators: Ansible warns about them as variable names.
_JINJA_WORDS = frozenset(("true", "false", "none", "True", "False", "None", "and", "or", "not", "in", "is",
                          "if", "else", "import", "with", "without", "context", "ignore", "missing"))


def _natural(value):
    # re.split with a group alternates text and digits, so tuples compare like with like.
    return tuple(int(c) if i % 2 else c for i, c in enumerate(_DIGITS.split(value))), value


def _fold(names, limit=20):
    names = sorted(names, key=_natural)
    text = ", ".join(names[:limit])
    return text + (" and %d more" % (len(names) - limit) if len(names) > limit else "")


class ReservationInventory(BaseInventoryPlugin, Constructable, Cacheable):
    """Base of the reservation inventory plugins; subclasses set NAME and SUFFIXES and define fetch()."""

    SUFFIXES = ()
    # Options of the subclass that change what fetch() returns (part of the cache fingerprint).
    SOURCE_OPTIONS = ()

    def verify_file(self, path):
        return super(ReservationInventory, self).verify_file(path) and path.endswith(self.SUFFIXES)

    # -- what subclasses define

    def source(self):
        """The source's name for messages: ``oar (oarstat -f -J on frontend)``."""
        raise NotImplementedError

    def fetch(self):
        """The candidate jobs (dicts with the keys of rsv.JOB_KEYS), before selection.

        Raise rsv.SourceUnavailable or rsv.BadData when the source cannot be read.
        """
        raise NotImplementedError

    def addresses(self, nodes):
        """{node: address} for the selected nodes (Slurm's NodeAddr); none by default."""
        return {}

    # -- helpers for subclasses

    def run_command(self, argv, what, env=None):
        """stdout of argv, run locally or with ``ssh <frontend>``; SourceUnavailable when it fails."""
        frontend = self.get_option("frontend")
        if frontend:
            if env:
                argv = ["env"] + ["%s=%s" % kv for kv in sorted(env.items())] + list(argv)
            remote = " ".join(shlex.quote(a) for a in argv)
            argv = ["ssh"] + list(self.get_option("ssh_args")) + [frontend, "--", remote]
        elif env:
            env = dict(os.environ, **env)
        source = self.source()
        try:
            proc = subprocess.run(argv, capture_output=True, text=True, timeout=self.get_option("timeout"),
                                  env=None if frontend else env, check=False)
        except FileNotFoundError:
            raise rsv.SourceUnavailable(source, "%s: command not found" % argv[0])
        except subprocess.TimeoutExpired:
            raise rsv.SourceUnavailable(source, "%s did not answer within %s s" % (what, self.get_option("timeout")))
        if proc.returncode != 0:
            detail = (proc.stderr or proc.stdout).strip().splitlines()
            reason = "%s failed (exit %d)%s" % (what, proc.returncode, ": " + detail[-1] if detail else "")
            raise rsv.SourceUnavailable(source, reason)
        return proc.stdout

    # -- parse

    def parse(self, inventory, loader, path, cache=True):
        super(ReservationInventory, self).parse(inventory, loader, path, cache)
        self._read_config_data(path)
        jobs, addresses = self._jobs(path, cache)
        description = None
        desc_path = self.get_option("cluster_description")
        if desc_path:
            try:
                description = rsv.load_cluster_description(desc_path, loader=_load_yaml)
            except rsv.ReservationError as exc:
                raise AnsibleParserError(to_native(exc))
        self._populate(jobs, addresses, description, desc_path)

    def _fingerprint(self):
        options = dict((name, self.get_option(name)) for name in _SELECTION_OPTIONS + tuple(self.SOURCE_OPTIONS))
        return hashlib.sha256(json.dumps(options, sort_keys=True, default=str).encode()).hexdigest()[:16]

    def _jobs(self, path, cache):
        """The selected jobs and node addresses, from the cache while it is valid."""
        use_cache = self.get_option("cache")
        key = self.get_cache_key(path)
        fingerprint = self._fingerprint()
        cached = None
        if use_cache:
            try:
                cached = self._cache[key]
            except KeyError:
                cached = None
            if not (isinstance(cached, dict) and cached.get("format") == _CACHE_FORMAT
                    and cached.get("fingerprint") == fingerprint):
                cached = None
        now = time.time()
        if cached and cache and (cached["valid_until"] is None or now < cached["valid_until"]):
            return cached["jobs"], cached["addresses"]

        try:
            jobs, notes = self._select(self.fetch())
            addresses = self.addresses(set(n for job in jobs for n in job["nodes"])) if jobs else {}
        except (rsv.SourceUnavailable, rsv.BadData) as exc:
            if not cached:
                raise AnsibleParserError(to_native(exc))
            jobs, ended = rsv.drop_ended(cached["jobs"], now)
            display.warning("%s; using the inventory cached %d s ago%s" % (
                exc, now - cached["fetched_at"],
                " without job(s) %s, past their walltime" % ", ".join(ended) if ended else ""))
            return jobs, cached["addresses"]
        except rsv.ReservationError as exc:
            raise AnsibleParserError(to_native(exc))
        for note in notes:
            display.warning(note)
        if use_cache:
            self._cache[key] = {
                "format": _CACHE_FORMAT, "fingerprint": fingerprint, "fetched_at": now,
                "valid_until": rsv.cache_valid_until(jobs, now, self.get_option("cache_timeout")),
                "jobs": jobs, "addresses": addresses,
            }
        return jobs, addresses

    def _select(self, jobs):
        return rsv.select_jobs(jobs, self.source(), job_ids=self.get_option("job_ids"),
                               users=self.get_option("users"), names=self.get_option("names"),
                               states=self.get_option("states"))

    def _populate(self, jobs, addresses, description, desc_path):
        strict = self.get_option("strict")
        compose = self.get_option("compose")
        groups = self.get_option("groups")
        keyed_groups = self.get_option("keyed_groups")
        inventory = self.inventory
        inventory.add_group("reserved")
        # Hosts that an earlier source of this run made: their variables go through set_variable (which
        # merges mappings as the hash behaviour says); the nodes this plugin adds take theirs in one update.
        hosts = inventory.hosts
        existing = set(hosts)

        # The job_* variables are the job group's: set once per job, not once per node (10,000 nodes
        # would mean 100,000 set_variable calls). Every node of the job has them all the same.
        held, job_vars = {}, {}
        for job in sorted(jobs, key=lambda j: _natural(j["id"])):
            group = inventory.add_group(self._sanitize_group_name("job_%s" % job["id"]))
            job_vars[job["id"]] = _job_vars(job)
            for name, value in job_vars[job["id"]].items():
                inventory.set_variable(group, name, value)
            for node in job["nodes"]:
                node_jobs = held.get(node)
                if node_jobs is None:
                    inventory.add_host(node, group="reserved")
                    node_jobs = held[node] = []
                inventory.add_child(group, node)
                node_jobs.append(job)

        missing = []
        plain_names = {}  # variable name: whether it needs none of set_variable's checks
        cluster_groups = {}  # cluster: its group's name
        for node, node_jobs in held.items():
            facts = None
            if description is not None:
                facts = rsv.node_facts(description, node)
                if facts is None:
                    missing.append(node)
            # A copy: the description's dicts are shared between nodes (short names) and must stay as loaded.
            variables = dict(facts) if facts else {}
            address = addresses.get(node)
            if address and address != node and "ansible_host" not in variables:
                variables["ansible_host"] = address
            if len(node_jobs) > 1:
                # A node in several jobs (shared nodes) is in each job's group; as host variables, the
                # job_* of the highest id win over every group's.
                variables.update(job_vars[node_jobs[-1]["id"]])
            if node in existing:
                for name, value in variables.items():
                    inventory.set_variable(node, name, value)
            else:
                host = hosts[node]
                for name in variables:
                    plain = plain_names.get(name)
                    if plain is None:
                        plain = plain_names[name] = _plain_name(name)
                    if not plain:
                        # Let Ansible check (and warn about) the name; the rest goes in directly.
                        inventory.set_variable(node, name, variables[name])
                host.vars.update((k, v) for k, v in variables.items() if plain_names[k])
            cluster = variables.get("cluster")
            if cluster:
                cluster_group = cluster_groups.get(cluster)
                if cluster_group is None:
                    cluster_group = cluster_groups[cluster] = inventory.add_group(
                        self._sanitize_group_name(str(cluster)))
                    inventory.add_group("nodes")
                    inventory.add_child("nodes", cluster_group)
                inventory.add_child(cluster_group, node)
            if compose or groups or keyed_groups:
                # What the node will see: its job's variables, then its own (with inventory_hostname).
                variables = dict(job_vars[node_jobs[-1]["id"]])
                variables.update(inventory.get_host(node).get_vars())
                self._set_composite_vars(compose, variables, node, strict=strict)
                self._add_host_to_composed_groups(groups, variables, node, strict=strict)
                self._add_host_to_keyed_groups(keyed_groups, variables, node, strict=strict)
        if missing:
            display.warning("%s: %d reserved node(s) missing from the cluster description %s, kept without "
                            "their facts: %s" % (self.source(), len(missing), desc_path, _fold(missing)))


def _plain_name(name):
    """Whether a variable name is one Ansible takes without a word (an identifier, ASCII, no keyword)."""
    return (isinstance(name, str) and name.isidentifier() and name.isascii() and not keyword.iskeyword(name)
            and name not in _JINJA_WORDS and not name.startswith("__"))


def _job_vars(job):
    # Marked unsafe: job names and users come from the scheduler's users.
    return wrap_var({
        "job_id": job["id"], "job_scheduler": job["scheduler"], "job_user": job["user"],
        "job_state": job["state"], "job_name": job["name"], "job_queue": job["queue"],
        "job_types": job["types"], "job_walltime": job["walltime"],
        "job_started_at": rsv.isotime(job["started_at"]), "job_ends_at": rsv.isotime(job["ends_at"]),
    })


def _load_yaml(text):
    return yaml.load(text, Loader=_YAML_LOADER)
