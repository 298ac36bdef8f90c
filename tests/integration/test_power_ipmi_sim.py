"""gridops.metal.power against real ipmi_sim BMCs (no machines behind them).

Each BMC is OpenIPMI's ipmi_sim over IPMI-over-LAN in a fresh namespace,
configured from the lab's templates, with a stub chassis control that keeps
the power state in a file and logs every request it gets (gridops_test.bmcs).
That gives the BMC side of every state, boot device and fault, and a record
of what reached each BMC and when; the QEMU-backed tests
(test_power_qemu.py) show the same on real machines.
"""
import json
import sys

import pytest

from gridops_test import ansible_run, bmcs, procs

pytestmark = [pytest.mark.root]


@pytest.fixture
def farm(netns, tmp_path):
    farm = bmcs.IpmiSimFarm(netns.name, tmp_path / "bmcs", 6)
    try:
        yield farm.start()
    finally:
        farm.close()


def sets(farm, name):
    return [what for _stamp, what in farm.events(name)]


def by_name(results):
    return dict((r["name"], r) for r in results["results"])


def test_states_change_what_the_bmc_reports(farm, netns):
    ns = netns.name
    nodes = farm.nodes()[:3]
    names = [n["name"] for n in nodes]
    addr = dict((b["name"], b["address"]) for b in farm.bmcs)

    res = by_name(bmcs.run_engine(ns, nodes, state="query"))
    assert [res[n]["previous_power"] for n in names] == ["off"] * 3
    assert all(not r["changed"] and not r["failed"] for r in res.values())
    assert all(sets(farm, n) == [] for n in names)

    res = by_name(bmcs.run_engine(ns, nodes, state="on"))
    for n in names:
        assert res[n]["changed"] and res[n]["actions"] == ["on"] and res[n]["power"] == "on"
        assert sets(farm, n) == ["set power 1"]
        assert bmcs.ipmitool_power(ns, addr[n]) == "on"
    # Idempotent: already on, nothing sent.
    res = by_name(bmcs.run_engine(ns, nodes, state="on"))
    assert not any(r["changed"] for r in res.values())
    assert sets(farm, names[0]) == ["set power 1"]

    res = by_name(bmcs.run_engine(ns, nodes[:1], state="reset"))
    assert res[names[0]]["actions"] == ["reset"] and res[names[0]]["power"] == "on"
    assert sets(farm, names[0])[-1] == "set reset 1"

    # ipmi_sim does the cycle itself: off, then on after its one-second poll.
    res = by_name(bmcs.run_engine(ns, nodes[:1], state="cycle"))
    assert res[names[0]]["actions"] == ["cycle"] and res[names[0]]["power"] == "on"
    assert sets(farm, names[0])[-2:] == ["set power 0", "set power 1"]

    res = by_name(bmcs.run_engine(ns, nodes[:1], state="shutdown"))
    assert res[names[0]]["actions"] == ["shutdown"] and res[names[0]]["power"] == "off"
    assert sets(farm, names[0])[-1] == "set shutdown 1"
    assert bmcs.ipmitool_power(ns, addr[names[0]]) == "off"

    # reset and cycle power on a node that is off; off powers off.
    res = by_name(bmcs.run_engine(ns, nodes, state="cycle"))
    assert res[names[0]]["actions"] == ["on (was off)"] and res[names[1]]["actions"] == ["cycle"]
    res = by_name(bmcs.run_engine(ns, nodes, state="off"))
    assert all(r["actions"] == ["off"] and r["power"] == "off" for r in res.values())
    assert [bmcs.ipmitool_power(ns, addr[n]) for n in names] == ["off"] * 3


