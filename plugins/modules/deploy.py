#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: (c) 2026, gridops.metal developers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import absolute_import, division, print_function
__metaclass__ = type

DOCUMENTATION = r"""
---
module: deploy
short_description: Deploy an environment onto the disks of many nodes at once and boot them into it
version_added: 0.1.0
description:
  - Runs once on the deploy server for a whole set of nodes (Kadeploy's model) and takes them through three
    macro-steps, each a list of attempts O(steps) (a variant, retries and a timeout) tried in order; after each
    attempt the nodes split into OK and KO, and only the KO ones go on to the next attempt.
  - C(SetDeploymentEnv) - variant V(reboot) sets the nodes' netboot profile to C(deploy) (as M(gridops.metal.netboot)),
    reboots them through the escalation ladder of M(gridops.metal.power) (soft by SSH with the deploy key, hard by
    IPMI, very hard by a command) and waits for the deploy ramdisk's SSH; variant V(current) expects the nodes to run
    it already. Then it reads each disk, partitions it by O(cluster_template) and makes the file systems.
  - C(BroadcastEnv) - variant V(chain) streams the compressed image through a pipelined chain
    (server, node 1, node 2, ...), each node writing it to its disk while forwarding it; a node that dies mid-stream is
    cut out and the others finish. Variant V(pull) has every node fetch it from a one-off HTTP server on the deploy
    server. The image's sha256 is checked on every node before its postinstall (host name, fstab, O(authorized_keys),
    new SSH host keys, an emptied machine-id, the environment's postinstall hooks, then O(postinstall)) and its boot
    loader (extlinux in the deploy partition, the MBR code on the disk).
  - C(BootNewEnv) - sets the netboot profile to C(local) (or to the environment's kernel when the cluster template's
    C(boot) is V(kernel)), reboots, and waits until the node answers SSH as the new system (another SSH banner than
    the ramdisk's, and the host key made for it in postinstall).
  - Before any node is touched, the call is refused with a message naming the field when a node has no facts, the
    environment is unknown or its image's sha256 is not the registered one, the cluster template is wrong or does not
    fit a disk whose size is known (C(disk_size)), or O(user) has no right on a node (M(gridops.metal.rights)).
  - A partition whose role is V(keep) is never written; a disk whose partition table does not match the template is
    repartitioned only when the template keeps nothing.
  - The result lists, per node, its final state (C(deployed) or C(failed)), the failed macro-step and micro-step with
    the error, and every step's duration; the run is recorded in the registry's history (see O(history)).
  - Live progress goes to O(progress_file) (JSON, rewritten every second), and the module's action prints a line of
    it every O(progress_interval) seconds while the deployment runs.
author:
  - gridops.metal developers (@gridops)
options:
  nodes:
    description:
      - The nodes to deploy, as names or host ranges (C(node-[1-3])). Each must have facts in O(node_facts).
      - Nothing is done to any node that is not listed.
    type: list
    elements: str
    required: true
  node_facts:
    description:
      - Per node name, its inventory facts - C(mac), C(ip) (required), C(bmc_address), C(bmc_port), C(bmc_user),
        C(bmc_password), C(disk_device) (overrides the template's C(disk)), C(disk_size) (e.g. V(8G); lets the
        template be checked before anything is touched). Other keys are ignored, so C(hostvars) of the nodes will do.
    type: dict
    required: true
  environment:
    description:
      - The environment, C(name) or C(name:version), from the registry, as seen by O(user) (see
        M(gridops.metal.environment)).
      - Exactly one of O(environment) and O(environment_file).
    type: str
  environment_owner:
    description: The owner of a shared environment of another user.
    type: str
  environment_file:
    description:
      - An environment description file (YAML or JSON) on the deploy server, instead of a registered environment.
        It is checked as M(gridops.metal.environment) checks one, and its image's sha256 must match.
    type: path
  cluster_template:
    description:
      - How the nodes' disks are laid out.
      - C(disk) - the disk device (default V(/dev/sda)); a node's C(disk_device) fact wins.
      - C(label) - V(msdos) (default) or V(gpt).
      - C(boot) - V(disk) (default; the node boots its disk by itself through extlinux) or V(kernel) (the node
        network-boots the environment's kernel, copied to the boot root, with its root on the disk).
      - C(partitions) - a list of C(name), C(role) and C(size) (V(512M), V(8G), V(rest) for what is left; one at most).
        Roles - V(deploy) (exactly one - the image goes there), V(swap), V(tmp) (formatted every time, mounted on
        C(/tmp)), V(data) (formatted only when the table is written; C(mount) names its mount point), V(keep) (never
        written; its presence forbids rewriting a table that does not match). Optional C(filesystem) (the
        environment's for V(deploy), else V(ext4)), C(mount), C(options).
    type: dict
    required: true
  authorized_keys:
    description: Public SSH keys let in as root on the deployed system.
    type: list
    elements: str
    default: []
  postinstall:
    description:
      - Hooks run after the environment's own, each with C(script) (a file on the deploy server), C(content) (the
        script's text) or C(archive) (a tar file on the deploy server, unpacked, then C(run), a path inside it, is
        run); C(args); C(chroot) (default V(true) - run inside the new system, with C(/dev), C(/proc) and C(/sys)
        bound; V(false) - run in the deploy ramdisk with the new system at C($GRIDOPS_ROOT)); C(name).
      - Hooks see C(GRIDOPS_NODE), C(GRIDOPS_ROOT), C(GRIDOPS_DISK) and C(GRIDOPS_ENVIRONMENT). A hook that fails fails
        its node at C(BroadcastEnv)/C(postinstall).
    type: list
    elements: dict
    default: []
  kernel_params:
    description: Kernel parameters added to the environment's.
    type: str
    default: ""
  user:
    description:
      - The user deploying; the environment is looked up as this user and their rights are checked (default the
        user the module runs as).
    type: str
  admins:
    description: Users whose rights are not checked (Kadeploy's administrators).
    type: list
    elements: str
    default: [root]
  steps:
    description:
      - Per macro-step (C(set_deployment_env), C(broadcast_env), C(boot_new_env)), the attempts tried in order, each
        C(variant), C(retries) (extra tries of that variant) and C(timeout) (seconds).
      - Variants - C(set_deployment_env) V(reboot), V(current); C(broadcast_env) V(chain), V(pull);
        C(boot_new_env) V(reboot).
      - Defaults - set_deployment_env [reboot, 1 retry, 600 s]; broadcast_env [chain, 1 retry, 1800 s], then [pull,
        0 retries, 1800 s]; boot_new_env [reboot, 1 retry, 600 s].
    type: dict
    default: {}
  reboot:
    description:
      - The escalation ladder of the reboots, as M(gridops.metal.power) takes it - C(soft), C(hard), C(very_hard)
        (each a mapping of that level's options; C(soft) gets the deploy key). Default - soft then hard.
      - C(window) (default 25), C(spacing) (seconds between two nodes), C(login_timeout), and C(boot_device_pxe)
        (also set the next boot device to PXE over IPMI; default V(false) - nodes are expected to boot from the
        network first, their netboot profile decides).
    type: dict
    default: {}
  bmc_user:
    description: The BMC user of nodes whose facts have none.
    type: str
  bmc_password:
    description: The BMC password of nodes whose facts have none.
    type: str
  window:
    description: How many nodes are worked on at once in the per-node micro-steps (SSH sessions).
    type: int
    default: 32
  broadcast_port:
    description: The TCP port the chain's nodes listen on (0 - the broadcast engine's default).
    type: int
    default: 0
  server_address:
    description:
      - The deploy server's address on the nodes' network, for the V(pull) variant (default - the host of the netboot
        configuration's C(http_url)).
    type: str
  deploy_env_config:
    description: The deploy environment's description that M(gridops.metal.deploy_env)'s role writes (its SSH key).
    type: path
    default: /etc/gridops-metal/deploy_env.json
  netboot_config:
    description: The netboot configuration that the C(pxe_server) role writes.
    type: path
    default: /etc/gridops-pxe/netboot.json
  registry:
    description: The registry (environments, rights, history).
    type: path
    default: /var/lib/gridops-metal/registry.sqlite
  history:
    description: Record the deployment in the registry's history (see M(gridops.metal.deploy_history)).
    type: bool
    default: true
  progress_file:
    description:
      - Where the live progress is written (JSON, every second); default
        C(/var/lib/gridops-metal/deployments/<id>.json). The deployment id is also in the result.
    type: path
  progress_interval:
    description:
      - How often (seconds) the C(deploy) action prints a line of the live progress in the playbook's output
        (nodes per step, MiB broadcast, the last event) while the module runs in the background on the deploy
        server. V(0) - run the module in the foreground, silently (so does a task with its own C(async)).
    type: float
    default: 10
notes:
  - check_mode returns the plan (nodes, steps, the partitions of every disk whose size is known, the environment)
    after every check, and touches nothing.
  - The deploy ramdisk needs busybox (nc, tee, mkfifo, sha256sum, wget), sfdisk, mkfs, tar with the image's
    decompressor and extlinux, as the C(deploy_env) role builds it.
seealso:
  - module: gridops.metal.environment
  - module: gridops.metal.rights
  - module: gridops.metal.netboot
  - module: gridops.metal.power
  - module: gridops.metal.deploy_history
"""

