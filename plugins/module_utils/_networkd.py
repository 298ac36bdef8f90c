# -*- coding: utf-8 -*-
# Copyright: (c) 2026, gridops.metal developers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

"""The network role's model: check bridges, bonds, VLANs and plain interfaces, render systemd-networkd files.

``plan(config, links)`` takes the role's variables (``ethernets``, ``bonds``,
``vlans``, ``bridges``, ``prefix``) and the host's links as ``ip -j -d link
show`` prints them, and returns the files to write under
/etc/systemd/network.  Every problem is collected and reported at once, one
line each, naming the variable, the entry and the field
(``network_bonds[0].interfaces[1]: ...``), before anything is written.

Plain Python (standard library only): the filter plugin and the unit tests use it.
"""

from __future__ import absolute_import, division, print_function
__metaclass__ = type

import ipaddress
import re

KINDS = ("ethernets", "bonds", "vlans", "bridges")
BOND_MODES = ("active-backup", "802.3ad", "balance-rr", "balance-xor", "balance-tlb", "balance-alb", "broadcast")
HASH_POLICIES = ("layer2", "layer2+3", "layer3+4", "encap2+3", "encap3+4")
DEFAULT_PREFIX = "10-gridops-"

_NAME = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]{0,14}$")
_MAC = re.compile(r"^[0-9a-f]{2}(:[0-9a-f]{2}){5}$")
_PREFIX = re.compile(r"^[0-9]{2}-[A-Za-z0-9_.-]*$")

_FIELDS = {
    "ethernets": ("name", "addresses", "dhcp", "gateway", "mtu"),
    "bonds": ("name", "interfaces", "mode", "primary", "miimon", "lacp_rate", "xmit_hash_policy", "mac_address",
              "addresses", "dhcp", "gateway", "mtu"),
    "vlans": ("name", "link", "id", "addresses", "dhcp", "gateway", "mtu"),
    "bridges": ("name", "interfaces", "stp", "vlan_filtering", "vlans", "pvid", "mac_address",
                "addresses", "dhcp", "gateway", "mtu"),
}


class NetworkConfigError(Exception):
    """The configuration is refused; the message lists every problem, one a line."""


class _Problems(list):
    def add(self, where, message):
        self.append("%s: %s" % (where, message))


def _where(kind, index, field=None, sub=None):
    text = "network_%s[%d]" % (kind, index)
    if field:
        text += "." + field
    if sub is not None:
        text += "[%d]" % sub
    return text


def _bool(value, where, problems, default=False):
    if value is None:
        return default
    if isinstance(value, bool):
        return value
    problems.add(where, "must be true or false, not %r" % (value,))
    return default


def _int(value, where, problems, low, high, default=None):
    if value is None or value == "":
        return default
    if isinstance(value, bool):
        problems.add(where, "must be a number, not %r" % (value,))
        return default
    try:
        number = int(value)
    except (TypeError, ValueError):
        problems.add(where, "must be a number, not %r" % (value,))
        return default
    if not low <= number <= high:
        problems.add(where, "%d is out of range (%d-%d)" % (number, low, high))
        return default
    return number


def _mac(value, where, problems):
    if value in (None, ""):
        return ""
    mac = str(value).strip().lower().replace("-", ":")
    if not _MAC.match(mac):
        problems.add(where, "%r is not a MAC address" % (value,))
        return ""
    return mac


def _name_list(value, where, problems):
    if value is None:
        return []
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        problems.add(where, "must be a list of interface names")
        return []
    return value


def parse_vlan_ranges(values, where, problems):
    """VLAN ids and ranges ("100-199") as sorted (low, high, index) tuples; overlaps refused."""
    ranges = []
    if not isinstance(values, list):
        problems.add(where, "must be a list of VLAN ids or ranges such as 100-199")
        return ranges
    for sub, item in enumerate(values):
        text = str(item).strip()
        match = re.match(r"^([0-9]+)(?:-([0-9]+))?$", text)
        if isinstance(item, bool) or not match:
            problems.add("%s[%d]" % (where, sub), "%r is not a VLAN id or range (100 or 100-199)" % (item,))
            continue
        low, high = int(match.group(1)), int(match.group(2) or match.group(1))
        if not 1 <= low <= high <= 4094:
            problems.add("%s[%d]" % (where, sub), "%s is not within 1-4094 (low-high)" % text)
            continue
        ranges.append((low, high, sub))
    ordered = sorted(ranges)
    for prev, cur in zip(ordered, ordered[1:]):
        if cur[0] <= prev[1]:
            problems.add("%s[%d]" % (where, cur[2]), "VLANs %s overlap %s[%d] (%s)"
                         % (_vlan_text(cur), where, prev[2], _vlan_text(prev)))
    return ordered


