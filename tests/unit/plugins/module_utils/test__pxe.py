# Copyright: (c) 2026, gridops.metal developers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The network boot engine: profiles, nodes, server configuration, rendering, files on disk."""
import copy
import os
import pathlib

import pytest
import yaml

from ansible_collections.gridops.metal.plugins.module_utils import _pxe

CASES = yaml.safe_load(pathlib.Path(__file__).with_suffix(".yaml").read_text())
MAC1, MAC2 = "52:54:00:00:00:01", "52:54:00:00:00:02"


def _raises(func, *args, reasons=(), **kwargs):
    with pytest.raises(_pxe.NetbootError) as err:
        func(*args, **kwargs)
    message = str(err.value)
    for reason in reasons:
        assert reason in message, "%r not in:\n%s" % (reason, message)
    return message


# ---------------------------------------------------------------- validation

@pytest.mark.parametrize("case", CASES["profiles"], ids=lambda c: repr(c["input"]))
def test_profile_normalised(case):
    assert _pxe.normalize_profile(case["input"]) == case["expected"]
    # The canonical form is a fixed point.
    assert _pxe.normalize_profile(case["expected"]) == case["expected"]


@pytest.mark.parametrize("case", CASES["profile_errors"], ids=lambda c: repr(c["input"]))
def test_profile_refused(case):
    _raises(_pxe.normalize_profile, case["input"], reasons=case["reasons"])


@pytest.mark.parametrize("case", CASES["node_errors"], ids=lambda c: c["reasons"][0])
def test_nodes_refused(case):
    _raises(_pxe.normalize_nodes, case["nodes"], reasons=case["reasons"])


def test_nodes_normalised():
    nodes = _pxe.normalize_nodes([{"name": "node-1", "mac": "5254.0000.0001", "ip": " 10.0.0.11 "},
                                  {"mac": "52-54-00-00-00-02"}, {"ip": "10.0.0.13"}])
    assert [(n["name"], n["mac"], n["ip"], n["named"]) for n in nodes] == [
        ("node-1", MAC1, "10.0.0.11", True), (MAC2, MAC2, None, False), ("10.0.0.13", None, "10.0.0.13", False)]


def test_server_config_normalised():
    out = _pxe.validate_server(copy.deepcopy(CASES["server_base"]))
    assert (out["network"], out["netmask"], out["prefixlen"]) == ("10.0.0.0", "255.255.255.0", 24)
    assert [n["mac"] for n in out["nodes"]] == [MAC1, MAC2]
    assert [n["loader"] for n in out["nodes"]] == ["ipxe", "pxelinux"], "the default loader is filled in"
    assert out["nodes"][1]["profile"] == {"kind": "deploy"} and out["nodes"][0]["profile"] is None
    assert out["default_profile"] == {"kind": "local"} and out["dhcp_range"] is None
    assert "named" not in out["nodes"][0]


def test_server_config_proxy_mode_needs_no_addresses():
    config = dict(CASES["server_base"], mode="proxy", nodes=[{"name": "node-1", "mac": MAC1}, {"ip": "10.0.0.12"}])
    assert _pxe.validate_server(config)["mode"] == "proxy"


def test_server_config_pool_allows_nodes_without_ip():
    config = dict(CASES["server_base"], dhcp_range={"start": "10.0.0.100", "end": "10.0.0.150"},
                  nodes=[{"name": "node-1", "mac": MAC1}])
    assert _pxe.validate_server(config)["dhcp_range"] == {"start": "10.0.0.100", "end": "10.0.0.150"}


@pytest.mark.parametrize("case", CASES["server_errors"], ids=lambda c: c["reasons"][0])
def test_server_config_refused(case):
    config = dict(copy.deepcopy(CASES["server_base"]), **case["config"])
    message = _raises(_pxe.validate_server, config, reasons=case["reasons"])
    if len(case["reasons"]) > 1:
        assert len(message.splitlines()) >= len(case["reasons"]), "one line per problem"


