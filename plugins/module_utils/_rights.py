# -*- coding: utf-8 -*-
# Copyright: (c) 2026, gridops.metal developers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

"""Deployment rights (Kadeploy's karights): which user may deploy on which nodes and partitions, until when.

A right is (user, node, partition) with an optional expiry time; the partition
``*`` stands for every partition of the node.  Rights are kept per origin
(``oar:4711``, ``slurm:12``, or none for the operator's own): a grant adds
or extends the right of its origin and never touches another origin's, so
the end of one job (:func:`revoke` with its origin) leaves what the operator
or another job gave on the same node.  A grant never shortens a right: the
later expiry wins, and no expiry (a permanent right) wins over any.  Node sets come in ClusterShell's
syntax (``node-[1-8]``, ``node-[1-8]!node-3``) and are kept one row per node,
so revoking part of a range and checking a deployment need no range
arithmetic in SQL.  Expired rights give nothing; they stay until revoked
(``revoke(expired=True)`` drops them all).

Kept in the registry database (``_registry``); every call is one transaction.
The deploy engine calls :func:`check` before it touches a node.
"""

from __future__ import absolute_import, division, print_function
__metaclass__ = type

import datetime
import re

from ansible_collections.gridops.metal.plugins.module_utils._registry import (
    USER_PATTERN, Refused, check_name, isotime, utcnow,
)

try:
    from ClusterShell.NodeSet import NodeSet, NodeSetException, RESOLVER_NOGROUP
except ImportError:
    HAS_CLUSTERSHELL = False
else:
    HAS_CLUSTERSHELL = True

ANY_PARTITION = "*"
PARTITION_PATTERN = r"^(\*|[A-Za-z0-9_][A-Za-z0-9_.:/-]{0,127})$"
_HOST_NAME = re.compile(r"^[A-Za-z0-9_.:-]+$")
_DIGITS = re.compile(r"(\d+)")


class MissingClusterShell(Exception):
    """ClusterShell is needed to read node sets (Debian: python3-clustershell)."""


def _natural_key(name):
    chunks = _DIGITS.split(name)
    return tuple(int(c) if i % 2 else c for i, c in enumerate(chunks)), name


def expand_nodes(value, field="nodes"):
    """A node set string, or a list of them, as a sorted list of node names."""
    if not HAS_CLUSTERSHELL:
        raise MissingClusterShell()
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, (list, tuple)) or not value:
        raise Refused(field, "must be a non-empty list of node sets such as node-[1-8]")
    nodes = NodeSet(resolver=RESOLVER_NOGROUP)
    for item in value:
        if not isinstance(item, str) or not item.strip():
            raise Refused(field, "%r is not a node set" % (item,))
        try:
            part = NodeSet(item, resolver=RESOLVER_NOGROUP)
        except NodeSetException as exc:
            raise Refused(field, "%r is not a node set: %s" % (item, exc))
        for name in part:
            if not _HOST_NAME.match(name):
                raise Refused(field, "%r in %r is not a host name (node groups are not supported)" % (name, item))
        nodes.update(part)
    return sorted(nodes, key=_natural_key)


def fold_nodes(names):
    if not HAS_CLUSTERSHELL:
        raise MissingClusterShell()
    return str(NodeSet.fromlist(list(names), resolver=RESOLVER_NOGROUP))


def parse_time(value, field="expires"):
    """An expiry time (ISO 8601 text, or seconds since the epoch) as an aware UTC datetime; None stays None."""
    if value is None or value == "":
        return None
    if isinstance(value, bool):
        raise Refused(field, "must be a date and time, not a boolean")
    if isinstance(value, (int, float)) or (isinstance(value, str) and re.match(r"^\d+(\.\d+)?$", value.strip())):
        return datetime.datetime.fromtimestamp(float(value), datetime.timezone.utc).replace(microsecond=0)
    if isinstance(value, datetime.datetime):
        when = value
    else:
        text = str(value).strip()
        if text.endswith("Z"):
            text = text[:-1] + "+00:00"
        try:
            when = datetime.datetime.fromisoformat(text)
        except ValueError:
            raise Refused(field, "%r is not a date and time (ISO 8601, for example 2026-05-01T12:00:00Z, "
                                 "or seconds since the epoch)" % (value,))
    if when.tzinfo is None:
        raise Refused(field, "%r has no time zone: add Z (UTC) or an offset such as +02:00" % (value,))
    return when.astimezone(datetime.timezone.utc).replace(microsecond=0)


def _partitions(value, default=None):
    if value is None or value == []:
        return default
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, (list, tuple)):
        raise Refused("partitions", "must be a list of partition names, or * for all")
    for part in value:
        if not isinstance(part, str) or not re.match(PARTITION_PATTERN, part):
            raise Refused("partitions", "%r is not a partition name (letters, digits, _.:/-) or *" % (part,))
    return sorted(set(value))


def _expired(row, now):
    return row["expires"] is not None and row["expires"] <= isotime(now)


def _fold(rows, now):
    """Rows grouped by (user, partition, expiry, origin), their nodes folded."""
    groups = {}
    for row in rows:
        key = (row["user"], row["partition"], row["expires"] or "", row["origin"] or "")
        groups.setdefault(key, []).append(row["node"])
    out = []
    for (user, partition, expires, origin), nodes in sorted(groups.items()):
        nodes = sorted(set(nodes), key=_natural_key)
        out.append({"user": user, "nodes": fold_nodes(nodes), "node_count": len(nodes), "partition": partition,
                    "expires": expires or None, "expired": bool(expires) and expires <= isotime(now),
                    "origin": origin or None})
    return out