def _vlan_text(rng):
    return str(rng[0]) if rng[0] == rng[1] else "%d-%d" % (rng[0], rng[1])


def _l3(entry, kind, index, problems):
    """addresses, dhcp, gateway and mtu of an entry, checked."""
    out = {"addresses": [], "dhcp": _bool(entry.get("dhcp"), _where(kind, index, "dhcp"), problems),
           "gateway": "", "mtu": _int(entry.get("mtu"), _where(kind, index, "mtu"), problems, 68, 65535)}
    addresses = entry.get("addresses") or []
    if not isinstance(addresses, list):
        problems.add(_where(kind, index, "addresses"), "must be a list of addresses with their prefix (192.0.2.5/24)")
        addresses = []
    networks = []
    for sub, text in enumerate(addresses):
        where = _where(kind, index, "addresses", sub)
        if "/" not in str(text):
            problems.add(where, "%r has no prefix length (192.0.2.5/24)" % (text,))
            continue
        try:
            iface = ipaddress.ip_interface(str(text))
        except ValueError:
            problems.add(where, "%r is not an IP address with its prefix" % (text,))
            continue
        out["addresses"].append(str(iface))
        networks.append(iface.network)
    gateway = entry.get("gateway")
    if gateway not in (None, ""):
        where = _where(kind, index, "gateway")
        try:
            gw = ipaddress.ip_address(str(gateway))
        except ValueError:
            problems.add(where, "%r is not an IP address" % (gateway,))
        else:
            out["gateway"] = str(gw)
            if not out["dhcp"] and networks and not any(gw in net for net in networks if net.version == gw.version):
                problems.add(where, "%s is in none of the interface's subnets (%s)"
                             % (gw, ", ".join(str(n) for n in networks)))
            elif not out["dhcp"] and not networks:
                problems.add(where, "a gateway needs an address (addresses) or dhcp")
    return out


def _entries(config, kind, problems):
    value = config.get(kind) or []
    if not isinstance(value, list):
        problems.add("network_%s" % kind, "must be a list")
        return []
    entries = []
    for index, entry in enumerate(value):
        if not isinstance(entry, dict):
            problems.add(_where(kind, index), "must be a dict")
            continue
        unknown = sorted(set(entry) - set(_FIELDS[kind]))
        if unknown:
            problems.add(_where(kind, index), "unknown field(s) %s (known: %s)"
                         % (", ".join(unknown), ", ".join(_FIELDS[kind])))
        entries.append((index, entry))
    return entries


def _host_links(links):
    """name -> {kind, mac} from `ip -j -d link show` output."""
    hosts = {}
    for link in links or []:
        name = link.get("ifname")
        if not name:
            continue
        kind = (link.get("linkinfo") or {}).get("info_kind") or ""
        mac = link.get("permaddr") or link.get("address") or ""
        hosts[name] = {"kind": kind, "mac": mac.lower(), "type": link.get("link_type", "")}
    return hosts