# ----------------------------------------------------------------- rendering

def _config(root="/srv/pxe", **kwargs):
    kwargs.setdefault("dhcp_hostsdir", "/etc/pxe/hosts")
    kwargs.setdefault("deploy_params", "console=ttyS0")
    return _pxe.Config(root, "http://10.0.0.1", **kwargs)


@pytest.mark.parametrize("case", CASES["render"], ids=lambda c: c["id"])
def test_render(case):
    config = _config()
    profile = _pxe.normalize_profile(case["profile"])
    node = case["node"]
    if "pxelinux" in case:
        assert _pxe.render_pxelinux(config, profile, node) == case["pxelinux"]
    if "ipxe" in case:
        assert _pxe.render_ipxe(config, profile, node) == case["ipxe"]
    if "dhcp" in case:
        assert _pxe.render_dhcp_host(config, node) == case["dhcp"]
    # The header gives the profile back.
    for render in (_pxe.render_pxelinux, _pxe.render_ipxe):
        name, parsed = _pxe.parse_header(render(config, profile, node))
        assert parsed == profile and name == (node["name"] if node else None)


def test_render_dhcp_host_in_proxy_mode_reserves_nothing():
    node = {"name": "node-1", "mac": MAC1, "ip": "10.0.0.11", "loader": "pxelinux"}
    assert _pxe.render_dhcp_host(_config(dhcp_addresses=False), node).splitlines()[1] == MAC1 + ",set:gridops-pxelinux"


def test_boot_ipxe_tries_mac_then_ip_then_default():
    text = _pxe.render_boot_ipxe(_config())
    assert text.startswith("#!ipxe\n")
    fetches = [line.split()[3] for line in text.splitlines() if line.startswith("imgfetch")]
    assert fetches == ["http://10.0.0.1/ipxe/${mac:hexhyp}.ipxe", "http://10.0.0.1/ipxe/ip-${ip}.ipxe",
                       "http://10.0.0.1/ipxe/default.ipxe"]


def test_node_paths():
    config = _config()
    assert _pxe.node_paths(config, {"mac": MAC1, "ip": "10.0.0.11"}) == {
        "pxelinux": "/srv/pxe/pxelinux.cfg/01-52-54-00-00-00-01",
        "ipxe": "/srv/pxe/ipxe/52-54-00-00-00-01.ipxe",
        "dhcp": "/etc/pxe/hosts/52-54-00-00-00-01"}
    assert _pxe.node_paths(config, {"mac": None, "ip": "10.0.0.11"}) == {
        "pxelinux": "/srv/pxe/pxelinux.cfg/0A00000B", "ipxe": "/srv/pxe/ipxe/ip-10.0.0.11.ipxe"}


@pytest.mark.parametrize("kwargs, reason", [
    (dict(root="srv/pxe"), "root: 'srv/pxe' is not an absolute path"),
    (dict(http_url="ftp://x"), "http_url: 'ftp://x' is not an http(s) URL"),
    (dict(loader="grub"), "loader: 'grub'"),
    (dict(dhcp_hostsdir="hosts"), "dhcp_hostsdir: 'hosts' is not an absolute path"),
    (dict(deploy_kernel="/boot/vmlinuz"), "deploy.kernel"),
])
def test_config_refused(kwargs, reason):
    args = dict(root="/srv/pxe", http_url="http://10.0.0.1")
    args.update(kwargs)
    _raises(_pxe.Config, **dict(args, reasons=[reason]))


# --------------------------------------------------------------- on disk

@pytest.fixture
def bed(tmp_path):
    """A boot root with a test kernel, a hosts directory and a Config for them."""
    root = tmp_path / "root"
    for rel in ("images/t/vmlinuz", "images/t/initrd.img", "deploy/vmlinuz", "deploy/initrd.img"):
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_text(rel)
    hosts = tmp_path / "hosts"
    hosts.mkdir()
    return _pxe.Config(str(root), "http://10.0.0.1", dhcp_hostsdir=str(hosts))


