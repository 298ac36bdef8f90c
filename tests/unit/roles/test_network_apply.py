# -*- coding: utf-8 -*-
# Copyright: (c) 2026, gridops.metal developers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The network role's apply agent: live switch, commit on confirmation, rollback otherwise (commands faked)."""

from __future__ import absolute_import, division, print_function
__metaclass__ = type

import argparse
import importlib.util
import os
import threading
import time

import pytest

AGENT = os.path.join(os.path.dirname(__file__), "..", "..", "..", "roles", "network", "files", "gridops_network_apply.py")
PREFIX = "10-gridops-"

BR0_DHCP = "[NetDev]\nName=br0\nKind=bridge\n"
BR0_NET = "[Match]\nName=br0\n\n[Network]\nDHCP=ipv4\n"
ETH0_PORT = "[Match]\nName=eth0\n\n[Network]\nBridge=br0\n"
BOND = "[NetDev]\nName=bond0\nKind=bond\n\n[Bond]\nMode=active-backup\n"
BOND_NET = "[Match]\nName=bond0\n\n[Network]\nVLAN=bond0.10\n"
ETH1 = "[Match]\nName=eth1\n\n[Network]\nBond=bond0\n"


@pytest.fixture
def agent(monkeypatch, tmp_path):
    spec = importlib.util.spec_from_file_location("gridops_network_apply", AGENT)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    links = set(["lo", "eth0", "eth1", "eth2"])
    calls = []

    def run_cmd(argv, check=True):
        calls.append(list(argv))
        if argv[:3] == ["ip", "link", "delete"]:
            links.discard(argv[3])
        if argv[:2] == ["networkctl", "reload"]:
            # networkd makes every device that has a .netdev file and does not exist yet.
            for name, content in mod.managed_files(str(tmp_path / "net"), PREFIX).items():
                if name.endswith(".netdev"):
                    links.add(mod.netdev_name(content))
        return 0, ""

    monkeypatch.setattr(mod, "run_cmd", run_cmd)
    monkeypatch.setattr(mod, "link_exists", lambda name: name in links)
    monkeypatch.setattr(mod, "ping", lambda host, timeout=1: host != "192.0.2.99")
    (tmp_path / "net").mkdir()
    mod.test_links, mod.test_calls = links, calls
    return mod


def args(tmp_path, **kw):
    values = dict(dir=str(tmp_path / "net"), prefix=PREFIX, state=str(tmp_path / "state"), timeout=2, settle=1,
                  check_host=[], check=False)
    values.update(kw)
    return argparse.Namespace(**values)


def write(tmp_path, files):
    for name, content in files.items():
        (tmp_path / "net" / name).write_text(content)
    (tmp_path / "net" / "80-other.network").write_text("[Match]\nName=eth0\n")   # not ours: never touched


def staged(agent, tmp_path, wanted, **kw):
    started = []
    report = agent.apply(args(tmp_path, **kw), wanted, start=lambda a, tx: started.append(tx))
    return report, (started[0] if started else None)


def test_no_change_stages_nothing(agent, tmp_path):
    write(tmp_path, {PREFIX + "br0.netdev": BR0_DHCP})
    report, tx = staged(agent, tmp_path, {PREFIX + "br0.netdev": BR0_DHCP})
    assert report == {"added": [], "removed": [], "modified": [], "changed": False, "id": None} and tx is None
    report, tx = staged(agent, tmp_path, {}, check=True)
    assert report["removed"] == [PREFIX + "br0.netdev"] and report["changed"] is True and tx is None


def test_foreign_file_names_are_refused(agent, tmp_path):
    with pytest.raises(agent.ApplyError, match="must start with 10-gridops-"):
        staged(agent, tmp_path, {"99-evil.network": "x"})


def test_confirmed_change_is_committed(agent, tmp_path):
    write(tmp_path, {})
    wanted = {PREFIX + "br0.netdev": BR0_DHCP, PREFIX + "br0.network": BR0_NET, PREFIX + "eth0.network": ETH0_PORT}
    report, tx = staged(agent, tmp_path, wanted, check_host=["192.0.2.1"])
    assert report["added"] == sorted(wanted) and tx.status()["state"] == "staged"
    confirmer = threading.Thread(target=lambda: agent.confirm(tx, 10))
    confirmer.start()
    status = agent.run_transaction(tx, sleep=lambda s: time.sleep(0.01))
    confirmer.join()
    assert status["state"] == "committed"
    assert agent.managed_files(str(tmp_path / "net"), PREFIX) == wanted
    assert ["networkctl", "reload"] in agent.test_calls
    assert ["networkctl", "reconfigure", "eth0"] in agent.test_calls   # br0 did not exist before: networkd makes it
    assert (tmp_path / "net" / "80-other.network").exists()


def test_no_confirmation_rolls_back_and_deletes_what_was_made(agent, tmp_path):
    old = {PREFIX + "bond0.netdev": BOND, PREFIX + "bond0.network": BOND_NET, PREFIX + "eth1.network": ETH1}
    write(tmp_path, old)
    agent.test_links.add("bond0")
    new_bond = BOND.replace("active-backup", "802.3ad")
    wanted = {PREFIX + "bond0.netdev": new_bond, PREFIX + "eth1.network": ETH1, PREFIX + "br0.netdev": BR0_DHCP,
              PREFIX + "br0.network": BR0_NET, PREFIX + "eth0.network": ETH0_PORT}
    report, tx = staged(agent, tmp_path, wanted, timeout=0)
    assert report["modified"] == [PREFIX + "bond0.netdev"] and report["removed"] == [PREFIX + "bond0.network"]
    status = agent.run_transaction(tx, sleep=lambda s: None)
    assert status["state"] == "rolled-back" and "not confirmed within 0s" in status["reason"]
    assert agent.managed_files(str(tmp_path / "net"), PREFIX) == old
    deletes = [c[3] for c in agent.test_calls if c[:3] == ["ip", "link", "delete"]]
    # bond0 changed mode: deleted to be made anew, twice (forward, back); br0 came with the change: deleted back.
    assert deletes == ["bond0", "bond0", "br0"]
    assert "br0" not in agent.test_links and "bond0" in agent.test_links
    assert agent.confirm(tx, 1)["state"] == "rolled-back"   # a late confirmation changes nothing
    assert not os.path.exists(tx.path("confirmed"))


def test_failed_local_check_rolls_back_at_once(agent, tmp_path):
    report, tx = staged(agent, tmp_path, {PREFIX + "br0.netdev": BR0_DHCP}, check_host=["192.0.2.99"], timeout=60)
    started = time.monotonic()
    status = agent.run_transaction(tx, sleep=lambda s: None)
    assert status["state"] == "rolled-back" and "no answer from 192.0.2.99" in status["reason"]
    assert time.monotonic() - started < 10
    assert agent.managed_files(str(tmp_path / "net"), PREFIX) == {}


def test_one_change_at_a_time_and_old_transactions_pruned(agent, tmp_path):
    state = tmp_path / "state"
    for i in range(8):
        (state / ("old%d" % i)).mkdir(parents=True)
    with agent.state_lock(str(state)):
        with pytest.raises(agent.ApplyError, match="another network change is in progress"):
            staged(agent, tmp_path, {PREFIX + "br0.netdev": BR0_DHCP})
    report, tx = staged(agent, tmp_path, {PREFIX + "br0.netdev": BR0_DHCP})
    assert len([p for p in state.iterdir() if p.is_dir()]) == agent.KEEP_TRANSACTIONS + 1
