#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: (c) 2026, gridops.metal developers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import absolute_import, division, print_function

__metaclass__ = type

DOCUMENTATION = r"""
---
module: power
short_description: Power and boot-device control of many nodes over IPMI, with reboot escalation
version_added: 0.1.0
description:
  - Queries or changes the power state and the boot device of a set of nodes through their BMCs
    (IPMI-over-LAN, RMCP+), in one task, in parallel.
  - Runs once, where the BMCs are reachable (usually the deploy server), for the whole set of nodes
    given in O(nodes); most often built from the inventory's C(bmc_*) variables (see the examples).
  - At most O(window) nodes are handled at a time, and a node starts no sooner than O(spacing)
    seconds after the previous one, so that a rack does not draw its inrush current at once.
  - Every node gets its own result. A wrong password, an unreachable BMC or a refused command makes
    that node fail with a clear error while the others proceed; the task fails only when every node
    failed, or when O(fail_on_any=true) and one did.
  - The boot device is set before the power action, and read back from the BMC to check that it
    took.
  - O(state=reboot) climbs an escalation ladder per node, C(soft) (a reboot over ssh), C(hard)
    (IPMI power cycle or reset), C(very_hard) (an operator's command, for example a PDU outlet
    cycle); each level is used only when given, and the first one that succeeds ends the climb.
  - Works with BMCs that answer a SHA-256 cipher offer with SHA-1 (virtualbmc) and with those that
    refuse C(power cycle) (then off, wait for off, on).
author:
  - gridops.metal developers (@gridops)
options:
  nodes:
    description:
      - The nodes to act on, in order. An empty list does nothing.
      - Fields missing here are taken from O(bmc_user), O(bmc_password) and O(bmc_port).
    type: list
    elements: dict
    required: true
    suboptions:
      name:
        description: Name of the node, the key of its result. Must be unique.
        type: str
        required: true
        aliases: [inventory_hostname]
      host:
        description:
          - Address of the node itself, for the C(soft) reboot over ssh and the C({host}) placeholder
            of O(very_hard.command). Defaults to O(nodes[].name).
        type: str
        aliases: [ansible_host]
      bmc_address:
        description: Host name or IP address of the node's BMC.
        type: str
        required: true
      bmc_port:
        description: UDP port of the BMC. Defaults to O(bmc_port).
        type: int
      bmc_user:
        description: BMC user name. Defaults to O(bmc_user).
        type: str
      bmc_password:
        description: BMC password. Defaults to O(bmc_password).
        type: str
  bmc_user:
    description: BMC user name for nodes that do not give O(nodes[].bmc_user).
    type: str
  bmc_password:
    description: BMC password for nodes that do not give O(nodes[].bmc_password).
    type: str
  bmc_port:
    description: UDP port for nodes that do not give O(nodes[].bmc_port).
    type: int
    default: 623
  state:
    description:
      - V(query) changes nothing and reports the power state and the boot device.
      - V(on) powers on; V(off) powers off at once (hard); V(shutdown) asks the OS to power off
        (ACPI soft-off) and fails the node if it is still on after O(timeout).
      - V(reset) resets, V(cycle) powers off and on again (off, wait, on where the BMC refuses
        cycle); both power on a node that is off.
      - V(on), V(off) and V(shutdown) change nothing on a node already in that state; V(reset),
        V(cycle) and V(reboot) always act.
      - V(reboot) climbs the escalation ladder O(soft), O(hard), O(very_hard). Without any of them,
        V(reboot) uses O(hard) with its defaults.
      - Every state but V(query) and V(reboot) waits until the BMC reports the expected power state,
        for at most O(timeout) seconds.
    type: str
    choices: [query, "on", "off", shutdown, reset, cycle, reboot]
    default: query
  boot_device:
    description:
      - Boot device to set before the power action. V(pxe) network boot, V(disk) the first hard
        disk, V(cdrom) the optical drive, V(bios) the firmware's setup, V(default) removes any
        override (the firmware's own order).
      - Set only when the BMC does not already hold it as a valid request; read back afterwards.
      - With O(state=reboot) the node is not rebooted if the boot device cannot be set.
    type: str
    choices: [pxe, disk, cdrom, bios, default]
  boot_persistent:
    description:
      - Ask that O(boot_device) stays for every boot, not only the next one.
      - Some BMCs keep only a one-time device (OpenIPMI's ipmi_sim); the node's result then carries
        a warning.
    type: bool
    default: false
  boot_uefi:
    description: Ask for a UEFI boot of O(boot_device) rather than a legacy BIOS one.
    type: bool
    default: false
  timeout:
    description: Seconds to wait, per node, until the BMC reports the power state a V(state) leads to.
    type: int
    default: 60
  window:
    description: How many nodes are handled at the same time.
    type: int
    default: 25
  spacing:
    description: Seconds between the starts of two nodes (V(0) starts them as fast as O(window) allows).
    type: float
    default: 0
  login_timeout:
    description: Seconds to wait for a BMC to open a session before that node fails.
    type: int
    default: 10
  soft:
    description:
      - The C(soft) level of O(state=reboot), tried first when given, through ssh to O(nodes[].host).
      - It succeeds when O(soft.command) ran and the node then stops answering on O(soft.port)
        within O(soft.timeout) seconds.
      - Host keys are not checked (nodes are reinstalled, their keys change).
    type: dict
    suboptions:
      user:
        description: User to log in as.
        type: str
        default: root
      private_key:
        description: Private key file; without it, ssh's own defaults and agent apply.
        type: path
      port:
        description: ssh port of the nodes.
        type: int
        default: 22
      command:
        description: Command that reboots the node, run by the remote user's shell.
        type: str
        default: reboot
      timeout:
        description: Seconds for the whole level, from the ssh connection until the node is seen down.
        type: int
        default: 60
      connect_timeout:
        description: Seconds to wait for the ssh connection.
        type: int
        default: 10
  hard:
    description:
      - The C(hard) level of O(state=reboot), through the BMC. A node that is off is powered on.
      - It succeeds when the BMC reports the node on again within O(hard.timeout) seconds.
    type: dict
    suboptions:
      method:
        description:
          - V(cycle) powers off and on (off, wait for off, on where the BMC refuses cycle).
          - V(reset) resets; some BMCs (virtualbmc) apply a new boot device only at power-on, not on reset.
        type: str
        choices: [cycle, reset]
        default: cycle
      timeout:
        description: Seconds for the whole level.
        type: int
        default: 60
  very_hard:
    description:
      - The C(very_hard) level of O(state=reboot), tried last when given; used when the BMC is
        broken or the hard level failed.
      - It succeeds when O(very_hard.command) exits with status 0 within O(very_hard.timeout) seconds.
    type: dict
    suboptions:
      command:
        description:
          - The command as a list of arguments, run without a shell on the host that runs the task.
          - Each argument may name C({name}), C({host}), C({bmc_address}) and C({bmc_port}) of the
            node; any other C({...}) is refused before anything runs. Write C({{) and C(}}) for
            literal braces (within Jinja quoting).
        type: list
        elements: str
        required: true
      timeout:
        description: Seconds before the command is killed and the level fails.
        type: int
        default: 120
  fail_on_any:
    description:
      - Fail the task when any node failed. By default it fails only when every node failed, and
        the failed nodes are listed in RV(failed_nodes) and warned about.
    type: bool
    default: false
attributes:
  check_mode:
    description:
      - Queries the BMCs (power state, boot device) without changing anything, and predicts each
        node's result from what they report; credentials and reachability are checked on the way.
      - For O(state=reboot) it predicts the first level that would be tried.
    support: full
  diff_mode:
    description: Shows each node's power state and boot device before and after.
    support: full
requirements:
  - pyghmi (Debian package python3-pyghmi, or pip package pyghmi) on the host that runs the task
  - an ssh client for the C(soft) level
notes:
  - The IPMI session uses RMCP+ (IPMI 2.0) with the strongest algorithm the BMC agrees to.
    RV(nodes.bmc_auth) reports which one was used.
  - OpenIPMI's ipmi_sim keeps every boot device as a one-time request and never marks it valid, so
    the module sets it again on every run (reported as changed).
seealso:
  - module: community.general.ipmi_power
    description: Power state of one host per task.
  - module: community.general.ipmi_boot
    description: Boot device of one host per task.
"""