KERNEL = {"kind": "kernel", "kernel": "images/t/vmlinuz", "initrd": "images/t/initrd.img"}


def _nodes():
    return [{"name": "node-1", "mac": MAC1, "ip": "10.0.0.11", "profile": "local"},
            {"name": "node-2", "mac": MAC2, "ip": "10.0.0.12", "profile": KERNEL, "loader": "pxelinux"}]


def _files(config):
    """{relative path: (content, mtime_ns)} of everything under the root and hosts dir."""
    out = {}
    for base in (config.root, config.dhcp_hostsdir):
        for dirpath, _dirs, names in os.walk(base):
            for name in names:
                path = os.path.join(dirpath, name)
                with open(path) as fh:
                    out[os.path.relpath(path, os.path.dirname(base))] = (fh.read(), os.stat(path).st_mtime_ns)
    return out


def test_netboot_writes_then_changes_nothing(bed):
    res = _pxe.netboot(bed, _nodes(), default_profile="local")
    assert res["changed"] and res["changed_nodes"] == ["node-1", "node-2"]
    assert res["nodes"]["node-1"]["previous"] is None
    assert res["nodes"]["node-2"]["profile"] == _pxe.normalize_profile(KERNEL)
    assert res["nodes"]["node-2"]["loader"] == "pxelinux" and res["nodes"]["node-1"]["loader"] == "ipxe"
    files = _files(bed)
    assert "root/pxelinux.cfg/01-52-54-00-00-00-02" in files and "hosts/52-54-00-00-00-01" in files
    assert "root/boot.ipxe" in files and "root/ipxe/default.ipxe" in files and "root/pxelinux.cfg/default" in files
    assert not [p for p in files if os.path.basename(p).startswith(".")], "no temporary file is left"
    for path in files:
        if not path.startswith("root/images") and not path.startswith("root/deploy"):
            full = os.path.join(os.path.dirname(bed.root), path)
            assert oct(os.stat(full).st_mode & 0o777) == "0o644", path
    again = _pxe.netboot(bed, _nodes(), default_profile="local")
    assert not again["changed"] and again["changed_nodes"] == [] and again["diff"] == []
    assert again["nodes"]["node-2"]["previous"] == again["nodes"]["node-2"]["profile"]
    assert _files(bed) == files, "nothing rewritten"


def test_switching_one_node_touches_only_its_files(bed):
    _pxe.netboot(bed, _nodes())
    before = _files(bed)
    res = _pxe.netboot(bed, [{"mac": MAC2, "profile": "deploy"}])
    assert res["changed_nodes"] == ["node-2"], "a node given by MAC keeps its name"
    entry = res["nodes"]["node-2"]
    assert entry["previous"] == _pxe.normalize_profile(KERNEL) and entry["profile"] == {"kind": "deploy"}
    assert entry["ip"] == "10.0.0.12" and entry["loader"] == "pxelinux", "what the call does not say stays"
    assert res["dhcp_reload"] is False
    after = _files(bed)
    changed = sorted(p for p in after if after[p] != before.get(p))
    assert changed == ["root/ipxe/52-54-00-00-00-02.ipxe", "root/pxelinux.cfg/01-52-54-00-00-00-02"]
    assert "gridops.node=node-2 BOOTIF=01-52-54-00-00-00-02" in after["root/ipxe/52-54-00-00-00-02.ipxe"][0]


def test_check_mode_predicts_without_writing(bed):
    _pxe.netboot(bed, _nodes())
    before = _files(bed)
    res = _pxe.netboot(bed, [{"name": "node-1", "mac": MAC1, "profile": KERNEL},
                             {"name": "node-3", "mac": "52:54:00:00:00:03", "ip": "10.0.0.13"}], check_mode=True)
    assert res["changed"] and sorted(res["changed_nodes"]) == ["node-1", "node-3"]
    assert res["nodes"]["node-3"]["profile"] == {"kind": "local"}, "initial_profile for a new node"
    assert _files(bed) == before
    headers = [d["after_header"] for d in res["diff"]]
    assert any(h.endswith("ipxe/52-54-00-00-00-01.ipxe") for h in headers)
    new = [d for d in res["diff"] if d["before_header"].endswith("(absent)")]
    assert len(new) == 3 and all(d["before"] == "" for d in new)


