"""The power engine without BMC daemons: input checks, the window scheduler, the
escalation ladder's ssh and command levels, and how node failures stay per node.

Dead endpoints here are real: a UDP socket on loopback that never answers is a
BMC that does not answer, a closed TCP port is a node without sshd.  The one
stand-in, LibraryBugBmc, plays what cannot be produced for real: pyghmi raising
an exception type it is not documented to raise.
"""
import pathlib
import socket
import sys
import threading
import time

import pytest
import yaml

from ansible_collections.gridops.metal.plugins.module_utils import _ipmi, _power
from gridops_test import procs

CASES = yaml.safe_load((pathlib.Path(__file__).with_suffix(".yaml")).read_text())


@pytest.mark.parametrize("case", CASES["bad_requests"], ids=lambda c: c["error"][:40])
def test_bad_requests_are_refused(case):
    with pytest.raises(_power.PowerInputError, match=case["error"]):
        _power.make_request(**case["kwargs"])


@pytest.mark.parametrize("case", CASES["bad_nodes"], ids=lambda c: c["error"][:40])
def test_bad_nodes_are_refused(case):
    with pytest.raises(_power.PowerInputError, match=case["error"]):
        _power.normalize_nodes(case["nodes"])


def test_nodes_take_defaults_and_keep_their_own():
    nodes = _power.normalize_nodes(
        [{"name": "n1", "bmc_address": "10.0.0.1"},
         {"name": "n2", "bmc_address": "10.0.0.2", "bmc_user": "u2", "bmc_password": "p2", "bmc_port": 6230,
          "host": "192.0.2.2"}],
        bmc_user="admin", bmc_password="secret", bmc_port=None)
    assert nodes == [
        {"name": "n1", "host": "n1", "bmc_address": "10.0.0.1", "bmc_port": 623, "bmc_user": "admin",
         "bmc_password": "secret"},
        {"name": "n2", "host": "192.0.2.2", "bmc_address": "10.0.0.2", "bmc_port": 6230, "bmc_user": "u2",
         "bmc_password": "p2"},
    ]


def test_reboot_without_levels_is_hard_with_defaults():
    req = _power.make_request(state="reboot")
    assert req["levels"] == {"hard": {"method": "cycle", "timeout": 60}}
    req = _power.make_request(state="reboot", soft={"user": "ops", "timeout": None}, very_hard={"command": ["x"]})
    assert sorted(req["levels"]) == ["soft", "very_hard"]
    assert req["levels"]["soft"]["user"] == "ops" and req["levels"]["soft"]["timeout"] == 60


def test_command_template_fills_fields_without_a_shell():
    node = {"name": "node-1", "host": "192.0.2.1", "bmc_address": "10.0.0.1", "bmc_port": 623}
    argv = ["pdu", "--outlet={name}", "{bmc_address}:{bmc_port}", "a b {host}", "{{literal}}", "$(reboot)"]
    _power.check_command_template(argv)
    assert _power.render_command(argv, node) == [
        "pdu", "--outlet=node-1", "10.0.0.1:623", "a b 192.0.2.1", "{literal}", "$(reboot)"]


def test_window_and_spacing():
    """At most `window` at once, starts `spacing` apart, results in input order."""
    lock = threading.Lock()
    running, peak, starts = [0], [0], []

    def work(i):
        with lock:
            running[0] += 1
            peak[0] = max(peak[0], running[0])
            starts.append(time.monotonic())
        time.sleep(0.15)
        with lock:
            running[0] -= 1
        return "r%d" % i

    begin = time.monotonic()
    assert _power.run_windowed(9, work, window=3, spacing=0.05) == ["r%d" % i for i in range(9)]
    took = time.monotonic() - begin
    assert peak[0] == 3
    # Measured inside the threads, so with their start-up jitter: the 8 spacings in all.
    starts.sort()
    assert starts[-1] - starts[0] >= 8 * 0.05 - 0.03, starts
    # 9 jobs of 0.15 s, 3 at a time: about 3 rounds, not 9.
    assert took < 9 * 0.15

    starts[:] = []
    peak[0] = 0
    _power.run_windowed(6, work, window=1)
    assert peak[0] == 1
    with pytest.raises(_power.PowerInputError):
        _power.run_windowed(1, work, window=0)