@pytest.mark.parametrize("device, ipmitool_says", [
    ("pxe", "Force PXE"), ("disk", "Force Boot from default Hard-Drive"),
    ("cdrom", "Force Boot from CD/DVD"), ("bios", "Force Boot into BIOS Setup"),
])
def test_boot_device_is_set_and_read_back(farm, netns, device, ipmitool_says):
    ns = netns.name
    nodes = farm.nodes()[:1]
    name, address = nodes[0]["name"], farm.bmcs[0]["address"]
    (res,) = bmcs.run_engine(ns, nodes, state="query", boot_device=device)["results"]
    assert not res["failed"] and res["changed"]
    assert res["actions"] == ["boot device %s (next boot)" % device]
    assert res["boot_device"]["device"] == device
    assert bmcs.ipmitool_bootdev(ns, address) == ipmitool_says
    assert sets(farm, name)[-1].startswith("set boot ")


def test_boot_device_persistence_dropped_is_a_warning(farm, netns):
    """ipmi_sim passes only the device to its chassis control, never the persistent flag."""
    (res,) = bmcs.run_engine(netns.name, farm.nodes()[:1], state="query", boot_device="pxe",
                             boot_persistent=True)["results"]
    assert not res["failed"] and res["boot_device"]["device"] == "pxe"
    assert res["boot_device"]["persistent"] is False
    assert res["warnings"] == ["the BMC took boot device pxe but dropped the persistent flag"]
    # `default` removes the override.
    (res,) = bmcs.run_engine(netns.name, farm.nodes()[:1], boot_device="default")["results"]
    assert res["boot_device"]["device"] == "default"
    assert sets(farm, farm.bmcs[0]["name"])[-1] == "set boot none"


def test_faults_stay_with_their_node(farm, netns):
    """Wrong password, unreachable BMC, refused and ignored commands: the others proceed."""
    names = [b["name"] for b in farm.bmcs]
    farm.fault(names[2], "refuse-power")
    farm.fault(names[3], "ignore-power")
    farm.fault(names[4], "ignore-boot")
    nodes = farm.nodes(**{names[0]: {"bmc_password": "not-the-password"},
                          names[1]: {"bmc_address": "10.214.99.99"}})
    res = by_name(bmcs.run_engine(netns.name, nodes, state="on", boot_device="disk", timeout=3,
                                  login_timeout=2))
    assert res[names[0]]["error_kind"] == "auth"
    assert res[names[0]]["error"] == ("BMC 10.214.0.10:623: login refused: Incorrect password provided "
                                      "(check bmc_user and bmc_password)")
    assert res[names[1]]["error_kind"] == "unreachable"
    assert res[names[1]]["error"].startswith("BMC 10.214.99.99:623: no answer within 2s")
    assert res[names[2]]["error_kind"] == "protocol"
    # ipmi_sim answers "unspecified error" when its chassis control fails.
    assert res[names[2]]["error"] == "BMC 10.214.0.12:623: chassis power on refused: Unspecified (0xff)"
    assert res[names[3]]["error_kind"] == "timeout"
    assert res[names[3]]["error"] == "BMC 10.214.0.13:623: power still off 3s after the request (wanted on)"
    assert res[names[4]]["error_kind"] == "refused"
    assert res[names[4]]["error"] == "BMC 10.214.0.14:623: asked for boot device disk, the BMC keeps default"
    assert sets(farm, names[4]) == ["set boot default"]  # and no power-on: it would boot the wrong thing
    good = res[names[5]]
    assert not good["failed"] and good["power"] == "on" and good["boot_device"]["device"] == "disk"
    # Failed nodes changed nothing they could not see through.
    assert farm.power(names[0]) == farm.power(names[1]) == "off"


def test_window_and_spacing_at_the_bmcs(farm, netns):
    """Nodes start at least `spacing` apart, at most `window` at a time; the BMCs see it."""
    res = bmcs.run_engine(netns.name, farm.nodes(), state="on", window=2, spacing=0.3)
    starts = [r["started"] for r in res["results"]]
    assert all(b - a >= 0.29 for a, b in zip(starts, starts[1:])), starts
    spans = [(r["started"], r["started"] + r["elapsed"]) for r in res["results"]]
    for start, _end in spans:
        assert sum(1 for s, e in spans if s <= start < e) <= 2
    # Every BMC got its request.  (When they arrive depends on each session's login
    # time, which a loaded machine stretches: the spacing is checked at the engine.)
    assert all(farm.events(b["name"]) for b in farm.bmcs)


