# -*- coding: utf-8 -*-
# Copyright: (c) 2026, gridops.metal developers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Engine of the lab's host side: namespaces, links, addresses, supervisor.

Plain Python (stdlib only) so unit tests can drive it without Ansible.  Every
function takes a ``runner(argv) -> (rc, stdout, stderr)`` so a module passes
``module.run_command`` and tests pass a subprocess wrapper.

The lab's network is two namespaces: the *fabric* (the provisioning bridge,
the nodes' taps, the BMC addresses) and the *server* namespace the deploy
server container joins, linked to the bridge by a veth pair.  Nothing is
routed to or from the host.
"""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import errno
import ipaddress
import json
import os
import re
import signal
import time

NETNS_DIR = "/run/netns"
IFNAME_RE = re.compile(r"^[A-Za-z0-9_.-]{1,15}$")


class LabError(Exception):
    """A refused request or a failed operation, with a message for the operator."""


def _check(runner, argv):
    rc, out, err = runner(argv)
    if rc != 0:
        raise LabError("%s failed (rc=%s): %s" % (" ".join(argv), rc, (err or out).strip()))
    return out


def _ns(netns, argv):
    return ["ip", "-n", netns] + argv if netns else ["ip"] + argv


# ---------------------------------------------------------------- validation

def validate_ifname(field, name):
    if not isinstance(name, str) or not IFNAME_RE.match(name):
        raise LabError("%s: %r is not a valid interface name (1-15 characters of A-Z a-z 0-9 _ . -)" % (field, name))


def host_routes(runner):
    """The host's IPv4 routes other than the default route, as networks."""
    out = _check(runner, ["ip", "-j", "-4", "route", "show", "table", "all"])
    nets = []
    for route in json.loads(out or "[]"):
        dst = route.get("dst", "")
        if dst in ("default", "") or route.get("type") in ("broadcast",):
            continue
        try:
            nets.append((ipaddress.ip_network(dst, strict=False), route.get("dev", "?")))
        except ValueError:
            continue
    return nets


def check_subnet_clash(runner, subnet):
    """Refuse a lab subnet that overlaps any route of the host."""
    try:
        net = ipaddress.ip_network(subnet, strict=True)
    except ValueError as exc:
        raise LabError("subnet: %r is not a network address: %s" % (subnet, exc))
    if not net.is_private:
        raise LabError("subnet: %s is not a private range; the lab only uses private addresses" % net)
    for route, dev in host_routes(runner):
        if route.version == net.version and net.overlaps(route):
            raise LabError("subnet: %s clashes with the host's route %s on %s; choose another lab_subnet"
                           % (net, route, dev))
    return str(net)


# ---------------------------------------------------------------- state

def netns_exists(name):
    return os.path.exists(os.path.join(NETNS_DIR, name))


def links(runner, netns):
    """{ifname: link dict} in a namespace (empty if it does not exist)."""
    if netns and not netns_exists(netns):
        return {}
    out = _check(runner, _ns(netns, ["-j", "-d", "addr", "show"]))
    return dict((link["ifname"], link) for link in json.loads(out or "[]"))


def _addrs(link):
    return set("%s/%s" % (a["local"], a["prefixlen"]) for a in link.get("addr_info", [])
               if a.get("scope") != "link")


def _master(link):
    return link.get("master")


# ---------------------------------------------------------------- apply

class Plan:
    """Collects the actions taken, or that would be taken in check mode."""

    def __init__(self, runner, check_mode):
        self.runner = runner
        self.check_mode = check_mode
        self.actions = []

    def do(self, description, *commands):
        self.actions.append(description)
        if not self.check_mode:
            for argv in commands:
                _check(self.runner, argv)