def plan(config, links):
    """Check the configuration against the host's links; return files and facts, or raise NetworkConfigError."""
    problems = _Problems()
    prefix = config.get("prefix") or DEFAULT_PREFIX
    if not isinstance(prefix, str) or not _PREFIX.match(prefix):
        problems.add("network_file_prefix", "%r must be two digits, a dash and a name (10-gridops-)" % (prefix,))
        prefix = DEFAULT_PREFIX
    host = _host_links(links)
    defs = {}          # name -> (kind, index, normalised entry)
    order = []

    def define(kind, index, name, entry):
        where = _where(kind, index, "name")
        if not isinstance(name, str) or not _NAME.match(name):
            problems.add(where, "%r is not an interface name (1-15 characters: letters, digits, _ . -)" % (name,))
            return False
        if name in defs:
            other = defs[name]
            problems.add(where, "%s is also %s" % (name, _where(other[0], other[1])))
            return False
        defs[name] = (kind, index, entry)
        order.append(name)
        return True

    wanted_kind = {"bonds": "bond", "vlans": "vlan", "bridges": "bridge"}
    normalised = dict((kind, []) for kind in KINDS)
    for kind in KINDS:
        for index, entry in _entries(config, kind, problems):
            item = {"index": index}
            item.update(_l3(entry, kind, index, problems))
            if kind == "vlans":
                item["link"] = entry.get("link")
                item["id"] = _int(entry.get("id"), _where(kind, index, "id"), problems, 1, 4094)
                if entry.get("id") is None:
                    problems.add(_where(kind, index, "id"), "is required (1-4094)")
                if not isinstance(item["link"], str) or not item["link"]:
                    problems.add(_where(kind, index, "link"), "is required: the interface that carries the VLAN")
                    item["link"] = None
                name = entry.get("name") or ("%s.%s" % (item["link"], item["id"]) if item["link"] else None)
            else:
                name = entry.get("name")
                if not name:
                    problems.add(_where(kind, index, "name"), "is required")
                    continue
            item["name"] = name
            if not define(kind, index, name, item):
                continue
            existing = host.get(name)
            if kind == "ethernets":
                if existing is None:
                    problems.add(_where(kind, index, "name"), "%s does not exist on this host" % name)
                elif existing["kind"] in ("bond", "bridge", "vlan"):
                    problems.add(_where(kind, index, "name"), "%s is a %s, not a plain interface" % (name, existing["kind"]))
            elif existing is not None and existing["kind"] != wanted_kind[kind]:
                problems.add(_where(kind, index, "name"), "%s already exists on this host as a %s interface, not a %s"
                             % (name, existing["kind"] or "plain", wanted_kind[kind]))
            if kind == "bonds":
                item["interfaces"] = _name_list(entry.get("interfaces"), _where(kind, index, "interfaces"), problems)
                if not item["interfaces"] and isinstance(entry.get("interfaces"), list):
                    problems.add(_where(kind, index, "interfaces"), "a bond needs at least one interface")
                item["mode"] = entry.get("mode") or "active-backup"
                if item["mode"] not in BOND_MODES:
                    problems.add(_where(kind, index, "mode"), "%r is not one of %s" % (item["mode"], ", ".join(BOND_MODES)))
                item["primary"] = entry.get("primary") or ""
                if item["primary"]:
                    if item["mode"] != "active-backup":
                        problems.add(_where(kind, index, "primary"), "only an active-backup bond has a primary")
                    elif item["primary"] not in item["interfaces"]:
                        problems.add(_where(kind, index, "primary"), "%s is not one of the bond's interfaces"
                                     % item["primary"])
                item["miimon"] = _int(entry.get("miimon"), _where(kind, index, "miimon"), problems, 0, 60000, 100)
                item["lacp_rate"] = entry.get("lacp_rate") or ""
                if item["lacp_rate"] and (item["mode"] != "802.3ad" or item["lacp_rate"] not in ("fast", "slow")):
                    problems.add(_where(kind, index, "lacp_rate"), "fast or slow, for an 802.3ad bond only")
                item["xmit_hash_policy"] = entry.get("xmit_hash_policy") or ""
                if item["xmit_hash_policy"]:
                    if item["xmit_hash_policy"] not in HASH_POLICIES:
                        problems.add(_where(kind, index, "xmit_hash_policy"), "%r is not one of %s"
                                     % (item["xmit_hash_policy"], ", ".join(HASH_POLICIES)))
                    elif item["mode"] not in ("802.3ad", "balance-xor", "balance-tlb"):
                        problems.add(_where(kind, index, "xmit_hash_policy"),
                                     "applies to 802.3ad, balance-xor and balance-tlb bonds only")
                item["mac_address"] = _mac(entry.get("mac_address"), _where(kind, index, "mac_address"), problems)
            if kind == "bridges":
                item["interfaces"] = _name_list(entry.get("interfaces"), _where(kind, index, "interfaces"), problems)
                item["stp"] = _bool(entry.get("stp"), _where(kind, index, "stp"), problems)
                item["vlan_filtering"] = _bool(entry.get("vlan_filtering"), _where(kind, index, "vlan_filtering"),
                                               problems)
                item["vlans"] = parse_vlan_ranges(entry.get("vlans") or [], _where(kind, index, "vlans"), problems)
                item["pvid"] = _int(entry.get("pvid"), _where(kind, index, "pvid"), problems, 1, 4094, 1)
                if not item["vlan_filtering"]:
                    for field in ("vlans", "pvid"):
                        if entry.get(field) not in (None, [], ""):
                            problems.add(_where(kind, index, field), "needs vlan_filtering: true")
                item["mac_address"] = _mac(entry.get("mac_address"), _where(kind, index, "mac_address"), problems)
            normalised[kind].append(item)

    # Who uses which interface: each may be a bond member or a bridge port once.
    owner = {}

    def claim(name, by, where):
        if name in owner:
            problems.add(where, "%s is already used by %s" % (name, owner[name]))
            return False
        owner[name] = by
        return True

    def exists(name):
        return name in host or name in defs

    for bond in normalised["bonds"]:
        for sub, member in enumerate(bond["interfaces"]):
            where = _where("bonds", bond["index"], "interfaces", sub)
            if member in defs:
                problems.add(where, "%s is %s: a bond takes physical interfaces only"
                             % (member, _where(defs[member][0], defs[member][1])))
            elif member not in host:
                problems.add(where, "%s does not exist on this host" % member)
            elif host[member]["kind"] in ("bond", "bridge", "vlan"):
                problems.add(where, "%s is a %s: a bond takes physical interfaces only" % (member, host[member]["kind"]))
            else:
                claim(member, _where("bonds", bond["index"]), where)
    for bridge in normalised["bridges"]:
        for sub, port in enumerate(bridge["interfaces"]):
            where = _where("bridges", bridge["index"], "interfaces", sub)
            if not exists(port):
                problems.add(where, "%s does not exist on this host and is not defined here" % port)
                continue
            if defs.get(port, ("",))[0] == "bridges" or (port not in defs and host[port]["kind"] == "bridge"):
                problems.add(where, "%s is a bridge: bridges do not nest" % port)
                continue
            if defs.get(port, ("",))[0] == "ethernets":
                problems.add(where, "%s is %s: a bridge port carries no address of its own; give the address to the bridge"
                             % (port, _where("ethernets", defs[port][1])))
                continue
            if port in defs and (defs[port][2]["addresses"] or defs[port][2]["dhcp"]):
                problems.add(where, "%s (%s) has an address: a bridge port has none; give it to the bridge"
                             % (port, _where(defs[port][0], defs[port][1])))
                continue
            claim(port, _where("bridges", bridge["index"]), where)
    for eth in normalised["ethernets"]:
        if eth["name"] in owner:
            problems.add(_where("ethernets", eth["index"], "name"), "%s is used by %s and has no address of its own"
                         % (eth["name"], owner[eth["name"]]))

    # VLANs: one id once per link, links that exist and may carry them.
    seen = {}
    bridges_by_name = dict((b["name"], b) for b in normalised["bridges"])
    for vlan in normalised["vlans"]:
        link, vid = vlan["link"], vlan["id"]
        where = _where("vlans", vlan["index"], "link")
        if link is None or vid is None:
            continue
        if not exists(link):
            problems.add(where, "%s does not exist on this host and is not defined here" % link)
            continue
        if defs.get(link, ("",))[0] == "vlans" or (link not in defs and host[link]["kind"] == "vlan"):
            problems.add(where, "%s is a VLAN interface: VLANs in VLANs (QinQ) are not supported" % link)
            continue
        if link in owner:
            problems.add(where, "%s is used by %s: put the VLAN on that one" % (link, owner[link]))
            continue
        key = (link, vid)
        if key in seen:
            problems.add(_where("vlans", vlan["index"], "id"), "VLAN %d on %s is also %s"
                         % (vid, link, _where("vlans", seen[key])))
            continue
        seen[key] = vlan["index"]
        bridge = bridges_by_name.get(link)
        if bridge and bridge["vlan_filtering"] and not any(lo <= vid <= hi for lo, hi, _s in bridge["vlans"]):
            problems.add(_where("vlans", vlan["index"], "id"), "VLAN %d is not among %s.vlans of the VLAN-aware bridge %s"
                         % (vid, _where("bridges", bridge["index"]), link))

    if problems:
        raise NetworkConfigError("\n".join(problems))
    return _render(normalised, host, prefix, owner)


