"""Engine of the lab's host side: validation against the machine's real routes and processes."""
import json
import os
import subprocess
import sys

import pytest

from ansible_collections.gridops.metal.plugins.module_utils import _lab


def runner(argv):
    res = subprocess.run(argv, capture_output=True, text=True, check=False)
    return res.returncode, res.stdout, res.stderr


def _private_host_route():
    routes = json.loads(runner(["ip", "-j", "-4", "route", "show", "table", "all"])[1])
    import ipaddress
    for route in routes:
        dst = route.get("dst", "")
        if "/" in dst and ipaddress.ip_network(dst).is_private and route.get("type") != "broadcast":
            return dst
    return None


@pytest.mark.parametrize("name,ok", [("eth0", True), ("gbr-default", True), ("x" * 15, True),
                                     ("x" * 16, False), ("", False), ("a b", False), ("a/b", False)])
def test_interface_names(name, ok):
    if ok:
        _lab.validate_ifname("bridge", name)
    else:
        with pytest.raises(_lab.LabError, match="bridge: .* not a valid interface name"):
            _lab.validate_ifname("bridge", name)


@pytest.mark.parametrize("subnet,message", [
    ("172.29.213.7/24", "not a network address"),
    ("8.8.8.0/24", "not a private range"),
    ("banana", "not a network address"),
])
def test_subnet_refused(subnet, message):
    with pytest.raises(_lab.LabError, match="subnet: .*%s" % message):
        _lab.check_subnet_clash(runner, subnet)


def test_subnet_clashing_with_a_real_host_route_is_refused():
    route = _private_host_route()
    if route is None:
        pytest.skip("this machine has no private IPv4 route to clash with")
    with pytest.raises(_lab.LabError, match="clashes with the host's route"):
        _lab.check_subnet_clash(runner, route)


def test_free_private_subnet_is_accepted():
    taken = [str(net) for net, _dev in _lab.host_routes(runner)]
    for candidate in ("172.29.213.0/24", "10.251.17.0/24", "192.168.251.0/24"):
        if candidate not in taken:
            assert _lab.check_subnet_clash(runner, candidate) == candidate
            return
    pytest.skip("every candidate subnet is routed here")


def test_pidfile_is_trusted_only_for_the_right_live_process(tmp_path):
    proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)", "gridops-marker"])
    try:
        pidfile = tmp_path / "x.pid"
        pidfile.write_text("%d\n" % proc.pid)
        assert _lab.read_pidfile(str(pidfile), "gridops-marker") == proc.pid
        # Same PID, other program: a reused PID must not count.
        assert _lab.read_pidfile(str(pidfile), "something-else") is None
    finally:
        proc.kill()
        proc.wait()
    assert _lab.read_pidfile(str(pidfile), "gridops-marker") is None
    pidfile.write_text("garbage")
    assert _lab.read_pidfile(str(pidfile), "gridops-marker") is None
    assert _lab.read_pidfile(str(tmp_path / "missing.pid"), "gridops-marker") is None


def test_netns_pids_of_a_missing_namespace_is_empty():
    assert _lab.netns_pids("gridops-no-such-ns-%d" % os.getpid()) == []
