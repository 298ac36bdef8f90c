# -*- coding: utf-8 -*-
# Copyright: (c) 2026, gridops.metal developers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Power and boot-device control of many nodes at once: the engine of gridops.metal.power.

Plain Python, no Ansible: the module parses its parameters and calls
:func:`run`; the deploy engine calls the same function for its reboots.

* Nodes run in parallel, at most ``window`` at a time, a new one starting no
  sooner than ``spacing`` seconds after the previous one (a rack must not draw
  its inrush current at once).
* Every node gets a result dict (see :func:`new_result`); a failure is that
  node's ``error``, never an exception that stops the others.
* ``reboot`` climbs an escalation ladder per node: soft (``reboot`` over ssh,
  confirmed by the node going down), hard (IPMI power cycle, or off then on
  where the BMC refuses cycle, or a reset), very hard (an operator's command,
  e.g. a PDU outlet cycle, from an argv template).  The first level that
  succeeds ends the climb.
* In check mode the BMCs are only queried (power and boot device), so the
  prediction is made from the real current state, and credentials are checked.
"""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import os
import signal
import socket
import string
import subprocess
import threading
import time

from ansible_collections.gridops.metal.plugins.module_utils._ipmi import DEFAULT_PORT, Bmc, IpmiError

STATES = ("query", "on", "off", "shutdown", "reset", "cycle", "reboot")
BOOT_DEVICES = ("pxe", "disk", "cdrom", "bios", "default")
LEVELS = ("soft", "hard", "very_hard")
HARD_METHODS = ("cycle", "reset")
# What a very_hard command template may name, e.g. ["pdu", "cycle", "{name}"].
COMMAND_FIELDS = ("name", "host", "bmc_address", "bmc_port")
# The power state each state leaves a node in.
TARGET_POWER = {"on": "on", "off": "off", "shutdown": "off", "reset": "on", "cycle": "on", "reboot": "on"}

SOFT_DEFAULTS = {"user": "root", "private_key": None, "port": 22, "command": "reboot", "timeout": 60,
                 "connect_timeout": 10}
HARD_DEFAULTS = {"method": "cycle", "timeout": 60}
VERY_HARD_DEFAULTS = {"command": None, "timeout": 120}
LEVEL_DEFAULTS = {"soft": SOFT_DEFAULTS, "hard": HARD_DEFAULTS, "very_hard": VERY_HARD_DEFAULTS}

# Printed by the soft level's ssh command before the reboot command: seen on
# stdout, it proves the login worked even if the reboot cuts the connection.
SOFT_MARKER = "gridops-power-soft-reboot"
_TAIL = 300


class PowerInputError(ValueError):
    """Bad input, found before anything is sent to any node."""


class StepError(Exception):
    """A non-IPMI step failed (ssh, an operator command)."""

    def __init__(self, message, kind):
        super(StepError, self).__init__(message)
        self.kind = kind


# -- input -------------------------------------------------------------------


def normalize_nodes(nodes, bmc_user=None, bmc_password=None, bmc_port=None):
    """Nodes with every field filled in from the defaults; refuse what cannot work."""
    out, seen, endpoints = [], set(), {}
    for index, node in enumerate(nodes or []):
        if not isinstance(node, dict):
            raise PowerInputError("nodes[%d]: a dict is needed, got %r" % (index, type(node).__name__))
        name = node.get("name")
        if not name:
            raise PowerInputError("nodes[%d]: name is missing" % index)
        name = str(name)
        if name in seen:
            raise PowerInputError("node %s is listed twice" % name)
        seen.add(name)
        address = node.get("bmc_address")
        if not address:
            raise PowerInputError("node %s: bmc_address is missing" % name)
        user = node.get("bmc_user") if node.get("bmc_user") is not None else bmc_user
        password = node.get("bmc_password") if node.get("bmc_password") is not None else bmc_password
        if user is None or password is None:
            raise PowerInputError("node %s: no %s (give it per node or as a module parameter)"
                                  % (name, "bmc_user" if user is None else "bmc_password"))
        port = node.get("bmc_port") if node.get("bmc_port") is not None else bmc_port
        try:
            port = int(port if port is not None else DEFAULT_PORT)
        except (TypeError, ValueError):
            raise PowerInputError("node %s: bmc_port %r is not a number" % (name, port))
        if not 0 < port < 65536:
            raise PowerInputError("node %s: bmc_port %d is out of range" % (name, port))
        # One session per BMC and node: two nodes behind one BMC endpoint would
        # share (and close) each other's session.
        other = endpoints.setdefault((str(address), port), name)
        if other != name:
            raise PowerInputError("nodes %s and %s have the same BMC %s:%d" % (other, name, address, port))
        out.append({"name": name, "host": str(node.get("host") or name), "bmc_address": str(address),
                    "bmc_port": port, "bmc_user": str(user), "bmc_password": str(password)})
    return out


def check_command_template(argv):
    """Refuse an empty template or a placeholder other than COMMAND_FIELDS."""
    if not argv:
        raise PowerInputError("very_hard.command: an argv list is needed, e.g. [pdu, cycle, '{name}']")
    formatter = string.Formatter()
    for arg in argv:
        try:
            fields = [f for _lit, f, _spec, _conv in formatter.parse(str(arg)) if f is not None]
        except ValueError as exc:
            raise PowerInputError("very_hard.command: %r: %s (write {{ and }} for literal braces)" % (arg, exc))
        for field in fields:
            if field not in COMMAND_FIELDS:
                raise PowerInputError("very_hard.command: %r names {%s}; known: %s"
                                      % (arg, field, ", ".join("{%s}" % f for f in COMMAND_FIELDS)))


def render_command(argv, node):
    """The argv of a very_hard command for one node (no shell: one argument stays one argument)."""
    values = dict((f, node[f]) for f in COMMAND_FIELDS)
    return [str(arg).format(**values) for arg in argv]


def make_request(state="query", boot_device=None, boot_persistent=False, boot_uefi=False, timeout=60,
                 soft=None, hard=None, very_hard=None, check_mode=False, login_timeout=10.0, poll_interval=0.5):
    """Validate and complete what to do; raise PowerInputError before anything is sent."""
    if state not in STATES:
        raise PowerInputError("state %r: one of %s" % (state, ", ".join(STATES)))
    if boot_device is not None and boot_device not in BOOT_DEVICES:
        raise PowerInputError("boot_device %r: one of %s" % (boot_device, ", ".join(BOOT_DEVICES)))
    if timeout is None or timeout <= 0:
        raise PowerInputError("timeout must be positive")
    if login_timeout is None or login_timeout <= 0:
        raise PowerInputError("login_timeout must be positive")
    levels = {}
    given = {"soft": soft, "hard": hard, "very_hard": very_hard}
    for level in LEVELS:
        if given[level] is None:
            continue
        cfg = dict(LEVEL_DEFAULTS[level])
        cfg.update(dict((k, v) for k, v in given[level].items() if v is not None))
        unknown = set(cfg) - set(LEVEL_DEFAULTS[level])
        if unknown:
            raise PowerInputError("%s: unknown option(s) %s" % (level, ", ".join(sorted(unknown))))
        if not cfg["timeout"] or cfg["timeout"] <= 0:
            raise PowerInputError("%s.timeout must be positive" % level)
        levels[level] = cfg
    if "hard" in levels and levels["hard"]["method"] not in HARD_METHODS:
        raise PowerInputError("hard.method %r: one of %s" % (levels["hard"]["method"], ", ".join(HARD_METHODS)))
    if "very_hard" in levels:
        check_command_template(levels["very_hard"]["command"])
    if state == "reboot" and not levels:
        levels["hard"] = dict(HARD_DEFAULTS)
    return {"state": state, "boot_device": boot_device, "boot_persistent": bool(boot_persistent),
            "boot_uefi": bool(boot_uefi), "timeout": float(timeout), "levels": levels,
            "check_mode": bool(check_mode), "login_timeout": float(login_timeout),
            "poll_interval": float(poll_interval)}


# -- processes -----------------------------------------------------------------


def run_command(argv, timeout):
    """Run argv (no shell) in its own process group; kill the group on timeout.

    Returns (rc, stdout, stderr); rc is None when the command timed out.
    """
    try:
        proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                start_new_session=True)
    except OSError as exc:
        return 127, "", "cannot run %s: %s" % (argv[0], exc)
    try:
        out, err = proc.communicate(timeout=timeout)
        rc = proc.returncode
    except subprocess.TimeoutExpired:
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except OSError:
            pass
        out, err = proc.communicate()
        rc = None
    return rc, out.decode("utf-8", "replace"), err.decode("utf-8", "replace")


def tcp_open(host, port, timeout=1.0):
    """True if something accepts a TCP connection on host:port."""
    try:
        sock = socket.create_connection((host, port), timeout=timeout)
    except (OSError, socket.timeout):
        return False
    sock.close()
    return True


def _tail(text):
    text = " ".join(text.strip().split())
    return text[-_TAIL:] if text else ""


# -- windowed execution --------------------------------------------------------


def run_windowed(count, work, window, spacing=0.0, clock=time.monotonic, sleep=time.sleep):
    """Call work(i) for i in range(count) in threads, at most `window` at once,
    starts at least `spacing` seconds apart; return the results in order."""
    if window < 1:
        raise PowerInputError("window must be at least 1")
    results = [None] * count
    slots = threading.BoundedSemaphore(window)
    threads = []

    def worker(i):
        try:
            results[i] = work(i)
        finally:
            slots.release()

    last = None
    for i in range(count):
        slots.acquire()
        if spacing and last is not None:
            delay = last + spacing - clock()
            if delay > 0:
                sleep(delay)
        last = clock()
        thread = threading.Thread(target=worker, args=(i,), name="power-%d" % i)
        thread.daemon = True
        thread.start()
        threads.append(thread)
    for thread in threads:
        thread.join()
    return results


# -- one node ------------------------------------------------------------------


def new_result(node):
    return {
        "name": node["name"], "bmc_address": node["bmc_address"], "bmc_port": node["bmc_port"],
        "failed": False, "changed": False, "error": None, "error_kind": None,
        "previous_power": None, "power": None, "previous_boot_device": None, "boot_device": None,
        "actions": [], "level": None, "attempts": [], "warnings": [], "bmc_auth": None,
        "started": None, "elapsed": None,
    }


class NodeRun(object):
    """What one node goes through for one request; fills its result dict."""

    def __init__(self, node, request, bmc_factory, clock=time.monotonic):
        self.node = node
        self.req = request
        self.bmc_factory = bmc_factory
        self.clock = clock
        self.res = new_result(node)
        self.bmc = None
        self.boot_pending = None

    # -- helpers

    def _bmc(self):
        if self.bmc is None:
            self.bmc = self.bmc_factory(self.node, self.req)
        self.bmc.open()
        self.res["bmc_auth"] = getattr(self.bmc, "auth_algorithm", None)
        return self.bmc

    def _fail(self, message, kind):
        self.res["failed"] = True
        self.res["error"] = message
        self.res["error_kind"] = kind

    def _act(self, text):
        self.res["actions"].append(text)
        self.res["changed"] = True

    def _query(self):
        bmc = self._bmc()
        self.res["previous_power"] = bmc.power_state()
        try:
            self.res["previous_boot_device"] = bmc.get_boot_device()
        except IpmiError as exc:
            if exc.kind != "refused":
                raise
            self.res["warnings"].append("the BMC does not report its boot device: %s" % exc)

    def _final(self):
        """Power and boot device as the BMC reports them at the end."""
        bmc = self._bmc()
        self.res["power"] = bmc.power_state()
        try:
            self.res["boot_device"] = bmc.get_boot_device()
        except IpmiError as exc:
            if exc.kind != "refused":
                raise
        have = (self.res["boot_device"] or {}).get("device")
        if self.boot_pending and have != self.boot_pending:
            self.res["warnings"].append(
                "the BMC accepted boot device %s but still reports %s: it may apply it only at the next "
                "power-on (state=cycle powers off and on)" % (self.boot_pending, have))

    def _boot_device(self):
        device = self.req["boot_device"]
        if device is None:
            self.res["boot_device"] = self.res["previous_boot_device"]
            return
        want = {"device": device, "persistent": self.req["boot_persistent"] and device != "default",
                "uefi": self.req["boot_uefi"] and device != "default"}
        have = self.res["previous_boot_device"]
        # A one-time device counts only while the BMC marks it valid: a used one
        # leaves its selector behind on some BMCs.
        if have and have.get("valid") and dict((k, have[k]) for k in want) == want:
            self.res["boot_device"] = have
            return
        label = "boot device %s (%s)" % (device, "persistent" if want["persistent"] else "next boot")
        if self.req["check_mode"]:
            self._act(label)
            self.res["boot_device"] = dict(want, valid=device != "default")
            return
        got = self.bmc.set_boot_device(device, want["persistent"], want["uefi"])
        self._act(label)
        self.res["boot_device"] = got
        if got["device"] != device:
            if self.res["previous_power"] != "on":
                raise IpmiError("%s: asked for boot device %s, the BMC keeps %s"
                                % (self.bmc.label, device, got["device"]), "refused")
            # Some BMCs (virtualbmc) report the new device only after the next
            # power-on: look again at the end.
            self.boot_pending = device
        for flag in ("persistent", "uefi"):
            if want[flag] and not got.get(flag):
                self.res["warnings"].append("the BMC took boot device %s but dropped the %s flag" % (device, flag))

    def _wait(self, state, timeout=None):
        return self.bmc.wait_power(state, self.req["timeout"] if timeout is None else timeout,
                                   self.req["poll_interval"])

    # -- entry point

    def run(self, started):
        self.res["started"] = round(started, 3)
        begin = self.clock()
        try:
            if self.req["state"] == "reboot":
                self._reboot()
            else:
                self._direct()
        except IpmiError as exc:
            self._fail(str(exc), exc.kind)
        except StepError as exc:
            self._fail(str(exc), exc.kind)
        except Exception as exc:  # a node's bug must not stop the other nodes
            self._fail("internal error: %s: %s" % (type(exc).__name__, exc), "internal")
        finally:
            if self.bmc is not None:
                self.bmc.close()
            self.res["elapsed"] = round(self.clock() - begin, 3)
        return self.res

    def _direct(self):
        self._query()
        self._boot_device()
        state, prev = self.req["state"], self.res["previous_power"]
        if state == "query":
            self.res["power"] = prev
            return
        # What to do: nothing when the node already is where on/off/shutdown
        # lead; reset and cycle always act, and power an off node on.
        if state in ("on", "off", "shutdown"):
            action = state if prev != TARGET_POWER[state] else None
        else:
            action = state if prev == "on" else "on (was off)"
        if self.req["check_mode"]:
            if action:
                self._act(action)
            self.res["power"] = TARGET_POWER[state]
            return
        if action in ("on", "on (was off)"):
            self.bmc.chassis_control("on")
            self._act(action)
            self._wait("on")
        elif action == "off":
            self.bmc.chassis_control("off")
            self._act(action)
            self._wait("off")
        elif action == "shutdown":
            self.bmc.chassis_control("soft")
            self._act(action)
            try:
                self._wait("off")
            except IpmiError as exc:
                raise IpmiError("%s: the OS did not power off (state=off forces it)" % exc, exc.kind)
        elif action == "reset":
            self.bmc.chassis_control("reset")
            self._act(action)
            self._wait("on")
        elif action == "cycle":
            self._act(self.bmc.cycle(self.req["timeout"]))
        self._final()

    # -- reboot ladder

    def _reboot(self):
        levels = self.req["levels"]
        bmc_error = None
        try:
            self._query()
        except IpmiError as exc:
            bmc_error = exc
        except Exception as exc:  # a library bug must not keep the other levels from running
            bmc_error = IpmiError("internal error: %s: %s" % (type(exc).__name__, exc), "internal")
        if self.req["boot_device"] is not None:
            if bmc_error is not None:
                # Rebooting into the wrong thing is worse than not rebooting.
                raise IpmiError("cannot set the boot device, so no reboot: %s" % bmc_error, bmc_error.kind)
            self._boot_device()
        elif bmc_error is None:
            self.res["boot_device"] = self.res["previous_boot_device"]
        if self.req["check_mode"]:
            order = [lv for lv in LEVELS if lv in levels and not (lv == "hard" and bmc_error is not None)]
            if order:
                self.res["level"] = order[0]
                self._act("reboot (%s)" % order[0])
                self.res["power"] = "on"
            else:
                raise bmc_error
            return
        errors = []
        for level in LEVELS:
            if level not in levels:
                continue
            start = self.clock()
            attempt = {"level": level, "ok": False, "error": None, "elapsed": None}
            self.res["attempts"].append(attempt)
            try:
                if level == "soft":
                    self._soft(levels[level])
                elif level == "hard":
                    if bmc_error is not None:
                        raise bmc_error
                    self._hard(levels[level])
                else:
                    self._very_hard(levels[level])
            except (IpmiError, StepError) as exc:
                attempt["error"] = str(exc)
                errors.append("%s: %s" % (level, exc))
                continue
            except Exception as exc:  # as above: the next level still runs
                attempt["error"] = "internal error: %s: %s" % (type(exc).__name__, exc)
                errors.append("%s: %s" % (level, attempt["error"]))
                continue
            finally:
                attempt["elapsed"] = round(self.clock() - start, 3)
            attempt["ok"] = True
            self.res["level"] = level
            break
        if self.res["level"] is None:
            raise StepError("no escalation level rebooted the node: %s" % "; ".join(errors), "escalation")
        if bmc_error is None:
            try:
                self._final()
            except IpmiError as exc:
                self.res["warnings"].append("rebooted, but the BMC cannot be queried: %s" % exc)

    def _soft(self, cfg):
        host, port = self.node["host"], int(cfg["port"])
        argv = ["ssh", "-o", "BatchMode=yes", "-o", "StrictHostKeyChecking=no",
                "-o", "UserKnownHostsFile=/dev/null", "-o", "LogLevel=ERROR",
                "-o", "ConnectTimeout=%d" % max(1, int(cfg["connect_timeout"])),
                "-o", "ServerAliveInterval=2", "-o", "ServerAliveCountMax=2",
                "-p", str(port), "-l", cfg["user"]]
        if cfg["private_key"]:
            argv += ["-i", cfg["private_key"], "-o", "IdentitiesOnly=yes"]
        argv += [host, "echo %s; %s" % (SOFT_MARKER, cfg["command"])]
        deadline = self.clock() + cfg["timeout"]
        rc, out, err = run_command(argv, cfg["timeout"])
        if SOFT_MARKER not in out:
            why = _tail(err) or ("timed out" if rc is None else "exit status %s" % rc)
            raise StepError("ssh %s@%s:%d: %s" % (cfg["user"], host, port, why), "ssh")
        self._act("ssh %s" % cfg["command"])
        # Down means ssh no longer answers: the reboot really started.
        while tcp_open(host, port, timeout=1.0):
            if self.clock() >= deadline:
                raise StepError("ssh %s@%s:%d: %r ran but the node still answers after %gs"
                                % (cfg["user"], host, port, cfg["command"], cfg["timeout"]), "ssh")
            time.sleep(0.25)

    def _hard(self, cfg):
        bmc = self._bmc()
        if bmc.power_state() == "off":
            bmc.chassis_control("on")
            self._act("on (was off)")
            bmc.wait_power("on", cfg["timeout"], self.req["poll_interval"])
        elif cfg["method"] == "reset":
            bmc.chassis_control("reset")
            self._act("reset")
            bmc.wait_power("on", cfg["timeout"], self.req["poll_interval"])
        else:
            self._act(bmc.cycle(cfg["timeout"]))

    def _very_hard(self, cfg):
        argv = render_command(cfg["command"], self.node)
        rc, out, err = run_command(argv, cfg["timeout"])
        if rc != 0:
            why = "timed out after %gs" % cfg["timeout"] if rc is None else "exit status %d" % rc
            detail = _tail(err) or _tail(out)
            raise StepError("%s: %s%s" % (argv[0], why, ": " + detail if detail else ""), "command")
        self._act("command %s" % os.path.basename(argv[0]))


def default_bmc_factory(node, request):
    return Bmc(node["bmc_address"], node["bmc_user"], node["bmc_password"], port=node["bmc_port"],
               login_timeout=request["login_timeout"], poll_interval=request["poll_interval"])


def run(nodes, request, window=25, spacing=0.0, bmc_factory=None, clock=time.monotonic):
    """Apply request (from make_request) to every node; return their results in order."""
    factory = bmc_factory or default_bmc_factory
    origin = clock()

    def work(i):
        return NodeRun(nodes[i], request, factory, clock).run(clock() - origin)

    return run_windowed(len(nodes), work, window, spacing, clock=clock)


def summarize(results):
    """Names of the failed and the changed nodes, and a one-line message."""
    failed = [r["name"] for r in results if r["failed"]]
    changed = [r["name"] for r in results if r["changed"]]
    msg = "%d node(s): %d changed, %d failed" % (len(results), len(changed), len(failed))
    return {"failed_nodes": failed, "changed_nodes": changed, "msg": msg}