def test_module_end_to_end(farm, netns):
    """Through ansible-playbook: check mode sends nothing, then the real run, failures per node."""
    names = [b["name"] for b in farm.bmcs]
    farm.set_power(names[1], "on")
    nodes = farm.nodes(**{names[5]: {"bmc_password": "not-the-password"}})
    args = {"nodes": nodes, "state": "off", "boot_device": "pxe", "login_timeout": 3}

    res, _wall = bmcs.run_module(netns.name, args, check_mode=True, diff=True)
    assert not res.get("failed"), res
    assert res["changed"] and res["failed_nodes"] == [names[5]]
    assert res["nodes"][names[1]]["actions"] == ["boot device pxe (next boot)", "off"]
    assert res["nodes"][names[0]]["actions"] == ["boot device pxe (next boot)"]
    assert res["nodes"][names[1]]["previous_power"] == "on" and res["nodes"][names[1]]["power"] == "off"
    assert all(sets(farm, n) == [] for n in names), "check mode sent a request"
    assert res["diff"]["before"][names[1]] == {"power": "on", "boot_device": "default"}
    assert res["diff"]["after"][names[1]] == {"power": "off", "boot_device": "pxe"}

    res, _wall = bmcs.run_module(netns.name, args)
    assert not res.get("failed"), res
    assert res["failed_nodes"] == [names[5]] and res["nodes"][names[5]]["error_kind"] == "auth"
    assert sorted(res["changed_nodes"]) == names[:5]
    assert farm.power(names[1]) == "off" and sets(farm, names[1]) == ["set boot pxe", "set power 0"]
    assert res["warnings"] == ["%s: BMC 10.214.0.15:623: login refused: Incorrect password provided "
                               "(check bmc_user and bmc_password)" % names[5]]
    # Secrets never come back.
    assert bmcs.PASSWORD not in json.dumps(res) and "not-the-password" not in json.dumps(res)

    (res, alone), _wall, _out = bmcs.run_module_tasks(netns.name, [dict(args, fail_on_any=True),
                                                                   dict(args, nodes=nodes[5:])])
    assert res.get("failed") and res["failed_nodes"] == [names[5]]
    # ipmi_sim never marks a boot device valid, so it is set again: changed.
    assert res["changed"] and res["nodes"][names[1]]["actions"] == ["boot device pxe (next boot)"]
    # When every node failed, the task fails.
    assert alone.get("failed") and alone["msg"] == "1 node(s): 0 changed, 1 failed"


BAD_ARGUMENTS = [
    ({"state": "hibernate"}, "value of state must be one of: query, on, off, shutdown, reset, cycle, reboot"),
    ({"boot_device": "floppy"}, "value of boot_device must be one of: pxe, disk, cdrom, bios, default"),
    ({"state": "reboot", "very_hard": {"command": ["pdu", "{outlet}"]}}, "names {outlet}"),
    ({"window": 0}, "window must be at least 1"),
    ({"state": "reboot", "soft": {"passphrase": "x"}}, "Unsupported parameters"),
]


def test_bad_arguments_are_refused_before_anything_is_sent(farm, netns):
    results, _wall, _out = bmcs.run_module_tasks(
        netns.name, [dict({"nodes": farm.nodes()}, **args) for args, _message in BAD_ARGUMENTS])
    for res, (_args, message) in zip(results, BAD_ARGUMENTS):
        assert res.get("failed") and message in res["msg"], res["msg"]
        assert "nodes" not in res
    assert all(farm.events(b["name"]) == [] for b in farm.bmcs)


