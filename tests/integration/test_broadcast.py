"""The image broadcast engine (_broadcast.py) with the real busybox agent, receivers in namespaces.

Each receiver is a network namespace on its own veth link to a hub bridge
(tests/bench/bench_broadcast.py's Lab); the engine runs in the server's
namespace as a child Python process; every receiver's target writes the
stream to a file, compared with the image afterwards.
"""
import hashlib
import importlib.util
import json
import os
import pathlib
import subprocess
import time

import pytest

from gridops_test import procs

BENCH = pathlib.Path(__file__).resolve().parents[1] / "bench" / "bench_broadcast.py"
SIZE = 20 * 1024 * 1024

pytestmark = [pytest.mark.root, pytest.mark.slow]


def load_bench():
    spec = importlib.util.spec_from_file_location("bench_broadcast", BENCH)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


bench = load_bench()


@pytest.fixture(scope="module")
def image(tmp_path_factory):
    path = tmp_path_factory.mktemp("image") / "image.tar.zst"
    bench.make_image(path, SIZE)
    return path, hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture
def lab():
    lab = bench.Lab(3, subnet="10.231.9")
    try:
        yield lab
    finally:
        lab.close()


def receivers(lab, out, targets=None):
    targets = targets or {}
    return [{"name": m["name"], "address": m["address"], "ns": m["ns"],
             "target": targets.get(m["name"], "cat > %s/%s.img" % (out, m["name"]))} for m in lab.receivers]


def sha_of(path):
    return hashlib.sha256(pathlib.Path(path).read_bytes()).hexdigest()


def assert_clean(lab, workdir):
    leftover = [pid for m in lab.receivers for pid in bench.netns_pids(m["ns"]) if procs.pid_alive(pid)]
    assert leftover == [], leftover
    assert not os.path.exists(workdir) or os.listdir(workdir) == []


@pytest.mark.parametrize("method", ["chain", "pull"])
def test_every_receiver_gets_the_image(lab, image, tmp_path, method):
    path, sha = image
    work = tmp_path / "work"
    kwargs = {"server_address": lab.server["address"]} if method == "pull" else {}
    out = bench.run_engine(lab, path, receivers(lab, tmp_path), method=method, workdir=str(work), timeout=120,
                           **kwargs)
    res = out["results"]
    assert sorted(res) == ["n0", "n1", "n2"]
    for name, r in res.items():
        assert r["ok"], (name, r)
        assert r["bytes"] == SIZE and r["sha256"] == sha and r["method"] == method and r["step"] is None
        assert sha_of(tmp_path / ("%s.img" % name)) == sha
    positions = [res[n]["position"] for n in ("n0", "n1", "n2")]
    assert positions == ([0, 1, 2] if method == "chain" else [None] * 3)
    assert out["progress_events"] >= 1
    assert_clean(lab, work)


def test_wrong_expected_sha256_fails_every_node_at_verify(lab, image, tmp_path):
    path, sha = image
    out = bench.run_engine(lab, path, receivers(lab, tmp_path), sha256="0" * 64, workdir=str(tmp_path / "w"),
                           timeout=120)
    for name, r in out["results"].items():
        assert not r["ok"] and r["step"] == "verify", (name, r)
        assert r["sha256"] == sha and "expected " + "0" * 64 in r["error"]


def test_a_failing_target_fails_its_node_at_write_and_not_the_chain(lab, image, tmp_path):
    path, sha = image
    targets = {"n1": "echo disk on fire >&2; exit 3"}
    out = bench.run_engine(lab, path, receivers(lab, tmp_path, targets), workdir=str(tmp_path / "w"), timeout=120)
    res = out["results"]
    assert res["n1"]["step"] == "write" and "status 3" in res["n1"]["error"] and "disk on fire" in res["n1"]["error"]
    assert res["n1"]["sha256"] == sha
    for name in ("n0", "n2"):
        assert res[name]["ok"], res[name]
        assert sha_of(tmp_path / ("%s.img" % name)) == sha


def test_a_receiver_killed_mid_stream_is_cut_out(lab, image, tmp_path):
    path, sha = image
    for machine in [lab.server] + lab.receivers:
        lab.shape(machine, 50)
    work = tmp_path / "w"
    argv = bench.engine_argv(lab, path, receivers(lab, tmp_path), workdir=str(work), timeout=120,
                             stall_timeout=10, progress_interval=0.2)
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)
    killed_at = None
    try:
        for line in proc.stderr:
            if not line.startswith("PROGRESS ") or killed_at is not None:
                continue
            event = json.loads(line.split(" ", 1)[1])
            if event["nodes"]["n1"]["bytes"] > 4 * 1024 * 1024:
                killed_at = event["nodes"]["n1"]["bytes"]
                lab.kill_machine(lab.receivers[1])
        stdout = proc.communicate(timeout=120)[0]
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, 9)
            proc.wait()
    assert killed_at is not None and proc.returncode == 0
    res = json.loads(stdout.strip().splitlines()[-1])["results"]
    assert res["n0"]["ok"] and sha_of(tmp_path / "n0.img") == sha
    assert not res["n1"]["ok"] and res["n1"]["step"] == "transfer", res["n1"]
    assert res["n1"]["bytes"] < SIZE
    # Downstream of the dead node: re-fed by a second chain pass.
    assert res["n2"]["ok"] and res["n2"]["attempts"] == 2 and res["n2"]["position"] == 0, res["n2"]
    assert sha_of(tmp_path / "n2.img") == sha
    assert_clean(lab, work)


def test_the_listening_port_taken_fails_that_node_at_start(lab, image, tmp_path, daemon_factory):
    path, sha = image
    daemon_factory(["busybox", "nc", "-l", "-p", "46999"], netns=lab.receivers[0]["ns"], name="squatter")
    procs.wait_for(lambda: ":46999 " in procs.run(["busybox", "netstat", "-ltn"], netns=lab.receivers[0]["ns"]).stdout,
                   10, what="the squatter")
    start = time.monotonic()
    out = bench.run_engine(lab, path, receivers(lab, tmp_path), port=46999, workdir=str(tmp_path / "w"),
                           timeout=120)
    res = out["results"]
    assert res["n0"]["step"] == "start" and "already in use" in res["n0"]["error"], res["n0"]
    assert res["n1"]["ok"] and res["n2"]["ok"] and res["n1"]["position"] == 0
    assert time.monotonic() - start < 60
