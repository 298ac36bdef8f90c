"""Network namespaces, bridges and taps for tests, with per-run unique names.

Every object removes what it made in ``close()``; the pytest fixtures in
tests/conftest.py call it in a ``finally`` so a failing test cleans up too.
Interface names are limited to 15 characters by the kernel, so names are a
short prefix plus the run's suffix.
"""
import os
import secrets
import subprocess

from .procs import netns_argv

_RUN_SUFFIX = None


def run_suffix():
    """A short suffix unique to this test run (shared by all its objects)."""
    global _RUN_SUFFIX
    if _RUN_SUFFIX is None:
        _RUN_SUFFIX = os.environ.get("GRIDOPS_TEST_SUFFIX") or secrets.token_hex(3)
    return _RUN_SUFFIX


def unique_name(prefix, maxlen=15):
    """prefix + run suffix + a per-object counter, within maxlen characters."""
    unique_name.counter += 1
    name = "%s%s%d" % (prefix, run_suffix(), unique_name.counter)
    if len(name) > maxlen:
        raise ValueError("name %r longer than %d characters" % (name, maxlen))
    return name


unique_name.counter = 0


def ip(*args, netns=None, check=True):
    """Run `ip` (inside netns when given); return stdout."""
    res = subprocess.run(netns_argv(netns, ["ip"] + list(args)),
                         capture_output=True, text=True, check=False)
    if check and res.returncode != 0:
        raise RuntimeError("ip %s failed: %s" % (" ".join(args), res.stderr.strip()))
    return res.stdout


class Netns:
    """A network namespace with its loopback up."""

    def __init__(self, name=None):
        self.name = name or unique_name("gt")
        ip("netns", "add", self.name)
        try:
            ip("link", "set", "lo", "up", netns=self.name)
        except Exception:
            self.close()
            raise

    @property
    def path(self):
        return "/run/netns/%s" % self.name

    def argv(self, argv):
        """argv that runs inside this namespace."""
        return netns_argv(self.name, argv)

    def run(self, argv, check=True, **kwargs):
        kwargs.setdefault("capture_output", True)
        kwargs.setdefault("text", True)
        return subprocess.run(self.argv(argv), check=check, **kwargs)

    def pids(self):
        """PIDs of processes whose network namespace is this one."""
        from ansible_collections.gridops.metal.plugins.module_utils._lab import netns_pids

        return netns_pids(self.name)

    def close(self):
        ip("netns", "delete", self.name, check=False)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


class Bridge:
    """A Linux bridge inside a namespace, with IPv4 and IPv6 addresses.

    The IPv6 address matters: QEMU's iPXE waits ~13 s for a router
    advertisement after DHCP.  dnsmasq answers it immediately when given
    :meth:`dnsmasq_ra_options` (``enable-ra`` and an ``ra-only`` range).
    """

    def __init__(self, netns, name=None, ipv4="10.213.0.1/24", ipv6="fd42:213::1/64"):
        self.netns = netns
        self.name = name or unique_name("gbr")
        self.ipv4 = ipv4
        self.ipv6 = ipv6
        ip("link", "add", self.name, "type", "bridge", "forward_delay", "0", netns=netns.name)
        ip("link", "set", self.name, "up", netns=netns.name)
        if ipv4:
            ip("addr", "add", ipv4, "dev", self.name, netns=netns.name)
        if ipv6:
            ip("addr", "add", ipv6, "dev", self.name, "nodad", netns=netns.name)

    @property
    def address(self):
        return self.ipv4.split("/")[0] if self.ipv4 else None

    def dnsmasq_ra_options(self):
        return ["--enable-ra", "--dhcp-range=::,constructor:%s,ra-only" % self.name]

    def close(self):
        ip("link", "delete", self.name, netns=self.netns.name, check=False)


class Tap:
    """A tap device in a namespace, enslaved to a bridge, for one QEMU NIC."""

    def __init__(self, netns, bridge=None, name=None):
        self.netns = netns
        self.name = name or unique_name("gtap")
        ip("tuntap", "add", "dev", self.name, "mode", "tap", netns=netns.name)
        if bridge is not None:
            ip("link", "set", self.name, "master", bridge.name, netns=netns.name)
        ip("link", "set", self.name, "up", netns=netns.name)

    def close(self):
        ip("link", "delete", self.name, netns=self.netns.name, check=False)


def host_routes():
    """The host's IPv4 routes as a list of CIDR strings (for clash checks)."""
    out = ip("-4", "route", "show", "table", "all")
    routes = []
    for line in out.splitlines():
        dest = line.split()[0] if line.split() else ""
        if dest in ("local", "broadcast", "unicast"):
            dest = line.split()[1]
        if dest and dest[0].isdigit():
            routes.append(dest)
    return routes