@pytest.fixture
def dead_bmcs():
    """dead_bmcs(n): n UDP ports on loopback that swallow every IPMI request."""
    socks = []

    def make(count=1):
        ports = []
        while len(ports) < count:
            sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            sock.bind(("127.0.0.1", 0))
            socks.append(sock)
            ports.append(sock.getsockname()[1])
        return ports

    try:
        yield make
    finally:
        for sock in socks:
            sock.close()


@pytest.fixture
def dead_bmc(dead_bmcs):
    return dead_bmcs(1)[0]


@pytest.fixture
def closed_tcp_port():
    """A loopback TCP port nobody listens on (a node without sshd)."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    sock.close()
    return port


def node(name, bmc_port, **extra):
    fields = {"name": name, "bmc_address": "127.0.0.1", "bmc_port": bmc_port, "bmc_user": "admin",
              "bmc_password": "secret", "host": "127.0.0.1"}
    fields.update(extra)
    return _power.normalize_nodes([fields])[0]


def test_dead_bmc_is_an_unreachable_error(dead_bmc):
    pytest.importorskip("pyghmi")
    req = _power.make_request(state="on", login_timeout=0.5)
    (res,) = _power.run([node("n1", dead_bmc)], req)
    assert res["failed"] and res["error_kind"] == "unreachable"
    assert "BMC 127.0.0.1:%d: no answer within 0.5s" % dead_bmc in res["error"]
    assert res["changed"] is False and res["power"] is None


def test_escalation_climbs_to_very_hard(dead_bmcs, closed_tcp_port, tmp_path):
    """No sshd and a dead BMC: soft and hard fail, the operator's command runs."""
    pytest.importorskip("pyghmi")
    log = tmp_path / "pdu.log"
    req = _power.make_request(
        state="reboot", login_timeout=0.5,
        soft={"port": closed_tcp_port, "connect_timeout": 2, "timeout": 5},
        hard={"timeout": 5},
        very_hard={"command": [sys.executable, "-c",
                               "import sys; open(sys.argv[1], 'a').write(' '.join(sys.argv[2:]) + '\\n')",
                               str(log), "{name}", "{bmc_address}", "{bmc_port}"], "timeout": 10})
    ports = dead_bmcs(2)
    results = _power.run([node("n1", ports[0]), node("n2", ports[1])], req)
    for res in results:
        assert not res["failed"], res
        assert res["level"] == "very_hard" and res["changed"]
        assert [a["level"] for a in res["attempts"]] == ["soft", "hard", "very_hard"]
        assert [a["ok"] for a in res["attempts"]] == [False, False, True]
        assert "Connection refused" in res["attempts"][0]["error"]
        assert "no answer within 0.5s" in res["attempts"][1]["error"]
        assert res["power"] is None  # the BMC cannot tell
    assert sorted(log.read_text().splitlines()) == ["n1 127.0.0.1 %d" % ports[0], "n2 127.0.0.1 %d" % ports[1]]


def test_every_level_failing_is_reported_per_level(dead_bmc, closed_tcp_port, tmp_path):
    pytest.importorskip("pyghmi")
    pidfile = tmp_path / "child.pid"
    req = _power.make_request(
        state="reboot", login_timeout=0.5,
        soft={"port": closed_tcp_port, "connect_timeout": 1, "timeout": 3},
        # The PDU hangs, with a child: the whole process group goes on timeout.
        very_hard={"command": ["sh", "-c", "sleep 30 & echo $! > %s; wait" % pidfile], "timeout": 1})
    (res,) = _power.run([node("n1", dead_bmc)], req)
    assert res["failed"] and res["error_kind"] == "escalation" and res["level"] is None
    assert res["error"].startswith("no escalation level rebooted the node: soft: ssh root@127.0.0.1:%d"
                                   % closed_tcp_port)
    assert "very_hard: sh: timed out after 1s" in res["error"]
    child = int(pidfile.read_text())
    procs.wait_for(lambda: not procs.pid_alive(child), 5, interval=0.05, what="the PDU's child to be killed")


