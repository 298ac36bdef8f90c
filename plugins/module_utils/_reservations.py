# -*- coding: utf-8 -*-
# Copyright: (c) 2026, gridops.metal developers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

"""Reservations (OAR and Slurm jobs, and the hooks' spool) as plain data.

Shared by the inventory plugins ``oar``, ``slurm`` and ``reservation`` and by
the ``reservation_hooks`` role's hook script, which runs on the scheduler
host outside Ansible: standard library only, plus ClusterShell to expand
Slurm node lists.

Every parser returns *jobs*: dicts with the keys of :data:`JOB_KEYS`::

    id          str        "4711"
    scheduler   str        "oar", "slurm" (or what the spool entry says)
    user        str
    state       str        as the scheduler spells it: "Running", "RUNNING", "running"
    name        str|None
    queue       str|None   OAR queue, Slurm partition
    types       [str]      OAR job types ("deploy", "noop", "besteffort"); [] elsewhere
    walltime    int|None   seconds; None when unlimited
    started_at  int|None   seconds since the epoch; None before the start
    ends_at     int|None   started_at + walltime (Slurm: its end_time)
    nodes       [str]      the node names, in the scheduler's order

Errors name their source (``oar (oarstat -f -J)``, ``slurm (squeue --json)``,
``spool /var/lib/...``) so that an inventory error says where to look.
"""

from __future__ import absolute_import, division, print_function
__metaclass__ = type

import datetime
import json
import os
import re
import tempfile
import time

try:
    from ClusterShell.NodeSet import NodeSet, NodeSetException, RESOLVER_NOGROUP
except ImportError:
    HAS_CLUSTERSHELL = False
else:
    HAS_CLUSTERSHELL = True

JOB_KEYS = ("id", "scheduler", "user", "state", "name", "queue", "types", "walltime", "started_at", "ends_at",
            "nodes")

# Slurm's "no limit" (INFINITE) time_limit, in minutes, as squeue --json 22.05 prints it.
_SLURM_INFINITE = (0xFFFFFFFF, 0xFFFFFFFE)
_HOST_NAME = re.compile(r"^[A-Za-z0-9_.:-]+$")
_SPOOL_NAME = re.compile(r"^[A-Za-z0-9_.-]+$")


class ReservationError(Exception):
    """A problem with a reservation source; the message starts with the source's name."""

    def __init__(self, source, message):
        self.source = source
        Exception.__init__(self, "%s: %s" % (source, message))


class SourceUnavailable(ReservationError):
    """The scheduler (or its API, or the spool) could not be read."""


class BadData(ReservationError):
    """The source answered, but not with the shape expected."""


class UnknownJobs(ReservationError):
    """Job ids asked for that the source does not know."""

    def __init__(self, source, job_ids):
        self.job_ids = list(job_ids)
        ReservationError.__init__(self, source, "unknown job id%s %s (finished long ago, or never submitted?)"
                                  % ("s" if len(self.job_ids) > 1 else "", ", ".join(self.job_ids)))


# --------------------------------------------------------------------------- helpers