# --------------------------------------------------------------------------
# Rendering


def _section(name, pairs):
    lines = ["[%s]" % name]
    lines += ["%s=%s" % (k, v) for k, v in pairs if v not in (None, "")]
    return "\n".join(lines) + "\n"


def _network_file(name, l3=None, extra=None, vlans=(), bridge_vlans=(), link_pairs=()):
    """A .network file for one link."""
    network = []
    has_l3 = bool(l3 and (l3["addresses"] or l3["dhcp"]))
    if l3 and l3["dhcp"]:
        network.append(("DHCP", "ipv4"))
    for address in (l3 or {}).get("addresses", []):
        network.append(("Address", address))
    if l3 and l3["gateway"]:
        network.append(("Gateway", l3["gateway"]))
    network += list(extra or [])
    network += [("VLAN", v) for v in vlans]
    if not has_l3:
        network.append(("LinkLocalAddressing", "no"))
    parts = [_section("Match", [("Name", name)])]
    link = list(link_pairs)
    if l3 and l3["mtu"]:
        link.append(("MTUBytes", l3["mtu"]))
    if not has_l3:
        # A port or a VLAN carrier has no address to wait for at boot.
        link.append(("RequiredForOnline", "no"))
    if link:
        parts.append(_section("Link", link))
    parts.append(_section("Network", network))
    if l3 and l3["dhcp"]:
        # The MAC, not a DUID per interface name: an address moved onto a bridge keeps its lease.
        parts.append(_section("DHCPv4", [("ClientIdentifier", "mac")]))
    for rng in bridge_vlans:
        parts.append(_section("BridgeVLAN", [("VLAN", _vlan_text(rng))]))
    return "\n".join(parts)