def _user_rows(conn, user):
    return conn.execute("SELECT * FROM rights WHERE user = ? ORDER BY node, partition, origin", (user,)).fetchall()


def _text(rows, now):
    return "".join("%(nodes)s %(partition)s expires=%(expires)s origin=%(origin)s\n" % r for r in _fold(rows, now))


def _summary(rows):
    return [(r["node"], r["partition"], r["expires"], r["origin"]) for r in rows]


def _diff(user, before, after, now):
    return {"before": _text(before, now), "after": _text(after, now),
            "before_header": "rights of %s" % user, "after_header": "rights of %s" % user}


def _later(current, new):
    """The longer of two expiry stamps (ISO text, same format and zone); None (no end) is the longest."""
    if current is None or new is None:
        return None
    return max(current, new)


def grant(reg, user, nodes, partitions=None, expires=None, origin=None, now=None):
    """Let user deploy on nodes (and partitions, default every one) until expires (None: no end).

    The right is origin's (None: the operator's own): an existing right of the same origin is extended
    to expires, never shortened; the rights of other origins are left as they are.
    """
    now = now or utcnow()
    check_name("user", user, USER_PATTERN)
    names = expand_nodes(nodes)
    parts = _partitions(partitions, [ANY_PARTITION])
    when = parse_time(expires)
    if when is not None and when <= now:
        raise Refused("expires", "%s is in the past" % isotime(when))
    if origin is not None and not isinstance(origin, str):
        raise Refused("origin", "must be a string")
    stamp = isotime(when) if when else None
    with reg.transaction() as conn:
        before = _user_rows(conn, user)
        current = dict(((r["node"], r["partition"], r["origin"]), r) for r in before)
        for node in names:
            for part in parts:
                row = current.get((node, part, origin))
                if row is None:
                    conn.execute("INSERT INTO rights (user, node, partition, expires, origin, granted) "
                                 "VALUES (?, ?, ?, ?, ?, ?)", (user, node, part, stamp, origin, isotime(now)))
                else:
                    longer = _later(row["expires"], stamp)
                    if longer != row["expires"]:
                        conn.execute("UPDATE rights SET expires = ?, granted = ? WHERE id = ?",
                                     (longer, isotime(now), row["id"]))
        after = _user_rows(conn, user)
    changed = _summary(before) != _summary(after)
    return {"changed": changed, "rights": _fold(after, now), "diff": _diff(user, before, after, now)}


ANY_ORIGIN = object()


def revoke(reg, user=None, nodes=None, partitions=None, expired=False, now=None, origin=ANY_ORIGIN):
    """Drop user's rights on nodes (default all) and partitions (default all); expired: every expired right.

    origin: only the rights of that origin (a job's end: ``oar:4711``; None: the operator's own);
    by default, of every origin.
    """
    now = now or utcnow()
    if user is None and not expired:
        raise Refused("user", "required (or expired=true to drop every expired right)")
    if user is not None:
        check_name("user", user, USER_PATTERN)
    if origin is not ANY_ORIGIN and origin is not None and not isinstance(origin, str):
        raise Refused("origin", "must be a string")
    names = set(expand_nodes(nodes)) if nodes else None
    parts = _partitions(partitions)
    with reg.transaction() as conn:
        query, args = "SELECT * FROM rights", []
        if user is not None:
            query, args = query + " WHERE user = ?", [user]
        rows = conn.execute(query + " ORDER BY user, node, partition, origin", args).fetchall()
        gone = [r for r in rows
                if (names is None or r["node"] in names) and (parts is None or r["partition"] in parts)
                and (origin is ANY_ORIGIN or r["origin"] == origin)
                and (not expired or _expired(r, now))]
        for row in gone:
            conn.execute("DELETE FROM rights WHERE id = ?", (row["id"],))
    gone_ids = set(r["id"] for r in gone)
    kept = [r for r in rows if r["id"] not in gone_ids]
    return {"changed": bool(gone), "revoked": _fold(gone, now), "rights": _fold(kept, now) if user else [],
            "diff": _diff(user or "every user", rows, kept, now)}


def list_rights(reg, user=None, nodes=None, include_expired=False, now=None):
    """Rights (of user, on nodes), folded into node sets; expired ones only when asked."""
    now = now or utcnow()
    if user is not None:
        check_name("user", user, USER_PATTERN)
    names = set(expand_nodes(nodes)) if nodes else None
    with reg.transaction() as conn:
        query, args = "SELECT * FROM rights", []
        if user is not None:
            query, args = query + " WHERE user = ?", [user]
        rows = [r for r in conn.execute(query, args)
                if (names is None or r["node"] in names) and (include_expired or not _expired(r, now))]
    return _fold(rows, now)


def check(reg, user, nodes, partition=ANY_PARTITION, now=None):
    """Whether user may deploy now on every node (partition: the one to write, or * for the whole disk).

    A right on ``*`` covers every partition; a right on one partition covers
    that partition only, so deploying on the whole disk needs ``*``.
    """
    now = now or utcnow()
    check_name("user", user, USER_PATTERN)
    names = expand_nodes(nodes)
    if not isinstance(partition, str) or not re.match(PARTITION_PATTERN, partition):
        raise Refused("partition", "%r is not a partition name or *" % (partition,))
    with reg.transaction() as conn:
        rows = [r for r in _user_rows(conn, user) if not _expired(r, now)]
    allowed = set(r["node"] for r in rows if r["partition"] in (ANY_PARTITION, partition))
    denied = [n for n in names if n not in allowed]
    return {"allowed": not denied, "nodes": fold_nodes(names),
            "denied": fold_nodes(denied) if denied else "", "denied_count": len(denied)}
