# -*- coding: utf-8 -*-
# Copyright: (c) 2026, gridops.metal developers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Apply a systemd-networkd configuration live, and roll it back unless confirmed.

    python3 network-apply apply   [--check] [options] < {"files": {NAME: CONTENT}}
    python3 network-apply confirm --id ID [--wait S]
    python3 network-apply status  --id ID [--wait S]
    python3 network-apply run     --id ID          (the transaction; started by apply)

The gridops.metal.network role owns the files whose names start with the
prefix in the network directory.  ``apply`` compares them with the wanted
ones; when they differ it stages the change and starts ``run`` as a transient
systemd service, so the change outlives the SSH connection it may cut.
``run`` keeps the old files, installs the new ones, deletes the bridges, bonds
and VLANs whose definition changed or went away (networkd never changes them),
reloads networkd and reconfigures the links.  It then checks that every new
device exists and every check host answers a ping, and waits for the
controller to confirm over a new connection (``confirm``).  A failed check or
no confirmation before the deadline puts the old files back the same way:
"commit confirmed", so a bad variable never cuts the operator off.

Who wins between a late confirmation and the deadline is decided by one
rename of the ``armed`` file.  Every step prints or records JSON.
"""
import argparse
import contextlib
import fcntl
import json
import os
import re
import shutil
import subprocess
import sys
import time

STATES_DONE = ("committed", "rolled-back", "failed")
KEEP_TRANSACTIONS = 5


class ApplyError(Exception):
    pass


def run_cmd(argv, check=True):
    """Run argv; return (rc, output).  Replaced by the unit tests."""
    proc = subprocess.run(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, check=False)
    out = proc.stdout.decode("utf-8", "replace")
    if check and proc.returncode != 0:
        raise ApplyError("%s failed (rc %d): %s" % (" ".join(argv), proc.returncode, out.strip()))
    return proc.returncode, out


def link_exists(name):
    return os.path.exists("/sys/class/net/%s" % name)


# --------------------------------------------------------------------------
# Files


def managed_files(net_dir, prefix):
    """{name: content} of the files we own in the network directory."""
    files = {}
    for name in sorted(os.listdir(net_dir)) if os.path.isdir(net_dir) else []:
        if name.startswith(prefix) and name.endswith((".netdev", ".network", ".link")):
            with open(os.path.join(net_dir, name)) as fh:
                files[name] = fh.read()
    return files


def read_dir(path):
    return managed_files(path, "")


def write_dir(path, files):
    os.makedirs(path, exist_ok=True)
    for name, content in files.items():
        with open(os.path.join(path, name), "w") as fh:
            fh.write(content)


def netdev_name(content):
    """Name= of a .netdev file's [NetDev] section."""
    section = None
    for line in content.splitlines():
        line = line.strip()
        if line.startswith("["):
            section = line
        elif section == "[NetDev]" and line.startswith("Name="):
            return line.split("=", 1)[1].strip()
    return None


def match_names(content):
    """Names of a .network file's [Match] Name= lines."""
    section, names = None, []
    for line in content.splitlines():
        line = line.strip()
        if line.startswith("["):
            section = line
        elif section == "[Match]" and line.startswith("Name="):
            names += line.split("=", 1)[1].split()
    return names


def netdevs(files):
    return dict((netdev_name(c), c) for n, c in files.items() if n.endswith(".netdev") and netdev_name(c))


def diff(current, wanted):
    return {
        "added": sorted(set(wanted) - set(current)),
        "removed": sorted(set(current) - set(wanted)),
        "modified": sorted(n for n in set(wanted) & set(current) if wanted[n] != current[n]),
    }


def network_refs(content):
    """Devices a .network file attaches its link to (Bridge=, Bond=, VLAN=)."""
    section, refs = None, set()
    for line in content.splitlines():
        line = line.strip()
        if line.startswith("["):
            section = line
        elif section == "[Network]" and line.split("=", 1)[0] in ("Bridge", "Bond", "VLAN"):
            refs.add(line.split("=", 1)[1].strip())
    return refs


def to_reconfigure(current, target, stale):
    """Links whose .network changed, or that hang on a device made anew."""
    names = set()
    for name in set(current) | set(target):
        if not name.endswith(".network"):
            continue
        old, new = current.get(name), target.get(name)
        if old != new or any(network_refs(c) & set(stale) for c in (old, new) if c):
            names.update(n for c in (old, new) if c for n in match_names(c) if not any(ch in n for ch in "*?["))
    return names


