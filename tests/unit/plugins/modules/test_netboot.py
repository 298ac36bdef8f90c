# Copyright: (c) 2026, gridops.metal developers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The netboot module around its engine: options over the config file, the dnsmasq restart, check and diff."""
import json

import pytest

from ansible.module_utils.testing import patch_module_args
from ansible_collections.gridops.metal.plugins.modules import netboot

MAC = "52:54:00:00:00:01"


def run(args, capsys, check=False, diff=False):
    args = dict(args, _ansible_check_mode=check, _ansible_diff=diff)
    with patch_module_args(args), pytest.raises(SystemExit):
        netboot.main()
    return json.loads(capsys.readouterr().out)


@pytest.fixture
def server(tmp_path):
    root = tmp_path / "root"
    (root / "deploy").mkdir(parents=True)
    for name in ("vmlinuz", "initrd.img"):
        (root / "deploy" / name).write_text(name)
    hosts = tmp_path / "hosts"
    hosts.mkdir()
    marker = tmp_path / "restarted"
    config = tmp_path / "netboot.json"
    config.write_text(json.dumps({"root": str(root), "http_url": "http://10.0.0.1", "dhcp_hostsdir": str(hosts),
                                  "loader": "pxelinux", "deploy_params": "console=ttyS0",
                                  "dhcp_restart_command": ["touch", str(marker)]}))
    return {"config": str(config), "root": root, "hosts": hosts, "marker": marker}


def test_settings_come_from_the_config_file(server, capsys):
    out = run({"config": server["config"], "nodes": [{"name": "node-1", "mac": MAC, "ip": "10.0.0.11",
                                                      "profile": "deploy"}]}, capsys)
    assert out["changed"] and out["nodes"]["node-1"]["loader"] == "pxelinux"
    ipxe = (server["root"] / "ipxe" / "52-54-00-00-00-01.ipxe").read_text()
    assert "kernel http://10.0.0.1/deploy/vmlinuz initrd=initrd.img console=ttyS0 " in ipxe
    assert "diff" not in out and out["dhcp_reloaded"] is False and not server["marker"].exists()


def test_options_win_over_the_config_file(server, capsys):
    out = run({"config": server["config"], "loader": "ipxe", "deploy_params": "quiet",
               "nodes": [{"mac": MAC, "profile": "deploy"}]}, capsys)
    assert out["nodes"][MAC]["loader"] == "ipxe"
    assert " quiet gridops.server=" in (server["root"] / "ipxe" / "52-54-00-00-00-01.ipxe").read_text()


def test_changed_reservation_restarts_dnsmasq_but_not_in_check_mode(server, capsys):
    node = {"name": "node-1", "mac": MAC, "ip": "10.0.0.11"}
    run({"config": server["config"], "nodes": [node]}, capsys)
    planned = run({"config": server["config"], "nodes": [dict(node, loader="ipxe")]}, capsys, check=True, diff=True)
    assert planned["changed"] and planned["dhcp_reload"] and not planned["dhcp_reloaded"]
    assert not server["marker"].exists()
    assert any(d["after_header"].endswith("hosts/52-54-00-00-00-01") and "set:gridops-ipxe" in d["after"]
               for d in planned["diff"])
    done = run({"config": server["config"], "nodes": [dict(node, loader="ipxe")]}, capsys)
    assert done["dhcp_reloaded"] and server["marker"].exists()


def test_failed_restart_is_reported(server, capsys):
    run({"config": server["config"], "nodes": [{"mac": MAC, "ip": "10.0.0.11"}]}, capsys)
    out = run({"config": server["config"], "dhcp_restart_command": ["false"],
               "nodes": [{"mac": MAC, "ip": "10.0.0.12"}]}, capsys)
    assert out["failed"] and "the boot files were written, but false failed" in out["msg"]


def test_validation_errors_fail_the_module(server, capsys):
    out = run({"config": server["config"], "nodes": [{"name": "node-1", "mac": MAC,
                                                      "profile": {"kind": "kernel", "kernel": "images/x"}}]}, capsys)
    assert out["failed"] and "node 'node-1' profile kernel.kernel: 'images/x' not found" in out["msg"]


def test_root_and_url_are_required(tmp_path, capsys):
    out = run({"config": str(tmp_path / "none.json"), "nodes": [{"mac": MAC}]}, capsys)
    assert out["failed"] and out["msg"].startswith("root: required")


def test_bad_config_file(tmp_path, capsys):
    path = tmp_path / "netboot.json"
    path.write_text("[1, 2]")
    out = run({"config": str(path), "nodes": []}, capsys)
    assert out["failed"] and "does not hold a JSON object" in out["msg"]
