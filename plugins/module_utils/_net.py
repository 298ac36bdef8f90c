# -*- coding: utf-8 -*-
# Copyright: (c) 2026, gridops.metal developers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""MAC and IPv4 helpers for PXE, shared by the gridops.metal filters and modules (netboot).

Standard library only: module_utils also run on managed hosts.
Every function raises ValueError with a message naming the bad value.
"""

from __future__ import absolute_import, division, print_function
__metaclass__ = type

import ipaddress
import re

_MAC_FORMS = (
    re.compile(r"[0-9a-f]{2}(:[0-9a-f]{2}){5}"),
    re.compile(r"[0-9a-f]{2}(-[0-9a-f]{2}){5}"),
    re.compile(r"[0-9a-f]{4}(\.[0-9a-f]{4}){2}"),
    re.compile(r"[0-9a-f]{12}"),
)
_MAC_FORMS_HELP = "expected 6 hex octets as aa:bb:cc:dd:ee:ff, aa-bb-cc-dd-ee-ff, aabb.ccdd.eeff or aabbccddeeff"


def _text(value, what):
    if not isinstance(value, str):
        raise ValueError("invalid %s %r: expected a string, got %s" % (what, value, type(value).__name__))
    # str() drops str subclasses (Ansible's tagged strings) so that %r shows plain quotes.
    return str(value)


def normalize_mac(value):
    """Return the MAC address `value` in lower-case colon form: 'aa:bb:cc:dd:ee:ff'."""
    text = _text(value, "MAC address")
    mac = text.strip().lower()
    if not any(form.fullmatch(mac) for form in _MAC_FORMS):
        raise ValueError("invalid MAC address %r: %s" % (text, _MAC_FORMS_HELP))
    digits = re.sub(r"[^0-9a-f]", "", mac)
    return ":".join(digits[i:i + 2] for i in range(0, 12, 2))


def ipv4_hex(value):
    """Return the IPv4 address `value` as 8 upper-case hex digits: '192.168.0.1' -> 'C0A80001'."""
    text = _text(value, "IPv4 address")
    stripped = text.strip()
    try:
        address = ipaddress.IPv4Address(stripped)
    except ValueError as exc:
        reason = str(exc)
        # ipaddress repeats the address at the end of its messages; we already name it.
        suffix = " in %r" % stripped
        if reason.endswith(suffix):
            reason = reason[:-len(suffix)]
        raise ValueError("invalid IPv4 address %r: %s" % (text, reason))
    return "%08X" % int(address)


def pxelinux_mac_name(mac):
    """Return the pxelinux.cfg file name for `mac`: '01-aa-bb-cc-dd-ee-ff'."""
    # 01 is the ARP hardware type of Ethernet, which pxelinux puts first.
    return "01-" + normalize_mac(mac).replace(":", "-")


def pxelinux_ip_names(ip):
    """Return the pxelinux.cfg file names tried for `ip`, most specific first.

    '192.168.0.1' -> ['C0A80001', 'C0A8000', 'C0A800', 'C0A80', 'C0A8', 'C0A', 'C0', 'C']
    """
    name = ipv4_hex(ip)
    return [name[:length] for length in range(len(name), 0, -1)]
