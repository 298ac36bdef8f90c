# -*- coding: utf-8 -*-
# Copyright: (c) 2026, gridops.metal developers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""expand_hostlist and fold_hostlist: node ranges such as magi[10-50], parsed by ClusterShell."""

from __future__ import absolute_import, division, print_function
__metaclass__ = type

import re
from collections.abc import Iterable, Mapping

from ansible.errors import AnsibleFilterError

try:
    from ClusterShell.NodeSet import NodeSet, NodeSetException, RESOLVER_NOGROUP
except ImportError:
    HAS_CLUSTERSHELL = False
else:
    HAS_CLUSTERSHELL = True

# With group resolution off, ClusterShell keeps '@group', '*' or 'a b' as literal node names.
_HOST_NAME = re.compile(r"[A-Za-z0-9_.:-]+")
_DIGITS = re.compile(r"(\d+)")


def _natural_key(name):
    # re.split with a group alternates text and digits, so tuples compare like with like.
    chunks = _DIGITS.split(name)
    return tuple(int(c) if i % 2 else c for i, c in enumerate(chunks)), name


def _parse(filter_name, text):
    if not text.strip():
        raise AnsibleFilterError("%s: invalid node set %r: it is empty" % (filter_name, text))
    try:
        # Groups off: '@compute' would depend on the controller's /etc/clustershell.
        nodes = NodeSet(text, resolver=RESOLVER_NOGROUP)
    except NodeSetException as exc:
        raise AnsibleFilterError("%s: invalid node set %r: %s" % (filter_name, text, exc))
    for name in nodes:
        if name.startswith("@"):
            reason = "node groups such as %r are not supported, use Ansible inventory groups" % name
        elif not _HOST_NAME.fullmatch(name):
            reason = ("%r is not a host name: use letters, digits, '.', '-', '_', ':', "
                      "and ',' between node sets" % name)
        else:
            continue
        raise AnsibleFilterError("%s: invalid node set %r: %s" % (filter_name, text, reason))
    return nodes


def _nodeset(filter_name, value):
    if not HAS_CLUSTERSHELL:
        raise AnsibleFilterError("%s requires the ClusterShell Python library on the controller: "
                                 "pip install ClusterShell" % filter_name)
    if isinstance(value, str):
        return _parse(filter_name, str(value))
    if isinstance(value, (bytes, Mapping)) or not isinstance(value, Iterable):
        raise AnsibleFilterError("%s: expected a node set string or a list of them, got %r (%s)"
                                 % (filter_name, value, type(value).__name__))
    nodes = NodeSet(resolver=RESOLVER_NOGROUP)
    for item in value:
        if not isinstance(item, str):
            raise AnsibleFilterError("%s: list item %r (%s) is not a node set string"
                                     % (filter_name, item, type(item).__name__))
        nodes.update(_parse(filter_name, str(item)))
    return nodes


def expand_hostlist(value):
    """'node[1-3]' or ['node[1-2]', 'node3'] -> ['node1', 'node2', 'node3'], in natural order."""
    return sorted(_nodeset("expand_hostlist", value), key=_natural_key)


def fold_hostlist(value):
    """['node1', 'node2', 'node3', 'node5'] -> 'node[1-3,5]'."""
    return str(_nodeset("fold_hostlist", value))


class FilterModule(object):
    def filters(self):
        return {
            "expand_hostlist": expand_hostlist,
            "fold_hostlist": fold_hostlist,
        }