def network_present(runner, spec, check_mode=False):
    """Make the lab's namespaces, bridge, veth, addresses and taps exist.

    spec: fabric_netns, server_netns, bridge, veth_bridge_side, server_ifname,
    server_addresses (list of CIDR), bmc_addresses (list of CIDR), taps (list).
    """
    for field in ("bridge", "veth_bridge_side", "server_ifname"):
        validate_ifname(field, spec[field])
    for tap in spec.get("taps", []):
        validate_ifname("taps", tap)
    plan = Plan(runner, check_mode)
    fab, srv = spec["fabric_netns"], spec["server_netns"]
    for ns in (fab, srv):
        if not netns_exists(ns):
            plan.do("create namespace %s" % ns, ["ip", "netns", "add", ns],
                    _ns(ns, ["link", "set", "lo", "up"]))
    flinks = links(runner, fab) if netns_exists(fab) else {}
    slinks = links(runner, srv) if netns_exists(srv) else {}

    br = spec["bridge"]
    if br not in flinks:
        plan.do("create bridge %s" % br,
                _ns(fab, ["link", "add", br, "type", "bridge", "forward_delay", "0"]))
    if br not in flinks or "UP" not in flinks[br].get("flags", []):
        plan.do("set bridge %s up" % br, _ns(fab, ["link", "set", br, "up"]))

    vb, sif = spec["veth_bridge_side"], spec["server_ifname"]
    if vb not in flinks or sif not in slinks:
        if vb in flinks:
            plan.do("remove half veth %s" % vb, _ns(fab, ["link", "del", vb]))
        if sif in slinks:
            plan.do("remove half veth %s" % sif, _ns(srv, ["link", "del", sif]))
        plan.do("create veth %s <-> %s:%s" % (vb, srv, sif),
                _ns(fab, ["link", "add", vb, "type", "veth", "peer", "name", sif, "netns", srv]),
                _ns(fab, ["link", "set", vb, "master", br, "up"]),
                _ns(srv, ["link", "set", sif, "up"]))
    elif _master(flinks[vb]) != br:
        plan.do("attach %s to %s" % (vb, br), _ns(fab, ["link", "set", vb, "master", br, "up"]))

    have = _addrs(slinks.get(sif, {}))
    for cidr in spec.get("server_addresses", []):
        if cidr not in have:
            extra = ["nodad"] if ":" in cidr else []
            plan.do("address %s on %s" % (cidr, sif), _ns(srv, ["addr", "add", cidr, "dev", sif] + extra))
    have = _addrs(flinks.get(br, {}))
    for cidr in spec.get("bmc_addresses", []):
        if cidr not in have:
            plan.do("BMC address %s on %s" % (cidr, br), _ns(fab, ["addr", "add", cidr, "dev", br]))
    for cidr in sorted(have - set(spec.get("bmc_addresses", []))):
        plan.do("remove stale address %s from %s" % (cidr, br), _ns(fab, ["addr", "del", cidr, "dev", br]))

    wanted = set(spec.get("taps", []))
    for tap in sorted(wanted):
        if tap not in flinks:
            plan.do("create tap %s" % tap,
                    _ns(fab, ["tuntap", "add", "dev", tap, "mode", "tap"]),
                    _ns(fab, ["link", "set", tap, "master", br, "up"]))
        elif _master(flinks[tap]) != br:
            plan.do("attach tap %s to %s" % (tap, br), _ns(fab, ["link", "set", tap, "master", br, "up"]))
    prefix = spec.get("tap_prefix")
    if prefix:
        for name, link in sorted(flinks.items()):
            if name.startswith(prefix) and name not in wanted and link.get("linkinfo", {}).get("info_kind") == "tun":
                plan.do("remove tap %s (node removed)" % name, _ns(fab, ["link", "del", name]))
    return plan.actions


def netns_pids(name):
    """PIDs of every process living in the named network namespace."""
    try:
        target = os.stat(os.path.join(NETNS_DIR, name))
    except OSError:
        return []
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            st = os.stat("/proc/%s/ns/net" % entry)
        except OSError:
            continue
        if (st.st_dev, st.st_ino) == (target.st_dev, target.st_ino):
            found.append(int(entry))
    return found


def kill_pids(pids, timeout=10.0):
    """SIGTERM, wait, SIGKILL; return the PIDs that were signalled."""
    live = []
    for pid in pids:
        try:
            os.kill(pid, signal.SIGTERM)
            live.append(pid)
        except OSError as exc:
            if exc.errno != errno.ESRCH:
                raise
    deadline = time.time() + timeout
    while live and time.time() < deadline:
        live = [pid for pid in live if pid_running(pid)]
        time.sleep(0.1)
    for pid in live:
        try:
            os.kill(pid, signal.SIGKILL)
        except OSError:
            pass
    return pids


def network_absent(runner, spec, check_mode=False):
    """Kill what still runs in the lab's namespaces, then delete them."""
    plan = Plan(runner, check_mode)
    for ns in (spec["server_netns"], spec["fabric_netns"]):
        if not netns_exists(ns):
            continue
        pids = netns_pids(ns)
        if pids:
            plan.actions.append("stop %d process(es) in %s" % (len(pids), ns))
            if not check_mode:
                kill_pids(pids)
        plan.do("delete namespace %s" % ns, ["ip", "netns", "delete", ns])
    return plan.actions


# ---------------------------------------------------------------- processes

def pid_running(pid):
    """True if pid exists and is not a zombie."""
    try:
        with open("/proc/%d/stat" % pid) as fh:
            state = fh.read().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError, ValueError):
        return False
    return state not in ("Z", "X")


def pid_cmdline(pid):
    try:
        with open("/proc/%d/cmdline" % pid, "rb") as fh:
            return [a.decode("utf-8", "replace") for a in fh.read().split(b"\0") if a]
    except OSError:
        return []


def read_pidfile(path, marker):
    """The PID in path if that process runs and its command line contains marker.

    A PID file outlives its process and PIDs are reused: never trust one alone.
    """
    try:
        with open(path) as fh:
            pid = int(fh.read().split()[0])
    except (OSError, ValueError, IndexError):
        return None
    if pid_running(pid) and any(marker in arg for arg in pid_cmdline(pid)):
        return pid
    return None
