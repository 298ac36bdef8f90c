#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: (c) 2026, gridops.metal developers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import absolute_import, division, print_function
__metaclass__ = type

DOCUMENTATION = r"""
---
module: netboot
short_description: Set or read what nodes boot from the network (pxelinux, iPXE and DHCP files per node)
version_added: 0.1.0
description:
  - Sets, removes or reads the boot profile of one or many nodes on a PXE server set up by the
    R(gridops.metal.pxe_server,ansible_collections.gridops.metal.pxe_server_role) role. This is Kadeploy's C(switch_pxe).
  - Each node has its own files, so changing one node never rewrites another, and a
    thousand nodes take one call. Per node with a MAC address, C(pxelinux.cfg/01-<mac>) for
    pxelinux (BIOS) and syslinux.efi, C(ipxe/<mac>.ipxe) for iPXE (reached from the generic
    C(boot.ipxe), which tries the MAC, then the IP, then C(ipxe/default.ipxe)), and with
    O(dhcp_hostsdir) a dnsmasq C(dhcp-host) file that reserves the node's address and picks its
    boot loader. A node known only by IP (proxy DHCP) gets C(pxelinux.cfg/<IP in hex>) and
    C(ipxe/ip-<ip>.ipxe).
  - "Profile kinds: V(local) boots the node's disk; V(deploy) boots the deploy environment that
    the C(deploy_env) role publishes under the boot root (C(deploy/vmlinuz), C(deploy/initrd.img)),
    with C(gridops.server=<http_url>), C(gridops.node=<name>) and C(BOOTIF=01-<mac>) added to
    its command line; V(kernel) boots a given kernel and initrds with parameters; V(install) runs
    a distribution installer fed an answer file over HTTP (Debian's netboot installer with a
    preseed, or a kickstart installer)."
  - Everything is checked before any file is written, and every problem is reported at once,
    naming the node and the field; a profile naming a kernel, initrd or answer file that is
    not under the boot root is refused.
  - Files are written through a temporary file renamed into place, so a booting node never
    reads a half-written file. Each file's first lines record the node and its profile; the
    files are the only state, and O(state=query) reads them back.
  - Settings not given as options come from O(config), which the C(pxe_server) role writes.
author:
  - gridops.metal developers (@gridops)
options:
  nodes:
    description:
      - The nodes to act on.
    type: list
    elements: dict
    default: []
    suboptions:
      name:
        description:
          - The node's name, used in results and messages; its first label is the host name given over DHCP.
          - Defaults to the MAC address, or the IP address.
        type: str
      mac:
        description:
          - The MAC address of the interface the node boots from, in any usual spelling
            (C(52:54:00:12:34:01), C(52-54-00-12-34-01), C(5254.0012.3401), C(525400123401)).
          - A node needs a MAC or an IP; when it has a MAC, its files are named by the MAC.
        type: str
      ip:
        description:
          - The node's IPv4 address, reserved for it over DHCP (with a MAC), or naming its boot files (without one).
        type: str
      profile:
        description:
          - What the node boots, a kind name or a dict with C(kind) and its fields.
          - V(local), no fields.
          - "V(deploy): C(kernel) and C(initrd) (default O(deploy_kernel) and O(deploy_initrd)),
            C(params) (added to O(deploy_params))."
          - "V(kernel): C(kernel) (required), C(initrd) (a path or a list), C(params)."
          - "V(install): C(installer) (V(debian), the default, or V(kickstart)), C(answer_file)
            (required, the preseed or kickstart file), C(kernel) and C(initrd) (default, for Debian,
            C(debian-installer/amd64/linux) and C(debian-installer/amd64/initrd.gz)), C(params)."
          - C(kernel), C(initrd) and C(answer_file) are paths relative to the boot root (served over
            TFTP and HTTP), or http(s) URLs for nodes whose loader is V(ipxe).
          - With O(state=present), a node given without a profile keeps the one it has (its files
            are rendered again), or gets O(initial_profile) when it has none.
        type: raw
      loader:
        description:
          - The boot loader the node's DHCP entry selects, V(ipxe) (chained from the firmware's PXE, then
            HTTP) or V(pxelinux) (TFTP; syslinux.efi for UEFI clients).
          - Defaults to the loader the node has, else O(loader).
        type: str
        choices: [ipxe, pxelinux]
  state:
    description:
      - V(present) writes the nodes' files, V(absent) removes them (the nodes then boot the
        default profile), V(query) only reads them.
    type: str
    choices: [present, absent, query]
    default: present
  default_profile:
    description:
      - The profile of nodes that have no files of their own (C(pxelinux.cfg/default), C(ipxe/default.ipxe)).
      - Left alone when not given.
    type: raw
  initial_profile:
    description:
      - The profile of a node given without one that has none yet.
    type: raw
    default: local
  exclusive:
    description:
      - With O(state=present), remove the files of every node not in O(nodes) (only files this module wrote).
    type: bool
    default: false
  config:
    description:
      - A JSON file with defaults for O(root), O(http_url), O(dhcp_hostsdir), O(dhcp_addresses),
        O(loader), O(deploy_kernel), O(deploy_initrd), O(deploy_params), O(check_files) and
        O(dhcp_restart_command), under those names. Options given to the module win.
      - Ignored when it does not exist.
    type: path
    default: /etc/gridops-pxe/netboot.json
  root:
    description:
      - The boot root, served over TFTP by dnsmasq and over HTTP by nginx.
      - Required, here or in O(config).
    type: path
  http_url:
    description:
      - The URL of the boot root over HTTP, as the nodes reach it, for example C(http://172.29.213.1).
      - Required, here or in O(config).
    type: str
  dhcp_hostsdir:
    description:
      - dnsmasq's C(dhcp-hostsdir). When set, a node with a MAC gets a C(dhcp-host) file there.
      - dnsmasq reads new files by itself; RV(dhcp_reload) says when it must be restarted for changed or removed ones.
    type: path
  dhcp_addresses:
    description:
      - Whether the C(dhcp-host) entries reserve the nodes' IP addresses and names (false for proxy DHCP).
      - Defaults to V(true).
    type: bool
  loader:
    description:
      - The boot loader of nodes that were never given one.
      - Defaults to V(ipxe).
    type: str
    choices: [ipxe, pxelinux]
  deploy_kernel:
    description:
      - The deploy environment's kernel, relative to the boot root.
      - Defaults to C(deploy/vmlinuz).
    type: str
  deploy_initrd:
    description:
      - The deploy environment's initrd, relative to the boot root.
      - Defaults to C(deploy/initrd.img).
    type: str
  deploy_params:
    description:
      - Kernel parameters of the deploy environment, before the profile's own.
    type: str
  check_files:
    description:
      - Refuse a profile whose kernel, initrd or answer file is not under the boot root.
      - Defaults to V(true).
    type: bool
  dhcp_restart_command:
    description:
      - The command (a list, run without a shell) that restarts dnsmasq if it runs, run when a C(dhcp-host)
        file was changed or removed (RV(dhcp_reload)), except in check mode.
      - dnsmasq reads new files of its hosts directory by itself, but keeps a changed or removed file's old
        entry until told; SIGHUP, the documented way, made dnsmasq 2.90 crash after a changed entry, so it is restarted.
      - The C(pxe_server) role sets C([systemctl, try-restart, dnsmasq]) in O(config). Without a command,
        RV(dhcp_reload) tells the caller to do it.
    type: list
    elements: str
attributes:
  check_mode:
    support: full
    description: Reports per node what would change, and the diff, without writing.
  diff_mode:
    support: full
    description: Shows each file written or removed, before and after.
notes:
  - The module runs on the PXE server. It needs Python's standard library only.
seealso:
  - name: PXELINUX configuration file names
    description: The order in which pxelinux looks for its configuration.
    link: https://wiki.syslinux.org/wiki/index.php?title=PXELINUX#Configuration
  - name: iPXE scripting
    description: The commands of the iPXE scripts written here.
    link: https://ipxe.org/scripting
"""

