# -*- coding: utf-8 -*-
# Copyright: (c) 2026, gridops.metal developers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Check a network role configuration on the controller; the logic lives in module_utils/_networkd.py."""

from __future__ import absolute_import, division, print_function
__metaclass__ = type

from ansible.errors import AnsibleFilterError

from ansible_collections.gridops.metal.plugins.module_utils import _networkd


def network_config(value, links=None):
    """The network role's bridges, bonds, VLANs and interfaces, checked and rendered as systemd-networkd files."""
    if not isinstance(value, dict):
        raise AnsibleFilterError("network_config: expected a dict, got %s" % type(value).__name__)
    if links is None:
        links = []
    if not isinstance(links, list):
        raise AnsibleFilterError("network_config: links must be the list that `ip -j -d link show` prints")
    try:
        return _networkd.plan(value, links)
    except _networkd.NetworkConfigError as exc:
        raise AnsibleFilterError("network: refused before any change:\n%s" % exc)


class FilterModule(object):
    def filters(self):
        return {"network_config": network_config}