def isotime(epoch):
    """Seconds since the epoch as ISO 8601 UTC text (``2026-05-01T12:00:00Z``); None stays None."""
    if epoch is None:
        return None
    return datetime.datetime.fromtimestamp(int(epoch), datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def expand_nodes(text, source):
    """A node list (``node-[1-3],gpu-1``) as a list of names."""
    if not text:
        return []
    if not HAS_CLUSTERSHELL:
        raise ReservationError(source, "expanding the node list %r needs the ClusterShell Python library "
                                       "(pip install ClusterShell, or Debian's python3-clustershell)" % text)
    try:
        return list(NodeSet(text, resolver=RESOLVER_NOGROUP))
    except NodeSetException as exc:
        raise BadData(source, "node list %r: %s" % (text, exc))


def _number(value):
    """An integer from Slurm's JSON: a plain number, or (23.02+) {"set": true, "infinite": false, "number": n}."""
    if isinstance(value, dict):
        if value.get("infinite"):
            return None
        if not value.get("set", True):
            return 0
        value = value.get("number")
    if isinstance(value, bool) or value is None:
        return None
    if isinstance(value, (int, float)):
        return int(value)
    if isinstance(value, str) and value.strip().isdigit():
        return int(value)
    return None


def parse_walltime(value):
    """Seconds from an int (seconds) or [[D-]H:]M:S text; None when absent."""
    if value is None or value == "":
        return None
    if isinstance(value, bool):
        raise ValueError("not a duration: %r" % (value,))
    if isinstance(value, (int, float)):
        return int(value)
    text = str(value).strip()
    if text.isdigit():
        return int(text)
    match = re.match(r"^(?:(\d+)-)?(\d+)(?::(\d+))?(?::(\d+))?$", text)
    if not match:
        raise ValueError("not a duration: %r" % (value,))
    days = int(match.group(1) or 0)
    parts = [int(p) for p in match.groups()[1:] if p is not None]
    while len(parts) < 3:
        parts.insert(0, 0)
    return days * 86400 + parts[0] * 3600 + parts[1] * 60 + parts[2]


def _first(record, keys, default=None):
    for key in keys:
        if key in record and record[key] is not None:
            return record[key]
    return default


def _text(value):
    if value is None or value == "":
        return None
    return str(value)


def _check_nodes(nodes, source, job_id):
    for node in nodes:
        if not isinstance(node, str) or not _HOST_NAME.match(node):
            raise BadData(source, "job %s: %r is not a node name" % (job_id, node))
    return nodes


def _ends(started_at, walltime):
    if started_at and walltime is not None:
        return started_at + walltime
    return None


def _load_json(text, source):
    try:
        return json.loads(text)
    except ValueError as exc:
        excerpt = text.strip()[:80]
        raise BadData(source, "not JSON (%s): %r" % (exc, excerpt))


# --------------------------------------------------------------------------- OAR


def oar_job(record, source):
    """One job of OAR 2.5 (``oarstat -f -J``: Job_Id, job_user, startTime, assigned_network_address),
    OAR 2.5's REST API or OAR 3 (id, owner/user, start_time, nodes or network_address lists)."""
    if not isinstance(record, dict):
        raise BadData(source, "a job is %s, not an object" % type(record).__name__)
    job_id = _first(record, ("Job_Id", "job_id", "id"))
    if job_id is None:
        raise BadData(source, "job without an id (keys: %s)" % ", ".join(sorted(record)[:12]))
    job_id = str(job_id)
    user = _first(record, ("job_user", "owner", "user"))
    state = _first(record, ("state",))
    if user is None or state is None:
        raise BadData(source, "job %s has no %s" % (job_id, "user" if user is None else "state"))

    nodes = _first(record, ("assigned_network_address", "network_addresses", "network_adresses"))
    if isinstance(nodes, str):
        nodes = expand_nodes(nodes, source)
    if nodes is None and isinstance(record.get("nodes"), list):
        # REST API: [{"network_address": ..., "status": "assigned"}]; "scheduled" ones are predictions.
        nodes = [n.get("network_address") for n in record["nodes"]
                 if isinstance(n, dict) and n.get("status", "assigned") == "assigned"]
    if nodes is None:
        nodes = []
    if not isinstance(nodes, list):
        raise BadData(source, "job %s: its nodes are %s, not a list" % (job_id, type(nodes).__name__))
    # A job on several resources of one node lists the node once per resource.
    nodes = list(dict.fromkeys(nodes))

    types = record.get("types") or []
    if isinstance(types, str):
        types = [t for t in re.split(r"[,\s]+", types) if t]
    if not isinstance(types, list):
        raise BadData(source, "job %s: types is %s, not a list" % (job_id, type(types).__name__))
    try:
        walltime = parse_walltime(record.get("walltime"))
    except ValueError as exc:
        raise BadData(source, "job %s: walltime: %s" % (job_id, exc))
    started_at = _number(_first(record, ("startTime", "start_time"))) or None
    return {
        "id": job_id, "scheduler": "oar", "user": str(user), "state": str(state),
        "name": _text(record.get("name")), "queue": _text(_first(record, ("queue", "queue_name"))),
        "types": [str(t) for t in types], "walltime": walltime,
        "started_at": started_at, "ends_at": _ends(started_at, walltime),
        "nodes": _check_nodes(nodes, source, job_id),
    }


def parse_oarstat(text, source="oar (oarstat -f -J)"):
    """Jobs from ``oarstat -f -J``: an object keyed by job id (empty output: no job)."""
    if not text.strip():
        return []
    doc = _load_json(text, source)
    if isinstance(doc, list):
        records = doc
    elif isinstance(doc, dict):
        records = list(doc.values())
    else:
        raise BadData(source, "expected an object of jobs keyed by id, got %s" % type(doc).__name__)
    return [oar_job(r, source) for r in records]


def parse_oar_api(text, source="oar (REST API)"):
    """(jobs, total) from one page of ``GET /oarapi/jobs/details.json``."""
    doc = _load_json(text, source)
    if not isinstance(doc, dict) or not isinstance(doc.get("items"), list):
        keys = ", ".join(sorted(doc)[:8]) if isinstance(doc, dict) else type(doc).__name__
        raise BadData(source, "expected an object with an 'items' list of jobs, got %s" % keys)
    total = doc.get("total")
    return [oar_job(r, source) for r in doc["items"]], (total if isinstance(total, int) else None)


# --------------------------------------------------------------------------- Slurm


def slurm_job(record, source):
    """One job of ``squeue --json`` (Slurm 22.05; 23.02+ numbers as {"number": n} and states as lists)."""
    if not isinstance(record, dict):
        raise BadData(source, "a job is %s, not an object" % type(record).__name__)
    job_id = _number(record.get("job_id"))
    if job_id is None:
        raise BadData(source, "job without a job_id (keys: %s)" % ", ".join(sorted(record)[:12]))
    job_id = str(job_id)
    state = record.get("job_state")
    if isinstance(state, list):
        state = state[0] if state else None
    user = record.get("user_name")
    if not state or not user:
        raise BadData(source, "job %s has no %s" % (job_id, "job_state" if not state else "user_name"))
    nodes = record.get("nodes") or ""
    if not isinstance(nodes, str):
        raise BadData(source, "job %s: nodes is %s, not a node list" % (job_id, type(nodes).__name__))
    limit = _number(record.get("time_limit"))
    walltime = None if limit is None or limit in _SLURM_INFINITE else limit * 60
    started_at = _number(record.get("start_time")) or None
    ends_at = None
    if started_at:
        ends_at = _number(record.get("end_time")) or _ends(started_at, walltime)
    return {
        "id": job_id, "scheduler": "slurm", "user": str(user), "state": str(state),
        "name": _text(record.get("name")), "queue": _text(record.get("partition")),
        "types": [], "walltime": walltime, "started_at": started_at,
        # A running job's end_time is its start plus its limit; an unlimited one has none.
        "ends_at": ends_at if walltime is not None else None,
        "nodes": _check_nodes(expand_nodes(nodes, source), source, job_id),
    }


def parse_squeue(text, source="slurm (squeue --json)"):
    doc = _load_json(text, source)
    if not isinstance(doc, dict) or not isinstance(doc.get("jobs"), list):
        keys = ", ".join(sorted(doc)[:8]) if isinstance(doc, dict) else type(doc).__name__
        raise BadData(source, "expected an object with a 'jobs' list, got %s" % keys)
    _slurm_errors(doc, source)
    return [slurm_job(r, source) for r in doc["jobs"]]


def parse_sinfo(text, source="slurm (sinfo --json)"):
    """{node name: address} from ``sinfo --json`` (the NodeAddr of slurm.conf)."""
    doc = _load_json(text, source)
    if not isinstance(doc, dict) or not isinstance(doc.get("nodes"), list):
        keys = ", ".join(sorted(doc)[:8]) if isinstance(doc, dict) else type(doc).__name__
        raise BadData(source, "expected an object with a 'nodes' list, got %s" % keys)
    _slurm_errors(doc, source)
    addresses = {}
    for node in doc["nodes"]:
        if isinstance(node, dict) and node.get("name"):
            addresses[str(node["name"])] = str(node.get("address") or node["name"])
    return addresses


def _slurm_errors(doc, source):
    errors = doc.get("errors") or []
    if errors:
        texts = [e.get("error") or e.get("description") or str(e) if isinstance(e, dict) else str(e) for e in errors]
        raise SourceUnavailable(source, "; ".join(texts))


# --------------------------------------------------------------------------- the hooks' spool


def spool_path(spool_dir, scheduler, job_id):
    """The spool file of one job: ``<spool_dir>/<scheduler>-<id>.json``."""
    name = "%s-%s.json" % (scheduler, job_id)
    if not _SPOOL_NAME.match(name):
        raise ValueError("job %r of %r cannot name a spool file" % (job_id, scheduler))
    return os.path.join(spool_dir, name)


def spool_record(job):
    """What the start hook writes: the job, plus readable times for whoever opens the file."""
    record = dict((key, job.get(key)) for key in JOB_KEYS)
    record["started"] = isotime(job.get("started_at"))
    record["ends"] = isotime(job.get("ends_at"))
    return record


def write_spool_entry(spool_dir, job):
    """Write the job's spool file atomically (readers never see half a file); return its path."""
    path = spool_path(spool_dir, job["scheduler"], job["id"])
    fd, tmp = tempfile.mkstemp(prefix=".tmp-", dir=spool_dir)
    try:
        with os.fdopen(fd, "w") as fh:
            json.dump(spool_record(job), fh, indent=1, sort_keys=True)
            fh.write("\n")
        os.chmod(tmp, 0o644)
        os.rename(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    return path


def remove_spool_entry(spool_dir, scheduler, job_id):
    """Remove the job's spool file; return whether there was one."""
    try:
        os.unlink(spool_path(spool_dir, scheduler, job_id))
    except FileNotFoundError:
        return False
    return True


def spool_job(record, source):
    """A job from a spool file (the keys of JOB_KEYS)."""
    if not isinstance(record, dict):
        raise BadData(source, "expected a job object, got %s" % type(record).__name__)
    missing = [k for k in ("id", "scheduler", "user", "nodes") if not record.get(k)]
    if missing:
        raise BadData(source, "missing %s" % ", ".join(missing))
    job = dict((key, record.get(key)) for key in JOB_KEYS)
    job["id"] = str(job["id"])
    job["state"] = str(job["state"] or "running")
    job["types"] = list(job["types"] or [])
    for key in ("walltime", "started_at", "ends_at"):
        if job[key] is not None and (isinstance(job[key], bool) or not isinstance(job[key], int)):
            raise BadData(source, "%s is %r, not a number of seconds" % (key, job[key]))
    if not isinstance(job["nodes"], list):
        raise BadData(source, "nodes is %s, not a list" % type(job["nodes"]).__name__)
    _check_nodes(job["nodes"], source, job["id"])
    return job


def read_spool(spool_dir):
    """(jobs, problems) from every ``*.json`` of the spool; an unreadable entry is a problem, not a failure."""
    source = "spool %s" % spool_dir
    try:
        names = sorted(n for n in os.listdir(spool_dir) if n.endswith(".json") and not n.startswith("."))
    except OSError as exc:
        raise SourceUnavailable(source, "cannot list it: %s" % exc.strerror)
    jobs, problems = [], []
    for name in names:
        path = os.path.join(spool_dir, name)
        try:
            with open(path) as fh:
                text = fh.read()
            jobs.append(spool_job(_load_json(text, "spool entry %s" % path), "spool entry %s" % path))
        except FileNotFoundError:
            continue  # removed by an end hook while we listed
        except (OSError, ReservationError) as exc:
            problems.append(str(exc) if isinstance(exc, ReservationError) else "spool entry %s: %s" % (path, exc))
    return jobs, problems


# --------------------------------------------------------------------------- selecting jobs


def select_jobs(jobs, source, job_ids=None, users=None, names=None, states=None):
    """(jobs kept, notes) by id, user, name and state (case-insensitive).

    A job id asked for and absent raises UnknownJobs; one present but filtered
    out (another state, say) gives a note, so an empty inventory is explained.
    """
    wanted = [str(j) for j in job_ids or []]
    known = dict((job["id"], job) for job in jobs)
    missing = [j for j in wanted if j not in known]
    if missing:
        raise UnknownJobs(source, missing)
    users = set(users or [])
    names = set(names or [])
    states = set(s.lower() for s in states or [])
    kept, notes = [], []
    for job in (known[j] for j in wanted) if wanted else jobs:
        reasons = []
        if users and job["user"] not in users:
            reasons.append("user %s" % job["user"])
        if names and job["name"] not in names:
            reasons.append("name %s" % job["name"])
        if states and job["state"].lower() not in states:
            reasons.append("state %s" % job["state"])
        if not reasons:
            kept.append(job)
        elif wanted:
            notes.append("%s: job %s left out: %s" % (source, job["id"], ", ".join(reasons)))
    return kept, notes


def drop_ended(jobs, now=None):
    """(jobs still within their walltime, ids of those past it)."""
    now = time.time() if now is None else now
    kept, ended = [], []
    for job in jobs:
        if job.get("ends_at") is not None and job["ends_at"] <= now:
            ended.append(job["id"])
        else:
            kept.append(job)
    return kept, ended


def cache_valid_until(jobs, fetched_at, timeout):
    """When a cached list of jobs must be read again: after timeout seconds (0: never),
    and never later than the first end of a job's walltime."""
    ends = [job["ends_at"] for job in jobs if job.get("ends_at")]
    limit = fetched_at + timeout if timeout else None
    if ends:
        limit = min(ends) if limit is None else min([limit] + ends)
    return limit


# --------------------------------------------------------------------------- cluster description


def load_cluster_description(path, loader=None):
    """{node name: facts} from a cluster description file (YAML or JSON)::

        vars: {bmc_user: admin}                 # every node (optional)
        clusters: {graphene: {disk_device: /dev/sda}}   # per cluster template (optional)
        cluster: graphene                       # default cluster of the nodes (optional)
        nodes:
          graphene-1: {mac: ..., ip: ..., bmc_address: ..., cluster: graphene}

    The schema of a node's facts is the lab's (``mac``, ``ip``, ``bmc_*``,
    ``disk_device``, ``cluster``); the lab's own ``inventory.json`` is a valid
    description.  loader(text) parses YAML; JSON is parsed without it.
    """
    source = "cluster description %s" % path
    try:
        with open(path) as fh:
            text = fh.read()
    except OSError as exc:
        raise SourceUnavailable(source, exc.strerror or str(exc))
    if path.endswith(".json") or loader is None:
        doc = _load_json(text, source)
    else:
        try:
            doc = loader(text)
        except Exception as exc:
            raise BadData(source, "not YAML: %s" % exc)
    if not isinstance(doc, dict) or not isinstance(doc.get("nodes"), dict):
        raise BadData(source, "expected a mapping with a 'nodes' mapping of node name to facts")
    common = doc.get("vars") or {}
    clusters = doc.get("clusters") or {}
    if not isinstance(common, dict) or not isinstance(clusters, dict):
        raise BadData(source, "'vars' and 'clusters' must be mappings")
    default_cluster = doc.get("cluster")
    facts = {}
    for name, own in doc["nodes"].items():
        own = own or {}
        if not isinstance(own, dict):
            raise BadData(source, "node %s: expected a mapping of facts, got %s" % (name, type(own).__name__))
        cluster = own.get("cluster", default_cluster)
        per_cluster = clusters.get(cluster) or {} if cluster is not None else {}
        if not isinstance(per_cluster, dict):
            raise BadData(source, "clusters.%s must be a mapping" % cluster)
        merged = dict(common)
        merged.update(per_cluster)
        merged.update(own)
        if cluster is not None:
            merged["cluster"] = cluster
        facts[str(name)] = merged
    return facts


def node_facts(description, node):
    """The description's facts for node: by its name, else by its short name (FQDN schedulers)."""
    found = description.get(node)
    if found is None and "." in node:
        found = description.get(node.split(".", 1)[0])
    return found