def test_query_reads_without_writing(bed):
    _pxe.netboot(bed, _nodes())
    before = _files(bed)
    res = _pxe.netboot(bed, [{"mac": MAC2}, {"ip": "10.0.0.99"}], state="query")
    assert not res["changed"] and _files(bed) == before
    assert res["nodes"]["node-2"]["profile"] == _pxe.normalize_profile(KERNEL)
    assert res["nodes"]["node-2"]["loader"] == "pxelinux" and res["nodes"]["node-2"]["ip"] == "10.0.0.12"
    assert res["nodes"]["10.0.0.99"]["profile"] is None


def test_absent_removes_the_node_files(bed):
    _pxe.netboot(bed, _nodes())
    res = _pxe.netboot(bed, [{"mac": MAC1}], state="absent")
    assert res["changed_nodes"] == ["node-1"] and res["dhcp_reload"] is True
    assert len(res["removed"]) == 3 and not any(os.path.exists(p) for p in res["removed"])
    assert not _pxe.netboot(bed, [{"mac": MAC1}], state="absent")["changed"]


def test_exclusive_prunes_only_what_it_wrote(bed):
    _pxe.netboot(bed, _nodes())
    foreign = pathlib.Path(bed.root) / "pxelinux.cfg" / "01-aa-bb-cc-dd-ee-ff"
    foreign.write_text("DEFAULT hand-made\n")
    res = _pxe.netboot(bed, _nodes()[:1], exclusive=True)
    assert sorted(os.path.basename(p) for p in res["removed"]) == [
        "01-52-54-00-00-00-02", "52-54-00-00-00-02", "52-54-00-00-00-02.ipxe"]
    assert res["dhcp_reload"] is True and foreign.exists()


def test_a_node_without_profile_keeps_its_own(bed):
    _pxe.netboot(bed, _nodes())
    res = _pxe.netboot(bed, [{"name": "node-2", "mac": MAC2, "ip": "10.0.0.12"},
                             {"name": "node-9", "mac": "52:54:00:00:00:09", "ip": "10.0.0.19"}],
                       initial_profile="deploy")
    assert res["nodes"]["node-2"]["profile"] == _pxe.normalize_profile(KERNEL) and not res["nodes"]["node-2"]["changed"]
    assert res["nodes"]["node-9"]["profile"] == {"kind": "deploy"}


def test_changed_reservation_asks_for_a_dhcp_restart(bed):
    _pxe.netboot(bed, _nodes())
    assert _pxe.netboot(bed, [{"name": "node-3", "mac": "52:54:00:00:00:03", "ip": "10.0.0.13"}])["dhcp_reload"] is False
    res = _pxe.netboot(bed, [{"mac": MAC1, "loader": "pxelinux"}])
    assert res["dhcp_reload"] is True
    assert ",set:gridops-pxelinux,10.0.0.11,node-1" in (pathlib.Path(bed.dhcp_hostsdir) / "52-54-00-00-00-01").read_text()


@pytest.mark.parametrize("profile, reason", [
    ({"kind": "kernel", "kernel": "images/missing/vmlinuz"},
     "node 'node-1' profile kernel.kernel: 'images/missing/vmlinuz' not found under "),
    ({"kind": "kernel", "kernel": "images/t/vmlinuz", "initrd": ["images/t/initrd.img", "images/t/nope.img"]},
     "node 'node-1' profile kernel.initrd: 'images/t/nope.img' not found"),
    ({"kind": "install", "answer_file": "preseed/node-1.cfg", "kernel": "images/t/vmlinuz",
      "initrd": "images/t/initrd.img"}, "node 'node-1' profile install.answer_file: 'preseed/node-1.cfg' not found"),
])
def test_missing_files_are_refused_before_anything_is_written(bed, profile, reason):
    message = _raises(_pxe.netboot, bed, [{"name": "node-1", "mac": MAC1, "ip": "10.0.0.11", "profile": profile}],
                      reasons=[reason])
    assert bed.root in message
    assert not os.listdir(bed.dhcp_hostsdir) and not os.path.exists(os.path.join(bed.root, "boot.ipxe"))


