"""The broadcast engine without namespaces: arguments, the agent command, agent lines, results."""
import hashlib
import shlex
import shutil
import subprocess
import sys

import pytest

from ansible_collections.gridops.metal.plugins.module_utils import _broadcast as bc


def argv_local(cmd):
    return ["sh", "-c", cmd]


@pytest.fixture
def image(tmp_path):
    path = tmp_path / "image.bin"
    path.write_bytes(b"gridops" * 1000)
    return path


def receivers(n=2):
    return [bc.Receiver("n%d" % i, "10.0.0.%d" % (i + 1), argv_local, "cat > /dev/null") for i in range(n)]


@pytest.mark.parametrize("kwargs, message", [
    ({"method": "multicast"}, "method must be one of"),
    ({"sha256": "abc"}, "sha256 must be 64"),
    ({"port": 70000}, "port must be"),
    ({"port": True}, "port must be"),
    ({"method": "pull"}, "needs server_address"),
    ({"timeout": 0}, "timeout must be a positive"),
    ({"stall_timeout": -1}, "stall_timeout must be a positive"),
    ({"connect_timeout": "5"}, "connect_timeout must be a positive"),
    ({"progress": "yes"}, "progress must be callable"),
    ({"workdir": "tmp/x"}, "workdir must be an absolute"),
    ({"workdir": "/"}, "workdir must be an absolute"),
    ({"retries": -1}, "retries must be"),
])
def test_bad_arguments_raise_before_anything_runs(image, kwargs, message, monkeypatch):
    monkeypatch.setattr(bc.subprocess, "Popen", lambda *a, **k: pytest.fail("started something"))
    with pytest.raises(ValueError, match=message):
        bc.broadcast(str(image), receivers(), **kwargs)


def test_bad_receivers(image, tmp_path):
    with pytest.raises(ValueError, match="not a file"):
        bc.broadcast(str(tmp_path / "missing"), receivers())
    with pytest.raises(ValueError, match="non-empty list"):
        bc.broadcast(str(image), [])
    with pytest.raises(ValueError, match="given twice"):
        bc.broadcast(str(image), receivers(1) * 2)
    with pytest.raises(ValueError, match="argv must be callable"):
        bc.broadcast(str(image), [bc.Receiver("a", "10.0.0.1", ["ssh"], "cat")])
    with pytest.raises(ValueError, match="target must be"):
        bc.broadcast(str(image), [bc.Receiver("a", "10.0.0.1", argv_local, " ")])
    with pytest.raises(ValueError, match="address must be"):
        bc.broadcast(str(image), [bc.Receiver("a", "", argv_local, "cat")])
    with pytest.raises(ValueError, match="name must be"):
        bc.broadcast(str(image), [bc.Receiver("a b", "10.0.0.1", argv_local, "cat")])


def test_agent_command_quotes_every_argument():
    target = "zstd -dc | tar -x -C '/mnt/it'\"s\" ; echo $HOME `id`"
    cmd = bc.agent_command("chain", "/tmp/gridops broadcast/x", 45213, 0.5, target, "")
    first, script = cmd.split("\n", 1)
    assert script == bc.AGENT
    assert first.startswith("set -- ")
    assert shlex.split(first[len("set -- "):]) == ["chain", "/tmp/gridops broadcast/x", "45213", "0.5", target, ""]
    # The shell sees exactly those arguments.
    out = subprocess.run(["sh", "-c", first + '\nfor a in "$@"; do printf "[%s]\\n" "$a"; done'],
                         capture_output=True, text=True, check=True).stdout
    assert out.splitlines() == ["[chain]", "[/tmp/gridops broadcast/x]", "[45213]", "[0.5]", "[%s]" % target, "[]"]


def test_agent_script_is_posix_sh():
    res = subprocess.run(["sh", "-n", "-c", bc.AGENT], capture_output=True, text=True, check=False)
    assert res.returncode == 0, res.stderr
    busybox = shutil.which("busybox")
    if busybox:
        res = subprocess.run([busybox, "sh", "-n", "-c", bc.AGENT], capture_output=True, text=True, check=False)
        assert res.returncode == 0, res.stderr


@pytest.mark.parametrize("line, parsed", [
    (b"READY\n", ("READY", None)),
    (b"BYE\n", ("BYE", None)),
    (b"BYTES 1234\n", ("BYTES", 1234)),
    (b"FWD 141 nc: write: Broken pipe\n", ("FWD", (141, "nc: write: Broken pipe"))),
    (b"FWD 0 \n", ("FWD", (0, ""))),
    (b"FAIL start port 45213 is already in use\n", ("FAIL", ("start", "port 45213 is already in use"))),
    (b"FAIL bogus text\n", ("FAIL", ("start", "text"))),
    (b"LOG target: tar: short read\n", ("LOG", "target: tar: short read")),
    (b"DONE " + b"A" * 64 + b" 0 0\n", ("DONE", ("a" * 64, 0, 0))),
    (b"DONE - 1 -\n", ("DONE", (None, 1, None))),
    (b"BYTES many\n", ("OTHER", "BYTES many")),
    (b"hello world\n", ("OTHER", "hello world")),
])
def test_parse_line(line, parsed):
    assert bc.parse_line(line) == parsed


def _run(image, n=2, **kwargs):
    size = image.stat().st_size
    sha = hashlib.sha256(image.read_bytes()).hexdigest()
    r = bc._Run(str(image), size, sha, receivers(n), "chain", 45213, None, 60, 30, 30, None, 1.0, "/tmp/x", 1)
    return r, size, sha


def test_results_from_done_lines(image):
    run, size, sha = _run(image, 4)
    ok, bad_target, wrong, short = run.nodes
    run.done(ok, (sha, 0, 0))
    assert ok.result["ok"] and ok.result["bytes"] == size and ok.result["sha256"] == sha and ok.state == "done"
    bad_target.logs = ["target: disk full"]
    run.done(bad_target, (sha, 1, 0))
    assert bad_target.result["step"] == "write" and "status 1" in bad_target.result["error"]
    assert "disk full" in bad_target.result["error"]
    wrong.bytes = size
    run.done(wrong, ("0" * 64, 0, 0))
    assert wrong.result["step"] == "verify" and not wrong.retryable
    short.bytes = 100
    run.done(short, ("1" * 64, 2, 0))
    assert short.result["step"] == "transfer" and short.retryable
    assert "received 100 of %d" % size in short.result["error"]
    # A result is final.
    run.done(short, (sha, 0, 0))
    assert short.result["step"] == "transfer"


def test_progress_events(image):
    events = []
    run, size, _sha = _run(image, 2)
    run.progress = events.append
    run.nodes[0].bytes, run.nodes[0].state = 10, "receiving"
    run.report()
    run.report()
    assert len(events) == 1
    assert events[0]["bytes_total"] == size and events[0]["method"] == "chain"
    assert events[0]["nodes"] == {"n0": {"bytes": 10, "state": "receiving"}, "n1": {"bytes": 0, "state": "starting"}}


def test_an_agent_that_cannot_start_fails_at_start(image):
    broken = [bc.Receiver("a", "127.0.0.1", lambda cmd: ["/nonexistent/ssh", cmd], "cat"),
              bc.Receiver("b", "127.0.0.1", lambda cmd: [sys.executable, "-c", "import sys; sys.exit(3)"], "cat")]
    res = bc.broadcast(str(image), broken, connect_timeout=5, timeout=20)
    assert res["a"]["step"] == "start" and "cannot run" in res["a"]["error"]
    assert res["b"]["step"] == "start" and "status 3" in res["b"]["error"] and not res["b"]["ok"]
