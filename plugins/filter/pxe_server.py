# -*- coding: utf-8 -*-
# Copyright: (c) 2026, gridops.metal developers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Check a whole PXE server configuration on the controller; the logic lives in module_utils/_pxe.py."""

from __future__ import absolute_import, division, print_function
__metaclass__ = type

from ansible.errors import AnsibleFilterError

from ansible_collections.gridops.metal.plugins.module_utils import _pxe


def pxe_server_config(value):
    """The pxe_server role's configuration, checked and normalised."""
    if not isinstance(value, dict):
        raise AnsibleFilterError("pxe_server_config: expected a dict, got %s" % type(value).__name__)
    try:
        return _pxe.validate_server(value)
    except _pxe.NetbootError as exc:
        raise AnsibleFilterError("pxe_server_config: %s" % exc)


class FilterModule(object):
    def filters(self):
        return {"pxe_server_config": pxe_server_config}