EXAMPLES = r"""
- name: Deploy Debian 12 on the nodes of the play
  gridops.metal.deploy:
    nodes: "{{ groups['nodes'] }}"
    node_facts: "{{ dict(groups['nodes'] | zip(groups['nodes'] | map('extract', hostvars))) }}"
    environment: debian12
    cluster_template:
      disk: /dev/vda
      partitions:
        - {name: swap, role: swap, size: 256M}
        - {name: root, role: deploy, size: rest}
    authorized_keys:
      - "{{ lookup('ansible.builtin.file', '~/.ssh/id_ed25519.pub') }}"
    postinstall:
      - content: |
          #!/bin/sh
          echo "deployed by gridops.metal" > /etc/motd
  register: deployment

- name: Keep the production partition, deploy on the second one
  gridops.metal.deploy:
    nodes: ["node-[1-40]"]
    node_facts: "{{ cluster_facts }}"
    environment: debian12:3
    user: alice
    cluster_template:
      disk: /dev/sda
      label: gpt
      partitions:
        - {name: prod, role: keep, size: 100G}
        - {name: deploy, role: deploy, size: 30G}
        - {name: tmp, role: tmp, size: rest}
    steps:
      broadcast_env: [{variant: chain, retries: 2, timeout: 900}]
"""