def test_failing_command_reports_its_output(dead_bmc):
    pytest.importorskip("pyghmi")
    req = _power.make_request(state="reboot", login_timeout=0.5,
                              very_hard={"command": ["sh", "-c", "echo outlet {name} unknown >&2; exit 3"]})
    (res,) = _power.run([node("n7", dead_bmc)], req)
    assert res["failed"]
    assert "very_hard: sh: exit status 3: outlet n7 unknown" in res["error"]


def test_missing_command_is_an_error_not_a_crash(dead_bmc):
    pytest.importorskip("pyghmi")
    req = _power.make_request(state="reboot", login_timeout=0.5,
                              very_hard={"command": ["/nonexistent/pdu", "{name}"]})
    (res,) = _power.run([node("n1", dead_bmc)], req)
    assert res["failed"] and "cannot run /nonexistent/pdu" in res["error"]


def test_boot_device_on_a_dead_bmc_stops_the_reboot(dead_bmc, tmp_path):
    """Rebooting into the wrong thing is worse than not rebooting."""
    pytest.importorskip("pyghmi")
    marker = tmp_path / "ran"
    req = _power.make_request(state="reboot", boot_device="pxe", login_timeout=0.5,
                              very_hard={"command": ["touch", str(marker)]})
    (res,) = _power.run([node("n1", dead_bmc)], req)
    assert res["failed"] and "cannot set the boot device, so no reboot" in res["error"]
    assert res["attempts"] == [] and not marker.exists()


class LibraryBugBmc(object):
    """Stand-in for what cannot be produced for real: the IPMI library raising an
    undocumented exception type in the middle of a node's work."""

    auth_algorithm = None

    def __init__(self, node, request):
        self.node = node

    def open(self):
        return self

    def power_state(self):
        raise KeyError("bug in the library")

    def close(self):
        pass


def test_a_library_bug_fails_that_node_only():
    results = _power.run([node("n1", 1), node("n2", 2)], _power.make_request(state="on"),
                         bmc_factory=LibraryBugBmc)
    for res in results:
        assert res["failed"] and res["error_kind"] == "internal"
        assert res["error"] == "internal error: KeyError: 'bug in the library'"
    # In a reboot the same bug breaks the hard level only: the next one runs.
    req = _power.make_request(state="reboot", hard={}, very_hard={"command": ["true"]})
    (res,) = _power.run([node("n1", 1)], req, bmc_factory=LibraryBugBmc)
    assert not res["failed"] and res["level"] == "very_hard"
    assert res["attempts"][0]["error"] == "internal error: KeyError: 'bug in the library'"


def test_summary():
    results = [dict(_power.new_result({"name": n, "bmc_address": "a", "bmc_port": 623}), failed=f, changed=c)
               for n, f, c in (("a", False, True), ("b", True, False), ("c", False, False))]
    assert _power.summarize(results) == {"failed_nodes": ["b"], "changed_nodes": ["a"],
                                         "msg": "3 node(s): 1 changed, 1 failed"}


def test_ipmi_errors_name_the_bmc():
    if not _ipmi.HAS_PYGHMI:
        pytest.skip("pyghmi missing")
    with pytest.raises(_ipmi.IpmiError, match="cannot resolve"):
        _ipmi.Bmc("no-such-bmc.invalid", "u", "p").open()
    with pytest.raises(ValueError):
        _ipmi.Bmc("127.0.0.1", "u", "p").set_boot_device("floppy")