EXAMPLES = r"""
- name: Power state and boot device of two nodes
  gridops.metal.power:
    nodes:
      - name: node-1
        bmc_address: 10.0.1.1
      - name: node-2
        bmc_address: 10.0.1.2
    bmc_user: admin
    bmc_password: "{{ vault_bmc_password }}"
  register: power_now

# One task on the deploy server for every node of the inventory group `nodes`, with the
# credentials taken from the nodes' inventory variables bmc_address, bmc_port, bmc_user and
# bmc_password (inventory_hostname and ansible_host are aliases of name and host).
- name: Network-boot every node of the reservation, escalating when a node does not go down
  gridops.metal.power:
    nodes: >-
      {{ groups['nodes'] | map('extract', hostvars) | map('dict2items')
         | map('selectattr', 'key', 'in', ['inventory_hostname', 'ansible_host', 'bmc_address',
                                           'bmc_port', 'bmc_user', 'bmc_password'])
         | map('items2dict') | list }}
    boot_device: pxe
    state: reboot
    soft:
      private_key: /root/.ssh/id_ed25519
      timeout: 30
    hard:
      timeout: 60
    very_hard:
      command: [/usr/local/sbin/pdu-outlet, cycle, "{name}"]
    window: 10
    spacing: 0.5
  delegate_to: "{{ groups['deploy_server'][0] }}"
  run_once: true
  register: reboot

- name: Nodes that needed more than a soft reboot
  ansible.builtin.debug:
    msg: "{{ reboot.nodes | dict2items | rejectattr('value.level', 'equalto', 'soft') | map(attribute='key') | list }}"

- name: Power off, failing the task if a single node does not
  gridops.metal.power:
    nodes: "{{ bmc_nodes }}"
    state: "off"
    fail_on_any: true
"""

