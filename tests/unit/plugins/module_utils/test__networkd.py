# -*- coding: utf-8 -*-
# Copyright: (c) 2026, gridops.metal developers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The network role's model: refusals naming the field, and the systemd-networkd files it renders."""

from __future__ import absolute_import, division, print_function
__metaclass__ = type

import os

import pytest
import yaml

from ansible_collections.gridops.metal.plugins.module_utils import _networkd as nd

with open(os.path.join(os.path.dirname(__file__), "test__networkd.yaml")) as _fh:
    CASES = yaml.safe_load(_fh)


def _link(name, mac, kind=None):
    link = {"ifname": name, "address": mac, "link_type": "ether"}
    if kind:
        link["linkinfo"] = {"info_kind": kind}
    return link


LINKS = [{"ifname": "lo", "address": "00:00:00:00:00:00", "link_type": "loopback"}] + \
    [_link("eth%d" % i, "52:54:00:00:00:0%d" % i) for i in range(6)] + [_link("oldbond", "52:54:00:00:01:00", "bond")]


@pytest.mark.parametrize("case", CASES, ids=[c["name"] for c in CASES])
def test_refusals_name_the_field(case):
    with pytest.raises(nd.NetworkConfigError) as info:
        nd.plan(case["config"], LINKS)
    assert sorted(str(info.value).splitlines()) == sorted(case["problems"])


def _sections(text):
    """[(section, [(key, value)])] of a systemd unit-style file, comments skipped."""
    out = []
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        if line.startswith("["):
            out.append((line[1:-1], []))
        else:
            key, _sep, value = line.partition("=")
            out[-1][1].append((key, value))
    return out


def _get(text, section, key):
    return [v for s, pairs in _sections(text) if s == section for k, v in pairs if k == key]


def test_bond_vlan_and_bridges_render():
    res = nd.plan({
        "bonds": [{"name": "bond0", "interfaces": ["eth1", "eth2"], "mode": "802.3ad", "lacp_rate": "fast",
                   "xmit_hash_policy": "layer3+4"}],
        "vlans": [{"link": "bond0", "id": 10, "addresses": ["192.168.10.1/24"], "gateway": "192.168.10.254"},
                  {"link": "br1", "id": 20, "addresses": ["192.168.20.1/24"]}],
        "bridges": [{"name": "br0", "interfaces": ["eth0"], "dhcp": True},
                    {"name": "br1", "interfaces": ["eth4"], "vlan_filtering": True, "vlans": [20, "30-40"], "pvid": 5}],
    }, LINKS)
    files = res["files"]
    assert sorted(files) == sorted("10-gridops-" + n for n in [
        "bond0.netdev", "bond0.network", "eth1.network", "eth2.network", "bond0.10.netdev", "bond0.10.network",
        "br1.20.netdev", "br1.20.network", "br0.netdev", "br0.network", "eth0.network",
        "br1.netdev", "br1.network", "eth4.network"])
    bond = files["10-gridops-bond0.netdev"]
    assert _get(bond, "Bond", "Mode") == ["802.3ad"] and _get(bond, "Bond", "LACPTransmitRate") == ["fast"]
    assert _get(bond, "Bond", "TransmitHashPolicy") == ["layer3+4"]
    assert _get(bond, "NetDev", "MACAddress") == ["52:54:00:00:00:01"]   # its first member's
    assert _get(files["10-gridops-bond0.network"], "Network", "VLAN") == ["bond0.10"]
    assert _get(files["10-gridops-eth2.network"], "Network", "Bond") == ["bond0"]
    vlan = files["10-gridops-bond0.10.network"]
    assert _get(vlan, "Network", "Address") == ["192.168.10.1/24"]
    assert _get(vlan, "Network", "Gateway") == ["192.168.10.254"]
    assert _get(files["10-gridops-bond0.10.netdev"], "VLAN", "Id") == ["10"]
    # The bridge that takes over eth0 keeps eth0's MAC and asks DHCP by MAC: the same lease.
    assert _get(files["10-gridops-br0.netdev"], "NetDev", "MACAddress") == ["52:54:00:00:00:00"]
    assert _get(files["10-gridops-br0.network"], "Network", "DHCP") == ["ipv4"]
    assert _get(files["10-gridops-br0.network"], "DHCPv4", "ClientIdentifier") == ["mac"]
    assert _get(files["10-gridops-eth0.network"], "Network", "Bridge") == ["br0"]
    assert _get(files["10-gridops-eth0.network"], "Network", "DHCP") == []
    # VLAN-aware bridge: the port carries the VLANs, the bridge itself those of its VLAN interfaces.
    assert _get(files["10-gridops-br1.netdev"], "Bridge", "VLANFiltering") == ["yes"]
    assert _get(files["10-gridops-br1.netdev"], "Bridge", "DefaultPVID") == ["5"]
    assert _get(files["10-gridops-eth4.network"], "BridgeVLAN", "VLAN") == ["20", "30-40"]
    assert _get(files["10-gridops-br1.network"], "BridgeVLAN", "VLAN") == ["20"]
    assert res["netdevs"] == ["bond0", "br0", "br1", "bond0.10", "br1.20"]


def test_vlan_on_an_unconfigured_interface_gets_a_carrier_file():
    res = nd.plan({"vlans": [{"link": "eth5", "id": 7, "dhcp": True}], "prefix": "20-site-"}, LINKS)
    carrier = res["files"]["20-site-eth5.network"]
    assert _get(carrier, "Network", "VLAN") == ["eth5.7"]
    assert _get(carrier, "Network", "LinkLocalAddressing") == ["no"]
    assert res["links"] == ["eth5", "eth5.7"]


def test_existing_devices_of_the_same_kind_are_fine_and_empty_is_nothing():
    assert nd.plan({"bonds": [{"name": "oldbond", "interfaces": ["eth3"]}]}, LINKS)["netdevs"] == ["oldbond"]
    assert nd.plan({}, LINKS)["files"] == {}


def test_bad_prefix_is_refused():
    with pytest.raises(nd.NetworkConfigError, match="network_file_prefix"):
        nd.plan({"prefix": "gridops"}, LINKS)