EXAMPLES = r"""
- name: Boot node-1 and node-2 into the deploy environment (Kadeploy's switch_pxe)
  gridops.metal.netboot:
    nodes:
      - {name: node-1, mac: "52:54:00:12:34:01", profile: deploy}
      - {name: node-2, mac: "52-54-00-12-34-02", profile: deploy}
  register: switched

- name: Show what they booted before
  ansible.builtin.debug:
    msg: "{{ switched.nodes | dict2items | map(attribute='value.previous.kind') }}"

- name: Back to the local disk, every node of the group
  gridops.metal.netboot:
    nodes: >-
      {{ groups['nodes'] | map('extract', hostvars, 'mac') | map('community.general.dict_kv', 'mac')
         | map('combine', {'profile': 'local'}) }}

- name: A rescue kernel for one node, over HTTP through iPXE
  gridops.metal.netboot:
    nodes:
      - name: node-3
        mac: "52:54:00:12:34:03"
        loader: ipxe
        profile:
          kind: kernel
          kernel: images/rescue/vmlinuz
          initrd: [images/rescue/initrd.img]
          params: console=ttyS0 rescue

- name: Reinstall node-4 with Debian's installer and a preseed file served over HTTP
  gridops.metal.netboot:
    nodes:
      - name: node-4
        mac: "52:54:00:12:34:04"
        profile: {kind: install, installer: debian, answer_file: preseed/node-4.cfg}

- name: What do these nodes boot?
  gridops.metal.netboot:
    state: query
    nodes: [{mac: "52:54:00:12:34:01"}, {ip: 172.29.213.12}]
  register: current
"""