def switch(net_dir, current, target, log):
    """Replace our files `current` with `target` and make networkd apply them live."""
    old_devs, new_devs = netdevs(current), netdevs(target)
    stale = sorted(n for n in old_devs if new_devs.get(n) != old_devs[n])
    existing_before = sorted(n for n in to_reconfigure(current, target, stale) if link_exists(n) and n not in stale)
    for name in set(current) - set(target):
        os.unlink(os.path.join(net_dir, name))
    for name, content in target.items():
        tmp = os.path.join(net_dir, ".%s.tmp" % name)
        with open(tmp, "w") as fh:
            fh.write(content)
        os.chmod(tmp, 0o644)
        os.rename(tmp, os.path.join(net_dir, name))
    for name in stale:
        # networkd does not change or remove a device whose .netdev changed or went: it is made anew.
        if link_exists(name):
            log("delete %s" % name)
            run_cmd(["ip", "link", "delete", name])
    run_cmd(["networkctl", "reload"])
    existing = [n for n in existing_before if link_exists(n)]
    if existing:
        run_cmd(["networkctl", "reconfigure"] + existing)
    log("switched: %s; reconfigured %s" % (json.dumps(diff(current, target)), ", ".join(existing) or "nothing"))


# --------------------------------------------------------------------------
# Transactions


class Transaction:
    def __init__(self, state_dir, tid):
        if not re.match(r"^[0-9A-Za-z_.-]+$", tid or ""):
            raise ApplyError("bad transaction id %r" % tid)
        self.state_dir = state_dir
        self.id = tid
        self.dir = os.path.join(state_dir, tid)

    def path(self, name):
        return os.path.join(self.dir, name)

    def params(self):
        with open(self.path("params.json")) as fh:
            return json.load(fh)

    def status(self):
        try:
            with open(self.path("status.json")) as fh:
                return json.load(fh)
        except (OSError, ValueError):
            return {"id": self.id, "state": "unknown"}

    def set_status(self, state, **extra):
        doc = self.status()
        doc.update(extra)
        doc.update({"id": self.id, "state": state, "time": time.time()})
        tmp = self.path("status.json.tmp")
        with open(tmp, "w") as fh:
            json.dump(doc, fh, sort_keys=True)
        os.rename(tmp, self.path("status.json"))

    def log(self, text):
        with open(self.path("log"), "a") as fh:
            fh.write("%s %s\n" % (time.strftime("%H:%M:%S"), text))

    def wait(self, states, timeout, interval=0.2):
        deadline = time.monotonic() + timeout
        while True:
            status = self.status()
            if status.get("state") in states or time.monotonic() >= deadline:
                return status
            time.sleep(interval)


@contextlib.contextmanager
def state_lock(state_dir, blocking=True):
    os.makedirs(state_dir, exist_ok=True)
    fd = os.open(os.path.join(state_dir, "lock"), os.O_RDWR | os.O_CREAT, 0o600)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | (0 if blocking else fcntl.LOCK_NB))
        except BlockingIOError:
            raise ApplyError("another network change is in progress (see %s)" % state_dir)
        yield
    finally:
        os.close(fd)


def ping(host, timeout=1):
    rc, _out = run_cmd(["ping", "-n", "-c", "1", "-W", str(timeout), host], check=False)
    return rc == 0


def local_checks(params, log, deadline):
    """'' when the new devices exist and the check hosts answer before the deadline, else why not."""
    pending_devs = list(params["netdevs"])
    pending_hosts = list(params["check_hosts"])
    while True:
        pending_devs = [d for d in pending_devs if not link_exists(d)]
        pending_hosts = [h for h in pending_hosts if not ping(h)]
        if not pending_devs and not pending_hosts:
            return ""
        if time.monotonic() >= deadline:
            why = []
            if pending_devs:
                why.append("not created: %s (see journalctl -u systemd-networkd)" % ", ".join(pending_devs))
            if pending_hosts:
                why.append("no answer from %s" % ", ".join(pending_hosts))
            return "; ".join(why)
        time.sleep(0.5)


def run_transaction(tx, sleep=time.sleep):
    """The transaction itself: switch, check, wait for confirmation, commit or roll back."""
    params = tx.params()
    with state_lock(tx.state_dir):
        old = read_dir(tx.path("old"))
        new = read_dir(tx.path("new"))
        try:
            tx.set_status("applying")
            switch(params["net_dir"], old, new, tx.log)
        except (ApplyError, OSError) as exc:
            tx.log("apply failed: %s" % exc)
            return rollback(tx, params, new, old, "applying failed: %s" % exc)
        why = local_checks(params, tx.log, time.monotonic() + params["settle"])
        if why:
            return rollback(tx, params, new, old, "check failed: " + why)
        tx.set_status("armed", armed_at=time.time())
        open(tx.path("armed"), "w").close()
        tx.log("armed: waiting %ss for the confirmation" % params["timeout"])
        deadline = time.monotonic() + params["timeout"]
        while time.monotonic() < deadline and not os.path.exists(tx.path("confirmed")):
            sleep(0.2)
        try:
            os.rename(tx.path("armed"), tx.path("expired"))
        except FileNotFoundError:
            tx.log("confirmed")
            tx.set_status("committed")
            return tx.status()
        return rollback(tx, params, new, old, "not confirmed within %ss: the controller could not reach the host "
                        "over its management address after the change" % params["timeout"])


