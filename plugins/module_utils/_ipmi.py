# -*- coding: utf-8 -*-
# Copyright: (c) 2026, gridops.metal developers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""IPMI-over-LAN chassis control on pyghmi, shared by the power module and the deploy engine.

One :class:`Bmc` is one RMCP+ session with one BMC.  It speaks the few chassis
commands a deployment needs (power status and control, boot device) through
pyghmi's session layer, and turns every failure into an :class:`IpmiError`
whose ``kind`` says what went wrong (``auth``, ``unreachable``, ``refused``,
``timeout``, ``protocol``) and whose message names the BMC.

Two BMC behaviours are handled here rather than left to the caller:

* virtualbmc answers an RMCP+ open-session request that offers SHA-256
  (cipher suite 17, pyghmi's first offer) by choosing SHA-1 (suite 3), and
  pyghmi ignores the answer: its RAKP exchange then fails (a ``struct.error``
  or "Incorrect password").  :class:`_Session` reads the algorithms the BMC
  chose and follows them, so the session uses what both sides agreed on.
* virtualbmc refuses ``chassis power cycle``: :meth:`Bmc.cycle` then powers
  off, waits until the BMC reports off, and powers on.

And three pyghmi behaviours that show with many sessions in threads (see
where they are handled): a lock-order deadlock between its two global locks,
a login that never ends when a BMC stops answering half-way, and a session
being set up that is never forgotten (so the next one to the same BMC would
be handed a dead one).

A boot device is verified by reading it back: some BMCs accept a request and
keep something else (ipmi_sim drops the persistent flag; ``ipmitool`` exits 0
even when the BMC refused the device).
"""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import hashlib
import socket
import struct
import time
import traceback

PYGHMI_IMPORT_ERROR = None
try:
    from pyghmi import exceptions as _pyghmi_exc
    from pyghmi.ipmi.private import session as _pyghmi_session
except ImportError:
    _pyghmi_exc = None
    _pyghmi_session = None
    PYGHMI_IMPORT_ERROR = traceback.format_exc()

HAS_PYGHMI = PYGHMI_IMPORT_ERROR is None

if HAS_PYGHMI and hasattr(_pyghmi_session, "WAITING_SESSIONS") and hasattr(_pyghmi_session, "KEEPALIVE_SESSIONS"):
    # pyghmi takes its two global locks in both orders (a retry holds
    # WAITING_SESSIONS and then wants KEEPALIVE_SESSIONS, every send the
    # reverse), so sessions used from several threads deadlock as soon as one
    # retries while another sends.  Both names on one reentrant lock cannot.
    _pyghmi_session.KEEPALIVE_SESSIONS = _pyghmi_session.WAITING_SESSIONS

DEFAULT_PORT = 623

POWER_STATES = ("on", "off")

# Chassis Control (IPMI 2.0, 28.3) data byte 1.
CHASSIS_CONTROL = {"off": 0, "on": 1, "cycle": 2, "reset": 3, "soft": 5}

# Boot flags parameter (28.13, parameter 5), data 2 bits 5:2: the device selector.
BOOT_DEVICES = {"default": 0, "pxe": 1, "disk": 2, "cdrom": 5, "bios": 6}
BOOT_SELECTOR_NAMES = {
    0: "default", 1: "pxe", 2: "disk", 3: "safe", 4: "diagnostic", 5: "cdrom", 6: "bios",
    7: "remote-floppy", 8: "remote-media", 9: "remote-cdrom", 11: "remote-disk", 15: "floppy",
}

# Completion codes that mean "this BMC does not do that" rather than a fault.
CC_INVALID_COMMAND = 0xC1
CC_INVALID_DATA = 0xCC
CC_UNSUPPORTED_PARAMETER = 0x80
REFUSAL_CODES = (CC_INVALID_COMMAND, CC_INVALID_DATA, 0xC9, 0xD5)
# How long a power cycle's off phase is looked for before waiting for on.
CYCLE_OFF_WINDOW = 5.0
# Seconds before a read-only request is sent again (pyghmi's own first retry
# comes after 0.5 to 1 s).  Requests that change something keep pyghmi's pace:
# a retry is a new request to the BMC, and a second `cycle` would cycle again.
READ_RETRY = 0.2

# RMCP+ authentication algorithms (13.28): what the BMC may choose.
_RAKP_HMAC_SHA1 = 1
_RAKP_HMAC_SHA256 = 3
AUTH_NAMES = {_RAKP_HMAC_SHA1: "RAKP-HMAC-SHA1", _RAKP_HMAC_SHA256: "RAKP-HMAC-SHA256"}


class IpmiError(Exception):
    """A BMC operation failed.  ``kind``: auth, unreachable, refused, timeout, protocol."""

    def __init__(self, message, kind="protocol", code=None):
        super(IpmiError, self).__init__(message)
        self.kind = kind
        self.code = code


def _session_base():
    return _pyghmi_session.Session if HAS_PYGHMI else object


class _Session(_session_base()):
    """pyghmi's RMCP+ session, following the algorithms the BMC chose.

    The open-session response (IPMI 2.0 table 13-10) carries the BMC's choice of
    authentication algorithm at byte 16 and integrity algorithm at byte 24.
    pyghmi offers SHA-256 and assumes it was accepted; a BMC that picks SHA-1
    (virtualbmc) is followed here instead of failing the RAKP exchange.
    """

    def _got_rmcp_response(self, data):
        if (len(data) >= 25 and data[0] == getattr(self, "rmcptag", None) and data[1] == 0
                and getattr(self, "attemptedhash", None) == 256 and data[16] == _RAKP_HMAC_SHA1):
            self.attemptedhash = 1
            self.currhashlib = hashlib.sha1
            self.currhashlen = 12
        return super(_Session, self)._got_rmcp_response(data)

    def _req_priv_level(self):
        # The last login step waits inside pyghmi, where a reply that comes back
        # before pyghmi starts waiting is noticed only at the retry timer (0.5 to
        # 1 s; it happens often with a BMC on the same host).  This request is
        # harmless to repeat: retry it sooner.
        self.timeout = min(getattr(self, "timeout", READ_RETRY), READ_RETRY)
        return super(_Session, self)._req_priv_level()

    @property
    def auth_algorithm(self):
        return AUTH_NAMES[_RAKP_HMAC_SHA1 if getattr(self, "attemptedhash", 1) == 1 else _RAKP_HMAC_SHA256]


def _login_error(bmc, message):
    """Classify a failed session setup."""
    text = str(message or "")
    low = text.lower()
    if "password" in low or "unauthorized name" in low or "invalid role" in low or "unauthorized role" in low:
        return IpmiError("%s: login refused: %s (check bmc_user and bmc_password)" % (bmc, text), "auth")
    if not text or "timeout" in low or "failed to initialize" in low or "no longer connected" in low:
        return IpmiError("%s: no answer (BMC unreachable, wrong port, or not an IPMI-over-LAN BMC)" % bmc,
                         "unreachable")
    return IpmiError("%s: session setup failed: %s" % (bmc, text), "protocol")


class Bmc(object):
    """One session with one BMC; use as a context manager or call close()."""

    def __init__(self, address, user, password, port=DEFAULT_PORT, login_timeout=10.0, poll_interval=0.5):
        if not HAS_PYGHMI:
            raise IpmiError("the Python library pyghmi is not installed", "protocol")
        self.address = address
        self.port = int(port)
        self.user = user or ""
        self.password = password or ""
        self.login_timeout = login_timeout
        self.poll_interval = poll_interval
        self.label = "BMC %s:%d" % (address, self.port)
        self._session = None

    # -- session -------------------------------------------------------------

    def open(self):
        """Log in, within login_timeout seconds.

        The login runs in pyghmi's asynchronous mode, polled here against our own
        deadline: pyghmi's synchronous login waits forever when a BMC answers the
        open-session request but never the RAKP message 1 (virtualbmc does that
        for an unknown user).
        """
        if self._session is not None:
            return self
        try:
            socket.getaddrinfo(self.address, self.port, 0, socket.SOCK_DGRAM)
        except socket.gaierror as exc:
            raise IpmiError("%s: cannot resolve %s: %s" % (self.label, self.address, exc), "unreachable")
        outcome = {}
        deadline = time.monotonic() + self.login_timeout
        key = (self.address, self.user, self.password, self.port, None)
        sess = None
        try:
            sess = _Session(bmc=self.address, userid=self.user, password=self.password, port=self.port,
                            onlogon=outcome.update, keepalive=False)
            while not outcome and time.monotonic() < deadline:
                _pyghmi_session.Session.wait_for_rsp(timeout=min(0.1, max(0.0, deadline - time.monotonic())))
        except _pyghmi_exc.IpmiException as exc:
            raise _login_error(self.label, exc)
        except (struct.error, IndexError, TypeError, ValueError) as exc:
            raise IpmiError("%s: malformed answer during session setup: %s" % (self.label, exc), "protocol")
        finally:
            # pyghmi registers a session being set up under the text credentials
            # and removes it under their bytes, so never: a later session with the
            # same BMC and credentials would be handed this one, logged out.
            sessions = _pyghmi_session.Session.initting_sessions
            if sess is None or sessions.get(key) is sess:
                sessions.pop(key, None)
        if "error" in outcome or not outcome:
            got, stage = dict(outcome), getattr(sess, "sessioncontext", None)
            try:
                sess._mark_broken(got.get("error") or "login timed out")
            except Exception:  # already broken: nothing more to release
                pass
            if got:
                raise _login_error(self.label, got["error"])
            if stage in ("EXPECTINGRAKP2", "EXPECTINGRAKP4"):
                raise IpmiError("%s: login not completed within %gs: the BMC answered but not the user's "
                                "authentication (unknown bmc_user?)" % (self.label, self.login_timeout), "auth")
            raise IpmiError("%s: no answer within %gs (BMC unreachable, wrong port, or not an IPMI-over-LAN "
                            "BMC)" % (self.label, self.login_timeout), "unreachable")
        self._session = sess
        return self

    @property
    def auth_algorithm(self):
        return self._session.auth_algorithm if self._session is not None else None

    def close(self):
        sess, self._session = self._session, None
        if sess is not None:
            try:
                sess.logout()
            except Exception:  # the BMC may be gone already; nothing to keep
                pass

    def __enter__(self):
        return self.open()

    def __exit__(self, *exc):
        self.close()

    def raw(self, netfn, command, data=(), what="command", read_only=False):
        """Send one request; return the response data (bytes) or raise IpmiError."""
        self.open()
        try:
            rsp = self._session.raw_command(netfn=netfn, command=command, data=list(data),
                                            timeout=READ_RETRY if read_only else None)
        except _pyghmi_exc.IpmiException as exc:
            self.close()
            raise IpmiError("%s: %s: %s" % (self.label, what, exc or "no answer"), "timeout")
        except (struct.error, IndexError, TypeError, ValueError) as exc:
            raise IpmiError("%s: %s: malformed answer: %s" % (self.label, what, exc), "protocol")
        if not rsp:
            raise IpmiError("%s: %s: no answer" % (self.label, what), "timeout")
        code = rsp.get("code", 0)
        if "error" in rsp or code:
            message = rsp.get("error") or "completion code 0x%02x" % code
            if code == 0xFFFF or message == "timeout":
                self.close()
                raise IpmiError("%s: %s: no answer" % (self.label, what), "timeout")
            kind = "refused" if code in REFUSAL_CODES or code == CC_UNSUPPORTED_PARAMETER else "protocol"
            raise IpmiError("%s: %s refused: %s (0x%02x)" % (self.label, what, message, code & 0xFF), kind, code)
        return bytes(bytearray(rsp.get("data", b"")))

    # -- power ---------------------------------------------------------------

    def power_state(self):
        """'on' or 'off' (Get Chassis Status, current power state bit 0)."""
        data = self.raw(0x00, 0x01, what="get chassis status", read_only=True)
        if not data:
            raise IpmiError("%s: get chassis status: empty answer" % self.label, "protocol")
        return "on" if bytearray(data)[0] & 1 else "off"

    def chassis_control(self, action):
        """Send chassis control on|off|cycle|reset|soft; return at once."""
        self.raw(0x00, 0x02, [CHASSIS_CONTROL[action]], what="chassis power %s" % action)

    def wait_power(self, state, timeout, interval=None):
        """Poll until the BMC reports state; return it, or raise IpmiError(kind='timeout')."""
        interval = self.poll_interval if interval is None else interval
        deadline = time.monotonic() + timeout
        while True:
            current = self.power_state()
            if current == state:
                return current
            if time.monotonic() >= deadline:
                raise IpmiError("%s: power still %s %gs after the request (wanted %s)"
                                % (self.label, current, timeout, state), "timeout")
            time.sleep(min(interval, max(0.0, deadline - time.monotonic())))

    def cycle(self, timeout):
        """Power cycle; where the BMC refuses it, power off, wait for off, power on.

        Returns the method used: 'cycle' or 'off+on'.  Waits until the BMC
        reports on again, within timeout seconds in all.
        """
        deadline = time.monotonic() + timeout
        try:
            self.chassis_control("cycle")
        except IpmiError as exc:
            if exc.kind != "refused":
                raise
            self.chassis_control("off")
            self.wait_power("off", timeout)
            self.chassis_control("on")
            self.wait_power("on", max(0.0, deadline - time.monotonic()))
            return "off+on"
        # The spec keeps power off for at least a second: look for that, so that
        # an "on" read before the BMC acted is not taken for the end of the cycle.
        try:
            self.wait_power("off", min(CYCLE_OFF_WINDOW, timeout), interval=0.2)
        except IpmiError as exc:
            if exc.kind != "timeout":
                raise
        self.wait_power("on", max(0.0, deadline - time.monotonic()))
        return "cycle"

    # -- boot device ---------------------------------------------------------

    def get_boot_device(self):
        """{'device', 'persistent', 'uefi', 'valid'} from the boot flags parameter."""
        data = bytearray(self.raw(0x00, 0x09, [5, 0, 0], what="get boot device", read_only=True))
        if len(data) < 3 or (data[1] & 0x7F) != 5:
            raise IpmiError("%s: get boot device: unexpected answer %s" % (self.label, _hex(data)), "protocol")
        flags = data[2]
        selector = (data[3] >> 2) & 0x0F if len(data) > 3 else 0
        # 'valid' is cleared once a one-time device was used (and ipmi_sim never
        # sets it); the selector is reported all the same, as ipmitool does.
        return {
            "device": BOOT_SELECTOR_NAMES.get(selector, "selector-%d" % selector),
            "persistent": bool(flags & 0x40),
            "uefi": bool(flags & 0x20),
            "valid": bool(flags & 0x80),
        }

    def set_boot_device(self, device, persistent=False, uefi=False):
        """Ask for a boot device; return what the BMC reports afterwards.

        Raises IpmiError(kind='refused') when the BMC refuses the request.  What
        it reports afterwards is for the caller to judge: some BMCs report the new
        device only after the next power-on (virtualbmc on a running machine),
        some drop the persistent or UEFI flag (ipmi_sim).
        """
        if device not in BOOT_DEVICES:
            raise ValueError("unknown boot device %r" % device)
        # Keep the valid bit past the 60 s timer (as ipmitool and pyghmi do);
        # a BMC that lacks this parameter still takes the device.
        try:
            self.raw(0x00, 0x08, [3, 0x08], what="set boot flag timer")
        except IpmiError as exc:
            if exc.kind != "refused":
                raise
        if device == "default":
            flags = 0
        else:
            flags = 0x80 | (0x40 if persistent else 0) | (0x20 if uefi else 0)
        self.raw(0x00, 0x08, [5, flags, BOOT_DEVICES[device] << 2, 0, 0, 0],
                 what="set boot device %s" % device)
        return self.get_boot_device()


def _hex(data):
    return " ".join("%02x" % b for b in bytearray(data)) or "(empty)"