RETURN = r"""
nodes:
  description: Per node name, what it booted and what it boots now.
  returned: always
  type: dict
  contains:
    mac:
      description: The MAC address, in lower-case colon form (null for a node known by IP).
      type: str
    ip:
      description: The IP address given, if any.
      type: str
    loader:
      description: The node's boot loader (null when unknown or removed).
      type: str
    previous:
      description: The profile before this call (null when the node had no files).
      type: dict
    profile:
      description: The profile after this call (null when removed).
      type: dict
    changed:
      description: Whether the node's files changed.
      type: bool
    files:
      description: The node's files.
      type: list
      elements: str
  sample:
    node-1:
      mac: "52:54:00:12:34:01"
      ip: 172.29.213.11
      loader: ipxe
      previous: {kind: local}
      profile: {kind: deploy}
      changed: true
      files: [/etc/gridops-pxe/dhcp-hosts.d/52-54-00-12-34-01, /srv/gridops-pxe/ipxe/52-54-00-12-34-01.ipxe,
              /srv/gridops-pxe/pxelinux.cfg/01-52-54-00-12-34-01]
changed_nodes:
  description: The names of the nodes whose files changed.
  returned: always
  type: list
  elements: str
  sample: [node-1]
removed:
  description: Files removed (O(state=absent), O(exclusive)).
  returned: always
  type: list
  elements: str
dhcp_reload:
  description: Whether a C(dhcp-host) file was changed or removed, which dnsmasq only notices when restarted.
  returned: always
  type: bool
dhcp_reloaded:
  description: Whether O(dhcp_restart_command) was run.
  returned: always
  type: bool
default:
  description: The default profile before and after, when O(default_profile) is given.
  returned: when O(default_profile) is given and O(state=present)
  type: dict
  sample: {previous: null, profile: {kind: local}, changed: true}
"""


from ansible.module_utils.basic import AnsibleModule
from ansible_collections.gridops.metal.plugins.module_utils import _pxe


def load_config(module):
    """Module options over the JSON config file's values."""
    overrides = dict((k, module.params.get(k)) for k in _pxe.CONFIG_OPTION_KEYS)
    try:
        return _pxe.load_config(module.params["config"], overrides)
    except _pxe.NetbootError as exc:
        module.fail_json(msg=str(exc))


def main():
    module = AnsibleModule(
        argument_spec=dict(
            nodes=dict(type="list", elements="dict", default=[], options=dict(
                name=dict(type="str"),
                mac=dict(type="str"),
                ip=dict(type="str"),
                profile=dict(type="raw"),
                loader=dict(type="str", choices=list(_pxe.LOADERS)),
            )),
            state=dict(type="str", choices=["present", "absent", "query"], default="present"),
            default_profile=dict(type="raw"),
            initial_profile=dict(type="raw", default="local"),
            exclusive=dict(type="bool", default=False),
            config=dict(type="path", default="/etc/gridops-pxe/netboot.json"),
            root=dict(type="path"),
            http_url=dict(type="str"),
            dhcp_hostsdir=dict(type="path"),
            dhcp_addresses=dict(type="bool"),
            loader=dict(type="str", choices=list(_pxe.LOADERS)),
            deploy_kernel=dict(type="str"),
            deploy_initrd=dict(type="str"),
            deploy_params=dict(type="str"),
            check_files=dict(type="bool"),
            dhcp_restart_command=dict(type="list", elements="str"),
        ),
        supports_check_mode=True,
    )
    params = module.params
    try:
        config, restart_command = load_config(module)
        nodes = [dict((k, v) for k, v in node.items() if v is not None) for node in params["nodes"]]
        result = _pxe.netboot(config, nodes, state=params["state"], default_profile=params["default_profile"],
                              initial_profile=params["initial_profile"], exclusive=params["exclusive"],
                              check_mode=module.check_mode)
    except _pxe.NetbootError as exc:
        module.fail_json(msg=str(exc))
    diff = result.pop("diff")
    result["dhcp_reloaded"] = False
    if result["dhcp_reload"] and restart_command and not module.check_mode:
        rc, out, err = module.run_command(restart_command)
        if rc != 0:
            module.fail_json(msg="the boot files were written, but %s failed (rc=%d): %s"
                             % (" ".join(restart_command), rc, (err or out).strip()), **result)
        result["dhcp_reloaded"] = True
    if module._diff:
        result["diff"] = diff
    module.exit_json(**result)


if __name__ == "__main__":
    main()