def test_missing_deploy_environment_names_its_publisher(tmp_path):
    config = _pxe.Config(str(tmp_path), "http://10.0.0.1")
    _raises(_pxe.netboot, config, [{"name": "node-1", "mac": MAC1, "profile": "deploy"}],
            reasons=["node 'node-1' profile deploy.kernel: 'deploy/vmlinuz' not found", "deploy_env role"])


def test_every_missing_file_is_reported_at_once(bed):
    nodes = [{"name": "node-%d" % i, "mac": "52:54:00:00:01:%02x" % i, "profile": {"kind": "kernel", "kernel": "k%d" % i}}
             for i in range(1, 4)]
    message = _raises(_pxe.netboot, bed, nodes, reasons=["node 'node-1'", "node 'node-2'", "node 'node-3'"])
    assert len(message.splitlines()) == 3


def test_pxelinux_cannot_fetch_urls(bed):
    _raises(_pxe.netboot, bed, [{"name": "node-1", "mac": MAC1, "loader": "pxelinux",
                                 "profile": {"kind": "kernel", "kernel": "http://10.0.0.9/vmlinuz"}}],
            reasons=["node 'node-1' profile kernel: pxelinux fetches over TFTP only"])
    res = _pxe.netboot(bed, [{"name": "node-1", "mac": MAC1, "loader": "ipxe",
                              "profile": {"kind": "kernel", "kernel": "http://10.0.0.9/vmlinuz"}}])
    assert res["changed"], "a URL is fine for iPXE (and not checked on disk)"


def test_check_files_off(tmp_path):
    config = _pxe.Config(str(tmp_path), "http://10.0.0.1", check_files=False)
    assert _pxe.netboot(config, [{"mac": MAC1, "profile": "deploy"}])["changed"]


def test_the_same_node_twice_is_refused(bed):
    _pxe.netboot(bed, _nodes())
    _raises(_pxe.netboot, bed, [{"name": "node-1", "mac": "52:54:00:00:00:07"}, {"mac": MAC1}],
            reasons=["node 'node-1': given twice"])


def test_node_by_ip_only(bed):
    res = _pxe.netboot(bed, [{"ip": "10.0.0.42", "profile": KERNEL}])
    assert res["nodes"]["10.0.0.42"]["files"] == [os.path.join(bed.root, "ipxe", "ip-10.0.0.42.ipxe"),
                                                  os.path.join(bed.root, "pxelinux.cfg", "0A00002A")]
    assert not os.listdir(bed.dhcp_hostsdir), "no reservation without a MAC"


def test_an_unreadable_or_foreign_file_is_no_profile(tmp_path):
    assert _pxe.parse_header(None) is None
    assert _pxe.parse_header("DEFAULT local\n") is None
    assert _pxe.parse_header("#!ipxe\n# gridops.metal netboot node=x profile={broken\n") is None


def test_render_a_thousand_nodes_figures(tmp_path):
    """tests/bench/pxe_render.py, run here so every test run prints its figures (pytest -s)."""
    import importlib.util
    import json

    path = pathlib.Path(__file__).resolve().parents[3] / "bench" / "pxe_render.py"
    spec = importlib.util.spec_from_file_location("pxe_render_bench", path)
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    figures = bench.run(1000, str(tmp_path))
    assert figures["files"] == 3003    # 1,000 nodes x (pxelinux, iPXE, DHCP) + the two deploy files + boot.ipxe
    print("FIGURES pxe-render-engine %s" % json.dumps(figures, sort_keys=True))