RETURN = r"""
id:
  description: The deployment's id (also its history entry and progress file name).
  returned: always
  type: str
  sample: 20261121T101500Z-3fa2c1
nodes:
  description:
    - Per node - C(name), C(ip), C(state) (deployed, failed, or planned in check mode), C(failed_step),
      C(failed_micro_step), C(error), C(steps) (per macro-step - variant, ok, seconds, tries), C(micro_steps) (each
      with seconds, ok and error), C(attempts) (power escalation and broadcast details), C(host_key) (the new
      system's ed25519 host key) and C(seconds).
  returned: always
  type: list
  elements: dict
deployed_nodes:
  description: The names of the deployed nodes.
  returned: always
  type: list
  elements: str
failed_nodes:
  description: The names of the failed nodes.
  returned: always
  type: list
  elements: str
plan:
  description: What the deployment does - nodes, environment, steps, and per node its disk and partitions.
  returned: always
  type: dict
broadcasts:
  description: Each broadcast pass - method, nodes, ok, seconds, bytes.
  returned: when not check mode
  type: list
  elements: dict
seconds:
  description: The deployment's wall time.
  returned: when not check mode
  type: float
"""

import json
import os
import pwd

from ansible.module_utils.basic import AnsibleModule, missing_required_lib
from ansible_collections.gridops.metal.plugins.module_utils import (
    _deploy, _environments, _power, _pxe, _registry, _rights,
)


def load_description(module, path):
    try:
        with open(path) as fh:
            text = fh.read()
    except (IOError, OSError) as exc:
        module.fail_json(msg="environment_file: cannot read %s: %s" % (path, exc), field="environment_file")
    try:
        return json.loads(text)
    except ValueError:
        pass
    try:
        import yaml
    except ImportError:
        module.fail_json(msg=missing_required_lib("PyYAML (python3-yaml) to read %s" % path), field="environment_file")
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as exc:
        module.fail_json(msg="environment_file: %s is not YAML: %s" % (path, exc), field="environment_file")


def find_environment(module, reg, user):
    params = module.params
    if bool(params["environment"]) == bool(params["environment_file"]):
        raise _deploy.DeployError("environment: exactly one of environment and environment_file is needed")
    if params["environment_file"]:
        env = _environments.normalize(load_description(module, params["environment_file"]))
        env.setdefault("version", 1)
    else:
        name, _sep, version = params["environment"].partition(":")
        if version and not version.isdigit():
            raise _deploy.DeployError("environment: %r is not name or name:version" % params["environment"])
        env = _environments.show(reg, name, user, owner=params["environment_owner"],
                                 version=int(version) if version else None)
    image = env["image"]
    if not os.path.isfile(image["file"]):
        raise _deploy.DeployError("environment %s: image.file %s is not on the deploy server"
                                  % (env["name"], image["file"]))
    actual = _environments.sha256_file(image["file"])
    if actual != image["sha256"]:
        raise _deploy.DeployError("environment %s: image.sha256: %s has sha256 %s, not the registered %s: nothing "
                                  "was touched" % (env["name"], image["file"], actual, image["sha256"]))
    image.setdefault("size", os.path.getsize(image["file"]))
    return env