RETURN = r"""
nodes:
  description:
    - One result per node, keyed by node name.
  returned: always
  type: dict
  contains:
    name:
      description: The node's name.
      type: str
      sample: node-1
    bmc_address:
      description: Address of its BMC.
      type: str
      sample: 10.0.1.1
    bmc_port:
      description: Port of its BMC.
      type: int
      sample: 623
    failed:
      description: Whether this node failed.
      type: bool
      sample: false
    changed:
      description: Whether something was changed (or would be, in check mode) on this node.
      type: bool
      sample: true
    error:
      description: What went wrong, naming the BMC or the command; null when the node did not fail.
      type: str
      sample: "BMC 10.0.1.3:623: login refused: Incorrect password provided (check bmc_user and bmc_password)"
    error_kind:
      description:
        - C(auth), C(unreachable), C(refused), C(timeout), C(protocol) (from the BMC), C(ssh),
          C(command), C(escalation) (every level failed), C(internal); null when the node did not fail.
      type: str
      sample: auth
    previous_power:
      description: Power state before the task, C(on) or C(off); null if the BMC could not be asked.
      type: str
      sample: "off"
    power:
      description: Power state at the end (predicted in check mode); null if unknown.
      type: str
      sample: "on"
    previous_boot_device:
      description:
        - Boot device request held by the BMC before the task, with keys C(device), C(persistent),
          C(uefi) and C(valid) (whether the BMC marks the request valid).
      type: dict
      sample: {"device": "default", "persistent": false, "uefi": false, "valid": false}
    boot_device:
      description: Boot device request held by the BMC at the end, same keys.
      type: dict
      sample: {"device": "pxe", "persistent": false, "uefi": false, "valid": true}
    actions:
      description: What was done (or would be, in check mode), in order.
      type: list
      elements: str
      sample: ["boot device pxe (next boot)", "off+on"]
    level:
      description: With O(state=reboot), the escalation level that succeeded, C(soft), C(hard) or C(very_hard).
      type: str
      sample: hard
    attempts:
      description: With O(state=reboot), each level tried, in order.
      type: list
      elements: dict
      contains:
        level:
          description: C(soft), C(hard) or C(very_hard).
          type: str
        ok:
          description: Whether the level succeeded.
          type: bool
        error:
          description: Why it failed.
          type: str
        elapsed:
          description: Seconds spent in it.
          type: float
      sample: [{"level": "soft", "ok": false, "error": "ssh root@node-2:22: Connection refused", "elapsed": 0.02},
               {"level": "hard", "ok": true, "error": null, "elapsed": 2.1}]
    warnings:
      description: What worked only in part, for example a persistent flag the BMC dropped.
      type: list
      elements: str
      sample: []
    bmc_auth:
      description: RMCP+ authentication algorithm of the session, C(RAKP-HMAC-SHA256) or C(RAKP-HMAC-SHA1).
      type: str
      sample: RAKP-HMAC-SHA1
    started:
      description: Seconds from the start of the task until this node started.
      type: float
      sample: 0.5
    elapsed:
      description: Seconds this node took.
      type: float
      sample: 2.31
failed_nodes:
  description: Names of the nodes that failed.
  returned: always
  type: list
  elements: str
  sample: ["node-3"]
changed_nodes:
  description: Names of the nodes that changed (or would, in check mode).
  returned: always
  type: list
  elements: str
  sample: ["node-1", "node-2"]
elapsed:
  description: Seconds the whole task took.
  returned: always
  type: float
  sample: 3.4
"""