def test_reboot_ladder_on_bmcs(farm, netns, tmp_path):
    """No sshd at the nodes: soft fails, hard cycles; a stopped BMC gets the operator's command."""
    names = [b["name"] for b in farm.bmcs]
    farm.set_power(names[0], "on")
    farm.stop_bmc(names[2])
    pdu_log = tmp_path / "pdu.log"
    # The "PDU" of this farm: turns the stub's power file on.
    pdu = ["sh", "-c", 'echo "$1 $2" >> %s && echo 1 > %s/"$1"/power' % (pdu_log, farm.base), "pdu",
           "{name}", "{bmc_address}"]
    nodes = [dict(n, host=n["bmc_address"]) for n in farm.nodes()[:3]]
    res = by_name(bmcs.run_engine(netns.name, nodes, state="reboot", login_timeout=2,
                                  soft={"connect_timeout": 2, "timeout": 5}, hard={"timeout": 10},
                                  very_hard={"command": pdu, "timeout": 10}))
    for n in names[:2]:
        assert res[n]["level"] == "hard" and res[n]["power"] == "on", res[n]
        assert [a["level"] for a in res[n]["attempts"]] == ["soft", "hard"]
        assert "Connection refused" in res[n]["attempts"][0]["error"]
    assert res[names[0]]["actions"] == ["cycle"] and res[names[1]]["actions"] == ["on (was off)"]
    broken = res[names[2]]
    assert broken["level"] == "very_hard" and not broken["failed"]
    assert "no answer within 2s" in broken["attempts"][1]["error"]
    assert pdu_log.read_text() == "%s 10.214.0.12\n" % names[2]
    assert farm.power(names[2]) == "on"


def test_many_bmcs_at_once(netns, tmp_path):
    """60 sessions in threads at once, with retries: pyghmi's two global locks taken in
    both orders used to deadlock here now and then (see _ipmi.py)."""
    farm = bmcs.IpmiSimFarm(netns.name, tmp_path / "many", 60)
    try:
        farm.start()
        for state in ("query", "on", "query", "cycle"):
            res = bmcs.run_engine(netns.name, farm.nodes(), window=60, state=state, proc_timeout=120)
            assert [r["error"] for r in res["results"] if r["failed"]] == []
        assert all(farm.power(b["name"]) == "on" for b in farm.bmcs)
    finally:
        farm.close()


def test_one_task_for_an_inventory_group(farm, netns, tmp_path):
    """The documented way: nodes built from the `nodes` group's bmc_* host variables."""
    hosts = dict(("node-%d" % i, {"ansible_host": "192.0.2.%d" % (10 + i), "bmc_address": b["address"],
                                  "bmc_port": 623, "bmc_user": farm.user, "bmc_password": farm.password,
                                  "bmc_kind": "ipmi_sim", "mac": "52:54:00:00:00:%02x" % i})
                 for i, b in enumerate(farm.bmcs[:3]))
    inventory = tmp_path / "inventory.yml"
    inventory.write_text(json.dumps({"all": {"children": {
        "nodes": {"hosts": hosts},
        "deploy_server": {"hosts": {"localhost": {"ansible_connection": "local",
                                                  "ansible_python_interpreter": sys.executable}}}}}}))
    result = tmp_path / "result.json"
    playbook = tmp_path / "power.yml"
    playbook.write_text("""\
- name: Power on the reservation's nodes from the deploy server
  hosts: deploy_server
  gather_facts: false
  tasks:
    - name: Power on every node of the group
      gridops.metal.power:
        nodes: >-
          {{ groups['nodes'] | map('extract', hostvars) | map('dict2items')
             | map('selectattr', 'key', 'in', ['inventory_hostname', 'ansible_host', 'bmc_address',
                                               'bmc_port', 'bmc_user', 'bmc_password'])
             | map('items2dict') | list }}
        state: "on"
      register: power
    - name: Keep the result
      ansible.builtin.copy:
        content: "{{ power | to_json }}"
        dest: %s
        mode: "0600"
""" % json.dumps(str(result)))
    proc = procs.run(["ansible-playbook", "-i", str(inventory), str(playbook)], netns=netns.name, check=False,
                     env=ansible_run.env(), cwd=str(ansible_run.REPO), timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-2000:]
    res = json.loads(result.read_text())
    assert sorted(res["nodes"]) == ["node-0", "node-1", "node-2"]
    assert all(r["power"] == "on" and r["actions"] == ["on"] for r in res["nodes"].values())
    assert [farm.power(b["name"]) for b in farm.bmcs[:4]] == ["on", "on", "on", "off"]