def load_json(path, field):
    try:
        with open(path) as fh:
            return json.load(fh)
    except (IOError, OSError, ValueError) as exc:
        raise _deploy.DeployError("%s: cannot read %s: %s" % (field, path, exc))


def power_request(module):
    cfg = dict(module.params["reboot"] or {})
    unknown = set(cfg) - {"soft", "hard", "very_hard", "window", "spacing", "login_timeout", "boot_device_pxe"}
    if unknown:
        raise _deploy.DeployError("reboot: unknown key(s) %s" % ", ".join(sorted(unknown)))
    levels = dict((k, cfg.get(k)) for k in ("soft", "hard", "very_hard"))
    if not any(levels.values()):
        levels = {"soft": {}, "hard": {}, "very_hard": None}
    try:
        request = _power.make_request(state="reboot", boot_device="pxe" if cfg.get("boot_device_pxe") else None,
                                      login_timeout=float(cfg.get("login_timeout") or 10), **levels)
    except _power.PowerInputError as exc:
        raise _deploy.DeployError("reboot: %s" % exc)
    return request, int(cfg.get("window") or 25), float(cfg.get("spacing") or 0.0)


def prepare(module, reg, user):
    """Everything checked; returns what Deployment needs, or raises DeployError/Refused."""
    params = module.params
    env = find_environment(module, reg, user)
    template = _deploy.normalize_template(params["cluster_template"], env)
    steps = _deploy.normalize_steps(params["steps"])
    nodes = _deploy.normalize_nodes(params["nodes"], params["node_facts"], _rights.expand_nodes,
                                    {"bmc_user": params["bmc_user"], "bmc_password": params["bmc_password"]})
    plan_nodes = {}
    for node in nodes:
        entry = {"disk": node["disk_device"] or template["disk"], "disk_size": node["disk_size"]}
        if node["disk_size"]:
            entry["partitions"] = [
                dict((k, p[k]) for k in ("number", "name", "role", "device", "start", "sectors", "filesystem", "mount"))
                for p in _deploy.plan_layout(template, node["disk_size"], entry["disk"])]
        plan_nodes[node["name"]] = entry
    if any(a["variant"] == "reboot" for macro in ("SetDeploymentEnv", "BootNewEnv") for a in steps[macro]):
        for node in nodes:
            if not node["bmc_address"]:
                raise _deploy.DeployError("node_facts.%s.bmc_address: missing (the reboot steps need it)" % node["name"])
    hooks = _deploy.normalize_hooks(params["postinstall"])
    env_hooks = _deploy.environment_hooks(env)
    if user not in params["admins"]:
        partition = "*"
        check = _rights.check(reg, user, [n["name"] for n in nodes], partition)
        if not check["allowed"]:
            raise _registry.Refused("nodes", "%s has no deployment right on %s (gridops.metal.rights): nothing was "
                                    "touched" % (user, check["denied"]))
    plan = {"nodes": [n["name"] for n in nodes], "user": user,
            "environment": {"name": env["name"], "version": env.get("version"), "owner": env.get("owner"),
                            "image": env["image"]["file"], "sha256": env["image"]["sha256"],
                            "kind": env["image"]["kind"]},
            "template": dict((k, template[k]) for k in ("name", "disk", "label", "boot")),
            "steps": dict((m, steps[m]) for m in _deploy.MACRO_STEPS), "disks": plan_nodes,
            "postinstall": [h["name"] for h in env_hooks + hooks]}
    return env, template, steps, nodes, hooks, env_hooks, plan


