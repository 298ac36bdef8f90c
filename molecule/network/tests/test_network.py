"""The network role in a real guest: bond, VLANs and bridges really up and carrying traffic, refusals, rollback."""
import json
import re

import pytest

from gridops_test.molecule import run_playbook

MGMT = "10.0.2.15"


def addresses(host, name):
    out = json.loads(host.check_output("ip -j addr show dev %s" % name))
    return [a["local"] for a in out[0]["addr_info"] if a["family"] == "inet"]


def master(host, name):
    return json.loads(host.check_output("ip -j link show dev %s" % name))[0].get("master")


def test_management_address_moved_onto_the_bridge(host):
    assert master(host, "eth0") == "br0"
    assert addresses(host, "br0") == [MGMT] and addresses(host, "eth0") == []
    assert host.file("/etc/systemd/network/10-gridops-br0.netdev").contains("MACAddress=52:54:00:4d:00:00")


def test_bond_and_vlan_interfaces_are_up(host):
    bonding = host.file("/proc/net/bonding/bond0").content_string
    assert "Bonding Mode: fault-tolerance (active-backup)" in bonding
    assert "Currently Active Slave: eth1" in bonding
    assert len(re.findall(r"Slave Interface: eth[12]\nMII Status: up", bonding)) == 2
    for name in ("bond0", "bond0.10", "br1", "br1.20"):
        link = json.loads(host.check_output("ip -j -d link show dev %s" % name))[0]
        assert link["operstate"] == "UP", link
    assert json.loads(host.check_output("ip -j -d link show dev bond0.10"))[0]["linkinfo"]["info_data"]["id"] == 10
    assert addresses(host, "bond0.10") == ["192.168.10.1"] and addresses(host, "br1.20") == ["192.168.20.1"]
    vlans = json.loads(host.check_output("bridge -j vlan show"))
    ports = dict((v["ifname"], sorted(x["vlan"] for x in v["vlans"])) for v in vlans)
    assert ports["eth4"] == [1, 20] + list(range(30, 41)) and ports["br1"] == [1, 20]


@pytest.fixture
def peer(host):
    """A namespace holding eth3 (on bond0's hub) and eth5 (on br1's hub), with VLAN interfaces."""
    host.check_output(
        "ip netns add peer && ip link set eth3 netns peer && ip link set eth5 netns peer && "
        "ip -n peer link set lo up && ip -n peer link set eth3 up && ip -n peer link set eth5 up && "
        "ip -n peer link add link eth3 name eth3.10 type vlan id 10 && ip -n peer addr add 192.168.10.2/24 dev eth3.10 && "
        "ip -n peer link add link eth5 name eth5.20 type vlan id 20 && ip -n peer addr add 192.168.20.2/24 dev eth5.20 && "
        "ip -n peer link add link eth5 name eth5.50 type vlan id 50 && ip -n peer addr add 192.168.50.2/24 dev eth5.50 && "
        "ip -n peer link set eth3.10 up && ip -n peer link set eth5.20 up && ip -n peer link set eth5.50 up")
    yield
    host.run("ip link delete br1.50; ip link set eth1 up; ip netns delete peer")


def test_traffic_crosses_the_bond_vlan_and_the_vlan_aware_bridge(host, peer):
    assert host.run("ping -c 2 -W 2 192.168.10.2").rc == 0      # bond0.10 -> hub -> eth3.10
    assert host.run("ping -c 2 -W 2 192.168.20.2").rc == 0      # br1.20 -> br1 -> eth4 tagged 20 -> eth5.20
    # VLAN 50 is not allowed on br1's port: the bridge drops it.
    host.check_output("ip link add link br1 name br1.50 type vlan id 50 && ip addr add 192.168.50.1/24 dev br1.50 && "
                      "ip link set br1.50 up")
    assert host.run("ping -c 2 -W 1 192.168.50.2").rc != 0
    # The bond fails over to eth2 and traffic goes on.
    host.check_output("ip link set eth1 down")
    assert host.run("ping -c 2 -W 2 192.168.10.2").rc == 0
    assert "Currently Active Slave: eth2" in host.file("/proc/net/bonding/bond0").content_string


def test_bad_configurations_are_refused_naming_the_field(host):
    before = host.check_output("ls -l --time-style=full-iso /etc/systemd/network")
    rc, said, output, _seconds = run_playbook("refusals.yml")
    assert rc == 0 and said, output
    assert ("network_bridges[0].interfaces[1]: eth9 does not exist on this host and is not defined here"
            in said["missing_port"])
    assert "network_vlans[1].id: VLAN 10 on bond0 is also network_vlans[0]" in said["overlapping_vlans"]
    assert "network_bonds[1].interfaces[0]: eth2 is already used by network_bonds[0]" in said["bond_member_twice"]
    assert host.check_output("ls -l --time-style=full-iso /etc/systemd/network") == before


def test_a_change_that_cuts_the_management_address_is_rolled_back(host):
    rc, said, output, seconds = run_playbook("bad_change.yml")
    assert rc == 0 and said, output
    assert said["outcome"].startswith("network: the change was rolled-back on network-guest"), said
    assert "not confirmed within 30s" in said["outcome"]
    # The host answers again over its management address, with the previous configuration.
    assert addresses(host, "br0") == [MGMT]
    assert host.file("/etc/systemd/network/10-gridops-br0.network").contains("^DHCP=ipv4")
    print("FIGURES rollback %ss" % seconds)