import time

from ansible.module_utils.basic import AnsibleModule, missing_required_lib
from ansible_collections.gridops.metal.plugins.module_utils import _ipmi, _power


def _diff(results):
    def view(res, when):
        return {"power": res["%spower" % when], "boot_device": (res["%sboot_device" % when] or {}).get("device")}

    return {"before": dict((r["name"], view(r, "previous_")) for r in results),
            "after": dict((r["name"], view(r, "")) for r in results)}


def main():
    node_spec = dict(
        name=dict(type="str", required=True, aliases=["inventory_hostname"]),
        host=dict(type="str", aliases=["ansible_host"]),
        bmc_address=dict(type="str", required=True),
        bmc_port=dict(type="int"),
        bmc_user=dict(type="str"),
        bmc_password=dict(type="str", no_log=True),
    )
    module = AnsibleModule(
        argument_spec=dict(
            nodes=dict(type="list", elements="dict", required=True, options=node_spec),
            bmc_user=dict(type="str"),
            bmc_password=dict(type="str", no_log=True),
            bmc_port=dict(type="int", default=623),
            state=dict(type="str", default="query", choices=list(_power.STATES)),
            boot_device=dict(type="str", choices=list(_power.BOOT_DEVICES)),
            boot_persistent=dict(type="bool", default=False),
            boot_uefi=dict(type="bool", default=False),
            timeout=dict(type="int", default=60),
            window=dict(type="int", default=25),
            spacing=dict(type="float", default=0.0),
            login_timeout=dict(type="int", default=10),
            soft=dict(type="dict", options=dict(
                user=dict(type="str", default="root"),
                private_key=dict(type="path", no_log=False),
                port=dict(type="int", default=22),
                command=dict(type="str", default="reboot"),
                timeout=dict(type="int", default=60),
                connect_timeout=dict(type="int", default=10),
            )),
            hard=dict(type="dict", options=dict(
                method=dict(type="str", default="cycle", choices=list(_power.HARD_METHODS)),
                timeout=dict(type="int", default=60),
            )),
            very_hard=dict(type="dict", options=dict(
                command=dict(type="list", elements="str", required=True),
                timeout=dict(type="int", default=120),
            )),
            fail_on_any=dict(type="bool", default=False),
        ),
        supports_check_mode=True,
    )
    p = module.params
    try:
        nodes = _power.normalize_nodes(p["nodes"], p["bmc_user"], p["bmc_password"], p["bmc_port"])
        request = _power.make_request(
            state=p["state"], boot_device=p["boot_device"], boot_persistent=p["boot_persistent"],
            boot_uefi=p["boot_uefi"], timeout=p["timeout"], soft=p["soft"], hard=p["hard"],
            very_hard=p["very_hard"], check_mode=module.check_mode, login_timeout=p["login_timeout"])
        if p["window"] < 1:
            raise _power.PowerInputError("window must be at least 1")
        if p["spacing"] < 0:
            raise _power.PowerInputError("spacing must not be negative")
    except _power.PowerInputError as exc:
        module.fail_json(msg=str(exc))
    if nodes and not _ipmi.HAS_PYGHMI:
        module.fail_json(msg=missing_required_lib("pyghmi"), exception=_ipmi.PYGHMI_IMPORT_ERROR)

    start = time.monotonic()
    results = _power.run(nodes, request, window=p["window"], spacing=p["spacing"])
    summary = _power.summarize(results)
    out = dict(
        changed=bool(summary["changed_nodes"]),
        nodes=dict((r["name"], r) for r in results),
        failed_nodes=summary["failed_nodes"],
        changed_nodes=summary["changed_nodes"],
        elapsed=round(time.monotonic() - start, 3),
        msg=summary["msg"],
    )
    if module._diff:
        out["diff"] = _diff(results)
    for res in results:
        if res["failed"]:
            module.warn("%s: %s" % (res["name"], res["error"]))
        for text in res["warnings"]:
            module.warn("%s: %s" % (res["name"], text))
    if results and (len(summary["failed_nodes"]) == len(results) or (p["fail_on_any"] and summary["failed_nodes"])):
        module.fail_json(**out)
    module.exit_json(**out)


if __name__ == "__main__":
    main()
