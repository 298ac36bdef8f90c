# -*- coding: utf-8 -*-
# Copyright: (c) 2026, gridops.metal developers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""PXE naming filters; the logic lives in module_utils/_net.py, shared with the netboot module."""

from __future__ import absolute_import, division, print_function
__metaclass__ = type

from ansible.errors import AnsibleFilterError

from ansible_collections.gridops.metal.plugins.module_utils import _net


def _call(filter_name, func, value):
    try:
        return func(value)
    except ValueError as exc:
        raise AnsibleFilterError("%s: %s" % (filter_name, exc))


def pxe_mac_filename(value):
    """'AA-BB-CC-DD-EE-FF' -> '01-aa-bb-cc-dd-ee-ff' (pxelinux.cfg/ file name)."""
    return _call("pxe_mac_filename", _net.pxelinux_mac_name, value)


def ipv4_hex(value):
    """'192.168.0.1' -> 'C0A80001'."""
    return _call("ipv4_hex", _net.ipv4_hex, value)


def normalize_mac(value):
    """'AABB.CCDD.EEFF' -> 'aa:bb:cc:dd:ee:ff'."""
    return _call("normalize_mac", _net.normalize_mac, value)


class FilterModule(object):
    def filters(self):
        return {
            "pxe_mac_filename": pxe_mac_filename,
            "ipv4_hex": ipv4_hex,
            "normalize_mac": normalize_mac,
        }