def main():
    module = AnsibleModule(
        argument_spec=dict(
            nodes=dict(type="list", elements="str", required=True),
            node_facts=dict(type="dict", required=True, no_log=False),
            environment=dict(type="str"),
            environment_owner=dict(type="str"),
            environment_file=dict(type="path"),
            cluster_template=dict(type="dict", required=True),
            authorized_keys=dict(type="list", elements="str", default=[], no_log=False),
            postinstall=dict(type="list", elements="dict", default=[]),
            kernel_params=dict(type="str", default=""),
            user=dict(type="str"),
            admins=dict(type="list", elements="str", default=["root"]),
            steps=dict(type="dict", default={}),
            reboot=dict(type="dict", default={}),
            bmc_user=dict(type="str"),
            bmc_password=dict(type="str", no_log=True),
            window=dict(type="int", default=32),
            broadcast_port=dict(type="int", default=0),
            server_address=dict(type="str"),
            deploy_env_config=dict(type="path", default="/etc/gridops-metal/deploy_env.json"),
            netboot_config=dict(type="path", default=_pxe.CONFIG_PATH),
            registry=dict(type="path", default=_registry.DEFAULT_PATH),
            history=dict(type="bool", default=True),
            progress_file=dict(type="path"),
            progress_interval=dict(type="float", default=10),
        ),
        supports_check_mode=True,
    )
    params = module.params
    # Only the BMC passwords of node_facts are secret (no_log on the whole dict would hide every value in it).
    for facts in (params["node_facts"] or {}).values():
        if isinstance(facts, dict) and facts.get("bmc_password"):
            module.no_log_values.add(str(facts["bmc_password"]))
    user = params["user"] or pwd.getpwuid(os.getuid()).pw_name
    deployment = _deploy.deployment_id()
    started = _registry.utcnow()
    try:
        with _registry.Registry(params["registry"], check=module.check_mode) as reg:
            env, template, steps, nodes, hooks, env_hooks, plan = prepare(module, reg, user)
            power_request_, power_window, power_spacing = power_request(module)
            if module.check_mode:
                module.exit_json(changed=True, id=deployment, plan=plan, deployed_nodes=[], failed_nodes=[],
                                 nodes=[{"name": n["name"], "ip": n["ip"], "state": "planned"} for n in nodes])
            deploy_env = load_json(params["deploy_env_config"], "deploy_env_config")
            key = deploy_env.get("private_key")
            if not key or not os.path.isfile(key):
                raise _deploy.DeployError("deploy_env_config: %s names no readable private_key (%r)"
                                          % (params["deploy_env_config"], key))
            try:
                netboot_config, dhcp_restart = _pxe.load_config(params["netboot_config"])
            except _pxe.NetbootError as exc:
                raise _deploy.DeployError("netboot_config: %s" % exc)
            server_address = params["server_address"] or netboot_config.http_url.split("//", 1)[1].split("/")[0]
            server_address = server_address.rsplit(":", 1)[0] if server_address.count(":") == 1 else server_address
            progress_file = params["progress_file"] or os.path.join(
                os.path.dirname(params["registry"]), "deployments", deployment + ".json")
            os.makedirs(os.path.dirname(progress_file), exist_ok=True)
            progress = _deploy.Progress(progress_file, deployment, [n["name"] for n in nodes])
            progress.update(force=True, plan=plan)
            run = _deploy.Deployment(
                nodes, env, template, steps, _deploy.Ssh(key), power_request_, netboot_config=netboot_config,
                dhcp_restart=dhcp_restart, hooks=hooks, env_hooks=env_hooks, authorized_keys=params["authorized_keys"],
                kernel_params=params["kernel_params"], broadcast_port=params["broadcast_port"],
                server_address=server_address, window=params["window"], power_window=power_window,
                power_spacing=power_spacing, progress=progress)
            results, seconds = run.run()
            deployed = [r["name"] for r in results if r["state"] == "deployed"]
            failed = [r["name"] for r in results if r["state"] != "deployed"]
            summary = {"deployed": deployed, "failed": failed, "broadcasts": run.broadcasts, "plan": plan}
            if params["history"]:
                method = "+".join(sorted(set(b["method"] for b in run.broadcasts))) or "none"
                _deploy.record(reg, deployment, user, env, method, started, seconds, results, summary)
    except (_deploy.DeployError, _registry.Refused) as exc:
        module.fail_json(msg=str(exc), id=deployment, field=getattr(exc, "field", None))
    except _registry.RegistryError as exc:
        module.fail_json(msg=str(exc), id=deployment)
    except _rights.MissingClusterShell:
        module.fail_json(msg=missing_required_lib("ClusterShell (python3-clustershell) to read node sets"))
    result = dict(changed=True, id=deployment, plan=plan, nodes=results, deployed_nodes=deployed,
                  failed_nodes=failed, broadcasts=run.broadcasts, seconds=seconds, progress_file=progress_file,
                  msg="%d node(s): %d deployed, %d failed" % (len(results), len(deployed), len(failed)))
    if not deployed:
        module.fail_json(**result)
    module.exit_json(**result)


if __name__ == "__main__":
    main()