def rollback(tx, params, current, previous, reason):
    tx.log("rolling back: %s" % reason)
    try:
        switch(params["net_dir"], current, previous, tx.log)
    except (ApplyError, OSError) as exc:
        tx.log("rollback failed: %s" % exc)
        tx.set_status("failed", reason="%s; then the rollback failed: %s" % (reason, exc))
        return tx.status()
    tx.set_status("rolled-back", reason=reason)
    return tx.status()


def prune(state_dir, keep=KEEP_TRANSACTIONS):
    entries = []
    for name in os.listdir(state_dir):
        path = os.path.join(state_dir, name)
        if os.path.isdir(path):
            entries.append((os.path.getmtime(path), path))
    for _mtime, path in sorted(entries)[:-keep or None]:
        shutil.rmtree(path, ignore_errors=True)


def apply(args, wanted, start=None):
    """Compare, and when the files differ stage a transaction and start it; return the report."""
    current = managed_files(args.dir, args.prefix)
    bad = sorted(n for n in wanted if not n.startswith(args.prefix) or "/" in n)
    if bad:
        raise ApplyError("file names must start with %s: %s" % (args.prefix, ", ".join(bad)))
    report = diff(current, wanted)
    report["changed"] = any(report.values())
    report["id"] = None
    if not report["changed"] or args.check:
        return report
    with state_lock(args.state, blocking=False):
        prune(args.state)
        tid = time.strftime("%Y%m%dT%H%M%S") + "-%d" % os.getpid()
        tx = Transaction(args.state, tid)
        os.makedirs(tx.dir)
        write_dir(tx.path("old"), current)
        write_dir(tx.path("new"), wanted)
        params = {"net_dir": args.dir, "prefix": args.prefix, "timeout": args.timeout, "settle": args.settle,
                  "check_hosts": args.check_host or [], "netdevs": sorted(netdevs(wanted))}
        with open(tx.path("params.json"), "w") as fh:
            json.dump(params, fh, sort_keys=True)
        tx.set_status("staged")
    (start or start_transaction)(args, tx)
    report["id"] = tx.id
    return report


def start_transaction(args, tx):
    """Run the transaction as a transient service: it must outlive our SSH session."""
    unit = "gridops-network-%s" % tx.id.replace("T", "-")
    run_cmd(["systemd-run", "--unit", unit, "--collect", "--quiet", "--description",
             "gridops.metal network change %s" % tx.id,
             sys.executable, os.path.abspath(__file__), "run", "--state", args.state, "--id", tx.id])


def confirm(tx, timeout):
    """Confirm an armed transaction; report its final state."""
    status = tx.wait(("armed",) + STATES_DONE, timeout)
    if status.get("state") == "armed":
        try:
            os.rename(tx.path("armed"), tx.path("confirmed"))
        except FileNotFoundError:
            pass   # the deadline won
        status = tx.wait(STATES_DONE, 30)
    return status


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("command", choices=("apply", "confirm", "status", "run"))
    parser.add_argument("--dir", default="/etc/systemd/network")
    parser.add_argument("--prefix", default="10-gridops-")
    parser.add_argument("--state", default="/var/lib/gridops-network")
    parser.add_argument("--id")
    parser.add_argument("--timeout", type=int, default=60, help="seconds the controller has to confirm")
    parser.add_argument("--settle", type=int, default=20, help="seconds for new devices and check hosts")
    parser.add_argument("--check-host", action="append")
    parser.add_argument("--check", action="store_true", help="only report what would change")
    parser.add_argument("--wait", type=int, default=0, help="seconds to wait for a final state")
    args = parser.parse_args(argv)
    try:
        if args.command == "apply":
            report = apply(args, json.load(sys.stdin)["files"])
        elif args.command == "run":
            report = run_transaction(Transaction(args.state, args.id))
        elif args.command == "confirm":
            report = confirm(Transaction(args.state, args.id), args.wait or args.timeout)
        else:
            tx = Transaction(args.state, args.id)
            report = tx.wait(STATES_DONE, args.wait) if args.wait else tx.status()
            with contextlib.suppress(OSError):
                with open(tx.path("log")) as fh:
                    report["log"] = fh.read().splitlines()
    except (ApplyError, OSError, ValueError, KeyError) as exc:
        print(json.dumps({"failed": True, "msg": str(exc)}))
        return 2
    print(json.dumps(report, sort_keys=True))
    if args.command in ("confirm", "status") and report.get("state") != "committed":
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