def _header(what):
    return "# Managed by gridops.metal.network: %s. Local changes are overwritten.\n\n" % what


def _render(cfg, host, prefix, owner):
    files = {}
    bonds = dict((b["name"], b) for b in cfg["bonds"])
    bridges = dict((b["name"], b) for b in cfg["bridges"])
    vlans_on = {}
    for vlan in cfg["vlans"]:
        vlans_on.setdefault(vlan["link"], []).append(vlan)

    def inherited_mac(name):
        if name in bonds:
            members = bonds[name]["interfaces"]
            return bonds[name]["mac_address"] or (inherited_mac(members[0]) if members else "")
        return host.get(name, {}).get("mac", "") if name in host and host[name]["kind"] == "" else ""

    def port_extra(name):
        """[Network] pairs and BridgeVLAN ranges for a link that is a port or a member."""
        for bond in cfg["bonds"]:
            if name in bond["interfaces"]:
                extra = [("Bond", bond["name"])]
                if bond["primary"] == name:
                    extra.append(("PrimarySlave", "yes"))
                return extra, ()
        for bridge in cfg["bridges"]:
            if name in bridge["interfaces"]:
                return [("Bridge", bridge["name"])], (bridge["vlans"] if bridge["vlan_filtering"] else ())
        return [], ()

    def vlan_names(link):
        return [v["name"] for v in vlans_on.get(link, [])]

    for bond in cfg["bonds"]:
        mac = bond["mac_address"] or inherited_mac(bond["name"])
        bond_pairs = [("Mode", bond["mode"]), ("MIIMonitorSec", "%dms" % bond["miimon"])]
        if bond["lacp_rate"]:
            bond_pairs.append(("LACPTransmitRate", bond["lacp_rate"]))
        if bond["xmit_hash_policy"]:
            bond_pairs.append(("TransmitHashPolicy", bond["xmit_hash_policy"]))
        files[prefix + bond["name"] + ".netdev"] = _header("bond %s" % bond["name"]) + "\n".join([
            _section("NetDev", [("Name", bond["name"]), ("Kind", "bond"), ("MACAddress", mac)]),
            _section("Bond", bond_pairs)])
        extra, bvlans = port_extra(bond["name"])
        files[prefix + bond["name"] + ".network"] = _header("bond %s" % bond["name"]) + _network_file(
            bond["name"], None if extra else bond, extra, vlan_names(bond["name"]), bvlans)
        for member in bond["interfaces"]:
            extra, _bv = port_extra(member)
            files[prefix + member + ".network"] = _header("member of bond %s" % bond["name"]) + _network_file(
                member, None, extra)

    for bridge in cfg["bridges"]:
        mac = bridge["mac_address"] or (inherited_mac(bridge["interfaces"][0]) if bridge["interfaces"] else "")
        pairs = [("STP", "yes" if bridge["stp"] else "no")]
        if bridge["vlan_filtering"]:
            pairs += [("VLANFiltering", "yes"), ("DefaultPVID", bridge["pvid"])]
        files[prefix + bridge["name"] + ".netdev"] = _header("bridge %s" % bridge["name"]) + "\n".join([
            _section("NetDev", [("Name", bridge["name"]), ("Kind", "bridge"), ("MACAddress", mac)]),
            _section("Bridge", pairs)])
        self_vlans = ()
        if bridge["vlan_filtering"]:
            # The bridge itself must be a member of the VLANs its VLAN interfaces use.
            self_vlans = [(v["id"], v["id"], 0) for v in vlans_on.get(bridge["name"], [])]
        files[prefix + bridge["name"] + ".network"] = _header("bridge %s" % bridge["name"]) + _network_file(
            bridge["name"], bridge, [("ConfigureWithoutCarrier", "yes")], vlan_names(bridge["name"]), self_vlans)
        for port in bridge["interfaces"]:
            if port in bonds or port in [v["name"] for v in cfg["vlans"]]:
                continue   # its own file says Bridge=
            extra, bvlans = port_extra(port)
            files[prefix + port + ".network"] = _header("port of bridge %s" % bridge["name"]) + _network_file(
                port, None, extra, vlan_names(port), bvlans)

    for vlan in cfg["vlans"]:
        files[prefix + vlan["name"] + ".netdev"] = _header("VLAN %d on %s" % (vlan["id"], vlan["link"])) + "\n".join([
            _section("NetDev", [("Name", vlan["name"]), ("Kind", "vlan")]),
            _section("VLAN", [("Id", vlan["id"])])])
        extra, bvlans = port_extra(vlan["name"])
        files[prefix + vlan["name"] + ".network"] = _header("VLAN %d on %s" % (vlan["id"], vlan["link"])) + \
            _network_file(vlan["name"], None if extra else vlan, extra, (), bvlans)

    for eth in cfg["ethernets"]:
        files[prefix + eth["name"] + ".network"] = _header("interface %s" % eth["name"]) + _network_file(
            eth["name"], eth, None, vlan_names(eth["name"]))

    # A host interface that carries VLANs and is configured nowhere else.
    configured = set(b["name"] for b in cfg["bonds"]) | set(b["name"] for b in cfg["bridges"]) | \
        set(e["name"] for e in cfg["ethernets"]) | set(owner)
    for link in sorted(vlans_on):
        if link not in configured:
            files[prefix + link + ".network"] = _header("carrier of VLANs %s" % ", ".join(vlan_names(link))) + \
                _network_file(link, None, None, vlan_names(link))

    netdevs = [b["name"] for b in cfg["bonds"]] + [b["name"] for b in cfg["bridges"]] + [v["name"] for v in cfg["vlans"]]
    return {
        "files": files,
        "netdevs": netdevs,
        "links": sorted(set(netdevs) | configured | set(vlans_on)),
        "prefix": prefix,
    }
