# -*- coding: utf-8 -*-
# Copyright: (c) 2026, gridops.metal developers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Engine of network boot: boot profiles, per-node boot files, DHCP reservations.

Used by the ``netboot`` module (on the deploy server) and the
``pxe_server_config`` filter (on the controller, to check a whole server
configuration before the ``pxe_server`` role writes anything).  Plain Python,
standard library only: module_utils also run on managed hosts, where netaddr
may not be installed.

Layout under the boot root, which dnsmasq serves over TFTP and nginx over HTTP::

    boot.ipxe                        generic iPXE script: chains ipxe/<mac>.ipxe,
                                     then ipxe/ip-<ip>.ipxe, then ipxe/default.ipxe
    ipxe/52-54-00-12-34-01.ipxe      per node (MAC with dashes), iPXE
    pxelinux.cfg/01-52-54-00-12-34-01
                                     per node, pxelinux (and syslinux.efi)
    ipxe/ip-10.0.0.5.ipxe, pxelinux.cfg/0A000005
                                     per node known by IP only (proxy DHCP)
    ipxe/default.ipxe, pxelinux.cfg/default
                                     unknown nodes
    <dhcp_hostsdir>/52-54-00-12-34-01
                                     per node, a dnsmasq dhcp-host line

Each file starts with a header comment holding the node name and its profile
as JSON: the files are the only state, and reading a node's profile back is
reading that header.  Writes go through a temporary file (a dot file, which
dnsmasq's inotify watch ignores) renamed into place.

Every error is a NetbootError whose message names the node and the field.
"""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import contextlib
import ipaddress
import json
import os
import re
import tempfile

from ansible_collections.gridops.metal.plugins.module_utils import _net

PROFILE_KINDS = ("local", "deploy", "kernel", "install")
LOADERS = ("ipxe", "pxelinux")
INSTALLERS = ("debian", "kickstart")
MODES = ("dhcp", "proxy")

# What the deploy_env role publishes under the boot root (the `deploy` profile's contract).
DEPLOY_KERNEL = "deploy/vmlinuz"
DEPLOY_INITRD = "deploy/initrd.img"
# Where Debian's netboot installer (debian-installer-*-netboot-amd64, netboot.tar.gz) puts its files.
DEBIAN_INSTALLER_KERNEL = "debian-installer/amd64/linux"
DEBIAN_INSTALLER_INITRD = "debian-installer/amd64/initrd.gz"

HEADER = "# gridops.metal netboot "
DHCP_TAG_PREFIX = "gridops-"
MAX_ERRORS = 20

_PROFILE_FIELDS = {
    "local": (),
    "deploy": ("kernel", "initrd", "params"),
    "kernel": ("kernel", "initrd", "params"),
    "install": ("installer", "kernel", "initrd", "params", "answer_file"),
}
_NODE_FIELDS = ("name", "mac", "ip", "profile", "loader")
_PATH_RE = re.compile(r"^[A-Za-z0-9._+~@%=,-]+(/[A-Za-z0-9._+~@%=,-]+)*$")
_URL_RE = re.compile(r"^https?://[^\s\"'\\]+$")
_LABEL_RE = re.compile(r"^[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?$")
_NAME_RE = re.compile(r"^[^\s/\\\"',;#]+$")


class NetbootError(ValueError):
    """Refused input or a failed write; the message names the node and the field."""


class _Errors:
    """Collects validation errors so that one run reports all of them (up to MAX_ERRORS)."""

    def __init__(self):
        self.messages = []

    def add(self, message):
        self.messages.append(message)

    @contextlib.contextmanager
    def collect(self):
        try:
            yield
        except NetbootError as exc:
            self.add(str(exc))

    def raise_if_any(self):
        if not self.messages:
            return
        shown = self.messages[:MAX_ERRORS]
        if len(self.messages) > MAX_ERRORS:
            shown.append("... and %d more" % (len(self.messages) - MAX_ERRORS))
        raise NetbootError("\n".join(shown) if len(shown) > 1 else shown[0])


def _plain(value):
    """str() of Ansible's tagged strings, so that messages show plain quotes."""
    return str(value) if isinstance(value, str) else value


# ------------------------------------------------------------------ profiles

def _check_ref(where, field, value, urls=True):
    """A file reference: a path relative to the boot root, or (iPXE only) an http(s) URL."""
    value = _plain(value)
    if not isinstance(value, str) or not value:
        raise NetbootError("%s.%s: expected a non-empty string, got %r" % (where, field, value))
    if _URL_RE.match(value):
        if not urls:
            raise NetbootError("%s.%s: %r: a URL is not allowed here" % (where, field, value))
        return value
    if value.startswith("/") or not _PATH_RE.match(value) or ".." in value.split("/"):
        raise NetbootError("%s.%s: %r is neither a path relative to the boot root (no '..', no spaces) "
                           "nor an http(s) URL" % (where, field, value))
    return value


def _check_params(where, value):
    value = _plain(value)
    if isinstance(value, list):
        for item in value:
            _check_params(where, item)
        value = " ".join(_plain(item) for item in value)
    if not isinstance(value, str):
        raise NetbootError("%s.params: expected a string or a list of strings, got %r" % (where, value))
    if any(ord(c) < 32 or ord(c) == 127 for c in value):
        raise NetbootError("%s.params: %r contains a line break or a control character" % (where, value))
    return " ".join(value.split())


def normalize_profile(profile, where="profile"):
    """Return the canonical dict form of a profile: a kind name or a dict with `kind`.

    Only the fields given are kept (defaults are applied when rendering), so a
    stored profile says what was asked for.
    """
    profile = _plain(profile)
    if isinstance(profile, str):
        profile = {"kind": profile}
    if not isinstance(profile, dict):
        raise NetbootError("%s: expected a profile kind (%s) or a dict with 'kind', got %r"
                           % (where, ", ".join(PROFILE_KINDS), profile))
    kind = _plain(profile.get("kind"))
    if kind not in PROFILE_KINDS:
        raise NetbootError("%s.kind: %r is not one of %s" % (where, kind, ", ".join(PROFILE_KINDS)))
    allowed = _PROFILE_FIELDS[kind]
    unknown = sorted(str(k) for k in profile if k != "kind" and k not in allowed)
    if unknown:
        raise NetbootError("%s: unknown field(s) %s for kind %s (allowed: %s)"
                           % (where, ", ".join(unknown), kind, ", ".join(allowed) or "none"))
    out = {"kind": kind}
    for field in allowed:
        value = profile.get(field)
        if value is None or value == [] or value == "":
            continue
        if field == "params":
            out[field] = _check_params(where, value)
        elif field == "initrd":
            items = value if isinstance(value, list) else [value]
            out[field] = [_check_ref(where, field, item) for item in items]
        elif field == "installer":
            if _plain(value) not in INSTALLERS:
                raise NetbootError("%s.installer: %r is not one of %s" % (where, value, ", ".join(INSTALLERS)))
            out[field] = _plain(value)
        else:
            out[field] = _check_ref(where, field, value)
    if kind == "kernel" and "kernel" not in out:
        raise NetbootError("%s.kernel: required for kind kernel" % where)
    if kind == "install":
        if "answer_file" not in out:
            raise NetbootError("%s.answer_file: required for kind install (a preseed or kickstart file)" % where)
        if out.get("installer", "debian") == "kickstart" and ("kernel" not in out or "initrd" not in out):
            raise NetbootError("%s: kernel and initrd are required for a kickstart installer" % where)
    return out


def profile_text(profile):
    """The profile as one line of JSON (what the file headers hold)."""
    return json.dumps(profile, sort_keys=True, separators=(", ", ": "))


# --------------------------------------------------------------------- nodes

def dhcp_hostname(name):
    """The host name a node gets over DHCP: the first label of its name, if it is a valid one."""
    label = name.split(".", 1)[0]
    return label if _LABEL_RE.match(label) else None


def normalize_node(node, index=None, need_profile=False):
    """Return a node as {name, mac, ip, profile, loader} with MAC and IP normalised."""
    where = "nodes[%s]" % index if index is not None else "node"
    if not isinstance(node, dict):
        raise NetbootError("%s: expected a dict with name, mac, ip, profile, loader; got %r" % (where, node))
    name = _plain(node.get("name"))
    if name is not None:
        if not isinstance(name, str) or not _NAME_RE.match(name):
            raise NetbootError("%s.name: %r is not a usable node name (no spaces, quotes, '/', ',', ';' or '#')"
                               % (where, name))
        where = "node %r" % name
    unknown = sorted(str(k) for k in node if k not in _NODE_FIELDS)
    if unknown:
        raise NetbootError("%s: unknown field(s) %s (allowed: %s)" % (where, ", ".join(unknown), ", ".join(_NODE_FIELDS)))
    out = {"name": name, "mac": None, "ip": None, "profile": None, "loader": None}
    if node.get("mac") not in (None, ""):
        try:
            out["mac"] = _net.normalize_mac(_plain(node["mac"]))
        except ValueError as exc:
            raise NetbootError("%s.mac: %s" % (where, exc))
    if node.get("ip") not in (None, ""):
        ip = _plain(node["ip"])
        try:
            out["ip"] = str(ipaddress.IPv4Address(ip.strip() if isinstance(ip, str) else ip))
        except (ValueError, TypeError, AttributeError):
            raise NetbootError("%s.ip: %r is not an IPv4 address" % (where, ip))
    if out["mac"] is None and out["ip"] is None:
        raise NetbootError("%s: needs a mac or an ip" % where)
    out["named"] = out["name"] is not None
    if out["name"] is None:
        out["name"] = out["mac"] or out["ip"]
    if node.get("profile") is not None:
        out["profile"] = normalize_profile(node["profile"], where + ".profile")
    elif need_profile:
        raise NetbootError("%s.profile: required" % where)
    if node.get("loader") is not None:
        if _plain(node["loader"]) not in LOADERS:
            raise NetbootError("%s.loader: %r is not one of %s" % (where, node["loader"], ", ".join(LOADERS)))
        out["loader"] = _plain(node["loader"])
    return out


def normalize_nodes(nodes, need_profile=False):
    """Normalise a list of nodes; refuse duplicate names, MACs and IPs. Reports every problem at once."""
    errors = _Errors()
    out = _normalize_nodes(nodes, need_profile, errors)
    errors.raise_if_any()
    return out


def _normalize_nodes(nodes, need_profile, errors):
    """The nodes that are valid; the problems go to errors."""
    if not isinstance(nodes, list):
        errors.add("nodes: expected a list, got %r" % (nodes,))
        return []
    out = []
    for index, node in enumerate(nodes):
        with errors.collect():
            out.append(normalize_node(node, index, need_profile))
    for field in ("name", "mac", "ip"):
        seen = {}
        for node in out:
            value = node[field]
            if value is None:
                continue
            key = value.lower()
            if key in seen:
                errors.add("node %r: %s %s is already used by node %r" % (node["name"], field, value, seen[key]))
            else:
                seen[key] = node["name"]
    return out


# ------------------------------------------------------------ server config

def _address(where, value, network=None):
    value = _plain(value)
    try:
        address = ipaddress.IPv4Address(value.strip() if isinstance(value, str) else value)
    except (ValueError, TypeError, AttributeError):
        raise NetbootError("%s: %r is not an IPv4 address" % (where, value))
    if network is not None:
        if address not in network:
            raise NetbootError("%s: %s is outside the subnet %s" % (where, address, network))
        if network.prefixlen < 31 and address in (network.network_address, network.broadcast_address):
            raise NetbootError("%s: %s is the %s address of %s" % (
                where, address, "network" if address == network.network_address else "broadcast", network))
    return address


def _network(where, value, version=4):
    value = _plain(value)
    try:
        network = ipaddress.ip_network(value, strict=True)
    except ValueError as exc:
        reason = str(exc)
        raise NetbootError("%s: %r is not an IPv%d network: %s" % (where, value, version,
                                                                   "host bits set" if "host bits" in reason else reason))
    except TypeError:
        raise NetbootError("%s: %r is not a network" % (where, value))
    if network.version != version:
        raise NetbootError("%s: %r is not an IPv%d network" % (where, value, version))
    return network


def validate_server(config):
    """Check and normalise a whole PXE server configuration (what the pxe_server role renders).

    `config` keys: interface, address, subnet, mode (dhcp|proxy), dhcp_range ({start, end} or
    empty), gateway, dns_servers, address6, subnet6, loader, nodes, default_profile,
    initial_profile, files (what to publish under the boot root: dest, and src or content).
    Returns the same keys, normalised, plus network, netmask and prefixlen, and the nodes with
    MACs in colon form and their loader filled in.  Raises NetbootError listing every problem found.
    """
    errors = _Errors()
    out = dict(config)
    iface = _plain(config.get("interface"))
    if not isinstance(iface, str) or not re.match(r"^[A-Za-z0-9_.:-]{1,15}$", iface or ""):
        errors.add("interface: %r is not a valid interface name" % (iface,))
    mode = _plain(config.get("mode", "dhcp"))
    if mode not in MODES:
        errors.add("mode: %r is not one of %s" % (mode, ", ".join(MODES)))
    network = None
    with errors.collect():
        network = _network("subnet", config.get("subnet"))
        out["subnet"] = str(network)
        out["network"] = str(network.network_address)
        out["netmask"] = str(network.netmask)
        out["prefixlen"] = network.prefixlen
    server = None
    if network is not None:
        with errors.collect():
            server = _address("address", config.get("address"), network)
            out["address"] = str(server)
    for key in ("subnet6", "address6"):
        out[key] = _plain(config.get(key)) or None
    if out["address6"] or out["subnet6"]:
        with errors.collect():
            net6 = _network("subnet6", out["subnet6"], version=6)
            try:
                addr6 = ipaddress.IPv6Address(out["address6"])
            except (ValueError, TypeError):
                raise NetbootError("address6: %r is not an IPv6 address" % (out["address6"],))
            if addr6 not in net6:
                raise NetbootError("address6: %s is outside subnet6 %s" % (addr6, net6))
            out["subnet6"], out["address6"] = str(net6), str(addr6)
    gateway = None
    if config.get("gateway") and network is not None:
        with errors.collect():
            gateway = _address("gateway", config["gateway"], network)
            out["gateway"] = str(gateway)
    dns = []
    for index, value in enumerate(config.get("dns_servers") or []):
        with errors.collect():
            dns.append(str(_address("dns_servers[%d]" % index, value)))
    out["dns_servers"] = dns
    pool = None
    dhcp_range = config.get("dhcp_range") or {}
    if dhcp_range:
        if mode == "proxy":
            errors.add("dhcp_range: a dynamic range makes no sense in proxy mode (another server leases addresses)")
        elif not isinstance(dhcp_range, dict) or sorted(dhcp_range) != ["end", "start"]:
            errors.add("dhcp_range: expected a dict with start and end, got %r" % (dhcp_range,))
        elif network is not None:
            with errors.collect():
                start = _address("dhcp_range.start", dhcp_range["start"], network)
                end = _address("dhcp_range.end", dhcp_range["end"], network)
                if start > end:
                    raise NetbootError("dhcp_range: start %s is after end %s" % (start, end))
                pool = (start, end)
                out["dhcp_range"] = {"start": str(start), "end": str(end)}
                for what, address in (("address", server), ("gateway", gateway)):
                    if address is not None and start <= address <= end:
                        raise NetbootError("dhcp_range: %s-%s contains the %s %s" % (start, end, what, address))
    else:
        out["dhcp_range"] = None
    loader = _plain(config.get("loader", "ipxe"))
    if loader not in LOADERS:
        errors.add("loader: %r is not one of %s" % (loader, ", ".join(LOADERS)))
    for key in ("default_profile", "initial_profile"):
        if config.get(key) is not None:
            with errors.collect():
                out[key] = normalize_profile(config[key], key)
    files = config.get("files") or []
    for index, item in enumerate(files if isinstance(files, list) else [files]):
        where = "files[%d]" % index
        with errors.collect():
            if not isinstance(item, dict):
                raise NetbootError("%s: expected a dict with dest and src or content, got %r" % (where, item))
            _check_ref(where, "dest", item.get("dest"), urls=False)
            if ("src" in item) == ("content" in item):
                raise NetbootError("%s: needs exactly one of src and content" % where)
    nodes = _normalize_nodes(config.get("nodes") or [], False, errors)
    for node in nodes:
        where = "node %r" % node["name"]
        if node["ip"] is None:
            if mode == "dhcp" and node["mac"] and pool is None:
                errors.add("%s.ip: required (there is no dhcp_range to lease an address from)" % where)
            continue
        with errors.collect():
            if network is not None:
                address = _address(where + ".ip", node["ip"], network)
                if address == server:
                    raise NetbootError("%s.ip: %s is the server's own address" % (where, address))
                if address == gateway:
                    raise NetbootError("%s.ip: %s is the gateway's address" % (where, address))
                if pool and pool[0] <= address <= pool[1] and mode == "dhcp":
                    raise NetbootError("%s.ip: %s lies in the dynamic range %s-%s" % (where, address, pool[0], pool[1]))
        if mode == "dhcp" and node["mac"] is None:
            errors.add("%s.mac: required in dhcp mode (the reservation is made by MAC)" % where)
    for node in nodes:
        node["loader"] = node["loader"] or loader
        del node["named"]
    out["nodes"] = nodes
    out["mode"] = mode
    out["loader"] = loader
    errors.raise_if_any()
    return out


# ----------------------------------------------------------------- rendering

class Config:
    """Where boot files go and what the rendered files point at (the netboot module's options)."""

    def __init__(self, root, http_url, dhcp_hostsdir=None, dhcp_addresses=True, loader="ipxe",
                 deploy_kernel=DEPLOY_KERNEL, deploy_initrd=DEPLOY_INITRD, deploy_params="", check_files=True):
        if not root or not os.path.isabs(root):
            raise NetbootError("root: %r is not an absolute path" % (root,))
        if not http_url or not _URL_RE.match(http_url):
            raise NetbootError("http_url: %r is not an http(s) URL" % (http_url,))
        if dhcp_hostsdir and not os.path.isabs(dhcp_hostsdir):
            raise NetbootError("dhcp_hostsdir: %r is not an absolute path" % (dhcp_hostsdir,))
        if loader not in LOADERS:
            raise NetbootError("loader: %r is not one of %s" % (loader, ", ".join(LOADERS)))
        self.root = root
        self.http_url = http_url.rstrip("/")
        self.dhcp_hostsdir = dhcp_hostsdir or None
        self.dhcp_addresses = dhcp_addresses
        self.loader = loader
        self.deploy_kernel = _check_ref("deploy", "kernel", deploy_kernel)
        self.deploy_initrd = [_check_ref("deploy", "initrd", deploy_initrd)] if deploy_initrd else []
        self.deploy_params = _check_params("deploy", deploy_params or "")
        self.check_files = check_files


CONFIG_KEYS = ("root", "http_url", "dhcp_hostsdir", "dhcp_addresses", "loader", "deploy_kernel",
               "deploy_initrd", "deploy_params", "check_files")
CONFIG_OPTION_KEYS = CONFIG_KEYS + ("dhcp_restart_command",)
CONFIG_PATH = "/etc/gridops-pxe/netboot.json"


def load_config(path=CONFIG_PATH, overrides=None):
    """(Config, DHCP restart argv) from the JSON file pxe_server writes, under the non-None overrides."""
    values = {}
    if path and os.path.exists(path):
        try:
            with open(path) as fh:
                values = json.load(fh)
        except (IOError, OSError, ValueError) as exc:
            raise NetbootError("config: cannot read %s: %s" % (path, exc))
        if not isinstance(values, dict):
            raise NetbootError("config: %s does not hold a JSON object" % path)
    for key, value in (overrides or {}).items():
        if key in CONFIG_OPTION_KEYS and value is not None:
            values[key] = value
    for key in ("root", "http_url"):
        if not values.get(key):
            raise NetbootError("%s: required (no module option, and not in %s)" % (key, path))
    command = values.get("dhcp_restart_command") or []
    if not isinstance(command, list) or not all(isinstance(arg, str) for arg in command):
        raise NetbootError("dhcp_restart_command: expected a list of strings, got %r" % (command,))
    kwargs = dict((k, values[k]) for k in CONFIG_KEYS if values.get(k) is not None)
    return Config(**kwargs), command


class _Boot:
    """A profile resolved for rendering: kernel, initrds, command line (or local)."""

    def __init__(self, config, profile, node):
        self.kind = profile["kind"]
        self.local = self.kind == "local"
        self.kernel = None
        self.initrds = []
        self.refs = []          # (field, reference) to check on disk
        params = []
        if self.local:
            return
        name = node.get("name") if node else None
        if self.kind == "deploy":
            self.kernel = profile.get("kernel", config.deploy_kernel)
            self.initrds = profile.get("initrd", config.deploy_initrd)
            params = [config.deploy_params, profile.get("params", ""), "gridops.server=%s" % config.http_url]
            if name:
                params.append("gridops.node=%s" % name)
        elif self.kind == "kernel":
            self.kernel = profile["kernel"]
            self.initrds = profile.get("initrd", [])
            params = [profile.get("params", "")]
        elif self.kind == "install":
            installer = profile.get("installer", "debian")
            answer = profile["answer_file"]
            self.refs.append(("answer_file", answer))
            url = answer if _URL_RE.match(answer) else "%s/%s" % (config.http_url, answer)
            if installer == "debian":
                self.kernel = profile.get("kernel", DEBIAN_INSTALLER_KERNEL)
                self.initrds = profile.get("initrd", [DEBIAN_INSTALLER_INITRD])
                params = ["auto=true priority=critical url=%s" % url]
                if name and dhcp_hostname(name):
                    params.append("hostname=%s" % dhcp_hostname(name))
            else:
                self.kernel = profile["kernel"]
                self.initrds = profile["initrd"]
                params = ["inst.ks=%s ip=dhcp" % url]
            params.append(profile.get("params", ""))
        # The deploy environment and installers pick their interface by BOOTIF (pxelinux's IPAPPEND 2 form).
        self.bootif = self.kind in ("deploy", "install")
        self.params = " ".join(p for p in params if p)
        self.refs = [("kernel", self.kernel)] + [("initrd", i) for i in self.initrds] + self.refs

    def urls(self):
        return any(_URL_RE.match(ref) for _field, ref in self.refs[:1 + len(self.initrds)])


def _header(node, profile):
    who = "node=%s " % node["name"] if node else "default "
    return "%s%sprofile=%s\n" % (HEADER, who, profile_text(profile))


def _bootif(node, ipxe):
    if node and node.get("mac"):
        return "BOOTIF=01-%s" % node["mac"].replace(":", "-")
    return "BOOTIF=01-${mac:hexhyp}" if ipxe else ""


def render_pxelinux(config, profile, node=None):
    """pxelinux.cfg file for a node (or the default file when node is None)."""
    boot = _Boot(config, profile, node)
    lines = [_header(node, profile).rstrip("\n"), "DEFAULT gridops", "PROMPT 0", "LABEL gridops"]
    if boot.local:
        lines += ["  LOCALBOOT 0"]
    else:
        lines += ["  LINUX %s" % boot.kernel]
        if boot.initrds:
            lines.append("  INITRD %s" % ",".join(boot.initrds))
        params = boot.params
        if boot.bootif and node and node.get("mac"):
            params = ("%s %s" % (params, _bootif(node, False))).strip()
        if params:
            lines.append("  APPEND %s" % params)
        if boot.bootif and not (node and node.get("mac")):
            lines.append("  IPAPPEND 2")
    return "\n".join(lines) + "\n"


def _ipxe_url(config, ref):
    return ref if _URL_RE.match(ref) else "%s/%s" % (config.http_url, ref)


def render_ipxe(config, profile, node=None):
    """iPXE script for a node (or ipxe/default.ipxe when node is None)."""
    boot = _Boot(config, profile, node)
    who = node["name"] if node else "unknown node ${mac}"
    lines = ["#!ipxe", _header(node, profile).rstrip("\n")]
    if boot.local:
        # Back to the firmware, which goes on with the next boot device (the disk).
        lines += ["echo gridops.metal: %s: local disk" % who, "exit 0"]
    else:
        names = [i.rsplit("/", 1)[-1] for i in boot.initrds]
        params = " ".join(["initrd=%s" % n for n in names] + ([boot.params] if boot.params else []))
        if boot.bootif:
            params = ("%s %s" % (params, _bootif(node, True))).strip()
        lines.append("echo gridops.metal: %s: %s" % (who, boot.kind))
        lines.append(("kernel %s %s" % (_ipxe_url(config, boot.kernel), params)).rstrip())
        lines += ["initrd %s" % _ipxe_url(config, i) for i in boot.initrds]
        lines.append("boot")
    return "\n".join(lines) + "\n"


def render_boot_ipxe(config):
    """The generic script every iPXE client gets from DHCP: per-node script, by MAC, by IP, default."""
    base = config.http_url
    return "\n".join([
        "#!ipxe",
        HEADER + "generic",
        "imgfetch --name node %s/ipxe/${mac:hexhyp}.ipxe && goto node ||" % base,
        "imgfetch --name node %s/ipxe/ip-${ip}.ipxe && goto node ||" % base,
        "imgfetch --name node %s/ipxe/default.ipxe && goto node ||" % base,
        "echo gridops.metal: no boot script for ${mac}",
        "exit 1",
        ":node",
        "imgexec node",
        "",
    ])


def render_dhcp_host(config, node):
    """dnsmasq dhcp-host line (in dhcp-hostsdir) for a node with a MAC, or None."""
    if not node.get("mac"):
        return None
    fields = [node["mac"], "set:%s%s" % (DHCP_TAG_PREFIX, node["loader"] or config.loader)]
    if config.dhcp_addresses and node.get("ip"):
        fields.append(node["ip"])
        hostname = dhcp_hostname(node["name"])
        if hostname:
            fields.append(hostname)
    return "%snode=%s\n%s\n" % (HEADER, node["name"], ",".join(fields))


# ------------------------------------------------------------ files on disk

def node_paths(config, node):
    """{kind: path} of a node's files: pxelinux, ipxe and (with a MAC and a hosts dir) dhcp."""
    if node.get("mac"):
        dashed = node["mac"].replace(":", "-")
        paths = {"pxelinux": os.path.join(config.root, "pxelinux.cfg", "01-" + dashed),
                 "ipxe": os.path.join(config.root, "ipxe", dashed + ".ipxe")}
        if config.dhcp_hostsdir:
            paths["dhcp"] = os.path.join(config.dhcp_hostsdir, dashed)
    else:
        paths = {"pxelinux": os.path.join(config.root, "pxelinux.cfg", _net.ipv4_hex(node["ip"])),
                 "ipxe": os.path.join(config.root, "ipxe", "ip-%s.ipxe" % node["ip"])}
    return paths


def default_paths(config):
    return {"pxelinux": os.path.join(config.root, "pxelinux.cfg", "default"),
            "ipxe": os.path.join(config.root, "ipxe", "default.ipxe")}


def read_text(path):
    try:
        with open(path) as fh:
            return fh.read()
    except (IOError, OSError):
        return None


def parse_header(text):
    """(name, profile) from a file written here, or None when the file is not ours."""
    if not text:
        return None
    for line in text.splitlines()[:2]:
        if line.startswith(HEADER):
            rest = line[len(HEADER):]
            match = re.match(r"^(?:node=(\S+)|default) profile=(.*)$", rest)
            if match:
                try:
                    return match.group(1), json.loads(match.group(2))
                except ValueError:
                    return None
            match = re.match(r"^node=(\S+)$", rest)
            if match:
                return match.group(1), None
    return None


def write_atomic(path, text, mode=0o644):
    """Write text to path through a dot file in the same directory, renamed into place.

    Readers (dnsmasq, nginx, a booting node) see the old file or the new one, never a part.
    No fsync per file, as Ansible's own atomic_move: a thousand fsyncs cost seconds, and a
    run interrupted by a crash is simply run again.
    """
    directory = os.path.dirname(path)
    fd, tmp = tempfile.mkstemp(prefix=".%s." % os.path.basename(path), dir=directory)
    try:
        with os.fdopen(fd, "w") as fh:
            fh.write(text)
        os.chmod(tmp, mode)
        os.rename(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def _current_profile(paths):
    """The profile a node boots now: the iPXE file's header, if both boot files agree."""
    parsed = parse_header(read_text(paths["ipxe"]))
    other = parse_header(read_text(paths["pxelinux"]))
    if parsed is None or parsed[1] is None:
        return None
    if other is None or other[1] != parsed[1]:
        return None
    return parsed[1]


def _current_dhcp(paths):
    """What a node's DHCP entry holds now: {loader, ip, name} (empty without one)."""
    text = read_text(paths["dhcp"]) if "dhcp" in paths else None
    parsed = parse_header(text)
    if parsed is None:
        return {}
    current = {"name": parsed[0]}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            for field in line.split(",")[1:]:
                if field.startswith("set:" + DHCP_TAG_PREFIX) and field[len(DHCP_TAG_PREFIX) + 4:] in LOADERS:
                    current["loader"] = field[len(DHCP_TAG_PREFIX) + 4:]
                elif re.match(r"^\d+\.\d+\.\d+\.\d+$", field):
                    current["ip"] = field
    return current


class _Plan:
    """Files to write and remove, with the diff, computed before anything is touched."""

    def __init__(self):
        self.mkdirs = []    # directories to create
        self.writes = []    # (path, text, before)
        self.removes = []   # (path, before)
        self.dhcp_reload = False

    def directory(self, path):
        if not os.path.isdir(path):
            self.mkdirs.append(path)

    def want(self, path, text, dhcp=False):
        before = read_text(path)
        if before != text:
            self.writes.append((path, text, before))
            if dhcp and before is not None:
                # dnsmasq adds new hostsdir files by itself but keeps a changed file's old entry until told.
                self.dhcp_reload = True
            return True
        return False

    def remove(self, path, dhcp=False):
        before = read_text(path)
        if before is not None:
            self.removes.append((path, before))
            self.dhcp_reload = self.dhcp_reload or dhcp
            return True
        return False

    def diff(self):
        out = [{"before_header": "%s (absent)" % path, "after_header": "%s/ (directory)" % path, "before": "",
                "after": ""} for path in self.mkdirs]
        for path, text, before in self.writes:
            out.append({"before_header": path if before is not None else "%s (absent)" % path,
                        "after_header": path, "before": before or "", "after": text})
        for path, before in self.removes:
            out.append({"before_header": path, "after_header": "%s (absent)" % path, "before": before, "after": ""})
        return out

    def apply(self):
        dirs = set(self.mkdirs) | set(os.path.dirname(path) for path, _text, _before in self.writes)
        for directory in sorted(dirs):
            if not os.path.isdir(directory):
                os.makedirs(directory, 0o755)
                os.chmod(directory, 0o755)
        for path, text, _before in self.writes:
            write_atomic(path, text)
        for path, _before in self.removes:
            with contextlib.suppress(OSError):
                os.unlink(path)


def _check_files(config, boot, where):
    if not config.check_files:
        return
    for field, ref in boot.refs:
        if _URL_RE.match(ref):
            continue
        if not os.path.isfile(os.path.join(config.root, ref)):
            hint = " (the deploy_env role publishes it)" if boot.kind == "deploy" else ""
            raise NetbootError("%s.%s: %r not found under %s%s" % (where, field, ref, config.root, hint))


def _check_loader(boot, loader, where):
    if loader == "pxelinux" and not boot.local and boot.urls():
        raise NetbootError("%s: pxelinux fetches over TFTP only: kernel and initrd must be paths under the boot "
                           "root, or the node's loader must be ipxe" % where)


def _managed_files(config):
    """Per-node files written here that exist now: {path: is_dhcp}."""
    found = {}
    locations = [(os.path.join(config.root, "pxelinux.cfg"), False), (os.path.join(config.root, "ipxe"), False)]
    if config.dhcp_hostsdir:
        locations.append((config.dhcp_hostsdir, True))
    for directory, dhcp in locations:
        try:
            names = os.listdir(directory)
        except OSError:
            continue
        for name in names:
            path = os.path.join(directory, name)
            if name.startswith(".") or name in ("default", "default.ipxe"):
                continue
            parsed = parse_header(read_text(path))
            if parsed is not None and parsed[0] is not None:
                found[path] = dhcp
    return found


def netboot(config, nodes, state="present", default_profile=None, initial_profile="local",
            exclusive=False, check_mode=False):
    """Set (present), remove (absent) or read (query) the boot profile of nodes.

    With state=present, what a call does not say stays as it was: a node given
    without a profile keeps the one it has (its files are rendered again), or
    gets `initial_profile` when it has none; a node given without a name, an IP
    or a loader keeps those of its files.  With `exclusive`, the files of nodes
    not listed are removed.  Everything is checked before anything is written.

    Returns a dict: changed, nodes {name: {mac, ip, loader, previous, profile,
    changed, files}}, changed_nodes, removed, dhcp_reload, default (when
    default_profile is given), diff.
    """
    if state not in ("present", "absent", "query"):
        raise NetbootError("state: %r is not one of present, absent, query" % (state,))
    nodes = normalize_nodes(nodes)
    initial = normalize_profile(initial_profile, "initial_profile")
    default = normalize_profile(default_profile, "default_profile") if default_profile is not None else None
    errors = _Errors()
    result = {"nodes": {}}
    work = []       # (node as it will be written, its paths, its result entry)
    for node in nodes:
        paths = node_paths(config, node)
        current = _current_dhcp(paths)
        if not node["named"]:
            parsed = parse_header(read_text(paths["ipxe"]))
            node = dict(node, name=(parsed and parsed[0]) or current.get("name") or node["name"])
        if node["name"] in result["nodes"]:
            errors.add("node %r: given twice (by name, and by MAC or IP)" % node["name"])
            continue
        previous = _current_profile(paths)
        node = dict(node, ip=node["ip"] or current.get("ip"),
                    loader=node["loader"] or current.get("loader") or (config.loader if state == "present" else None))
        if state == "present":
            profile = node["profile"] or previous or initial
        else:
            profile = previous if state == "query" else None
        entry = {"mac": node["mac"], "ip": node["ip"], "loader": node["loader"] if profile else None,
                 "previous": previous, "profile": profile, "changed": False, "files": sorted(paths.values())}
        result["nodes"][node["name"]] = entry
        work.append((node, paths, entry))
        if state == "present":
            where = "node %r profile %s" % (node["name"], profile["kind"])
            with errors.collect():
                boot = _Boot(config, profile, node)
                _check_loader(boot, node["loader"], where)
                _check_files(config, boot, where)
    if default is not None and state == "present":
        where = "default_profile %s" % default["kind"]
        with errors.collect():
            boot = _Boot(config, default, None)
            _check_loader(boot, config.loader, where)
            _check_files(config, boot, where)
    errors.raise_if_any()

    plan = _Plan()
    if state == "present":
        # dnsmasq needs its hosts directory even before the first reservation.
        for directory in (os.path.join(config.root, "pxelinux.cfg"), os.path.join(config.root, "ipxe"),
                          config.dhcp_hostsdir):
            if directory:
                plan.directory(directory)
        for node, paths, entry in work:
            profile = entry["profile"]
            changed = plan.want(paths["pxelinux"], render_pxelinux(config, profile, node))
            changed = plan.want(paths["ipxe"], render_ipxe(config, profile, node)) or changed
            if "dhcp" in paths:
                changed = plan.want(paths["dhcp"], render_dhcp_host(config, node), dhcp=True) or changed
            entry["changed"] = changed
        plan.want(os.path.join(config.root, "boot.ipxe"), render_boot_ipxe(config))
        if default is not None:
            paths = default_paths(config)
            previous = _current_profile(paths)
            changed = plan.want(paths["pxelinux"], render_pxelinux(config, default))
            changed = plan.want(paths["ipxe"], render_ipxe(config, default)) or changed
            result["default"] = {"previous": previous, "profile": default, "changed": changed}
        if exclusive:
            keep = set()
            for _node, paths, _entry in work:
                keep.update(paths.values())
            for path, dhcp in sorted(_managed_files(config).items()):
                if path not in keep:
                    plan.remove(path, dhcp=dhcp)
    elif state == "absent":
        for _node, paths, entry in work:
            for kind, path in sorted(paths.items()):
                entry["changed"] = plan.remove(path, dhcp=(kind == "dhcp")) or entry["changed"]

    result["changed_nodes"] = [name for name, entry in result["nodes"].items() if entry["changed"]]
    result["removed"] = [path for path, _before in plan.removes]
    result["dhcp_reload"] = plan.dhcp_reload
    result["changed"] = bool(plan.mkdirs or plan.writes or plan.removes)
    result["diff"] = plan.diff()
    if not check_mode and result["changed"]:
        try:
            plan.apply()
        except (IOError, OSError) as exc:
            raise NetbootError("writing boot files failed: %s" % exc)
    return result
