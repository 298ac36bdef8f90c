#!/usr/bin/env python
# Copyright: (c) 2026, gridops.metal developers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Supervisor of one lab: runs its BMC daemons and reaps every orphan.

    gridops_lab_supervisor.py start --config STATE/supervisor.json

The config lists services (argv, network namespace, log file).  The
supervisor detaches, makes itself a child subreaper and runs each service in
the foreground as its child, restarting one that dies (with a back-off).
QEMU processes that BMCs start with -daemonize become orphans: as subreaper
the supervisor inherits and reaps them, so nothing turns into a zombie on a
machine whose PID 1 does not reap.

SIGHUP re-reads the config (services whose definition changed are restarted,
node QEMU processes keep running); SIGTERM stops every service and every
descendant, then exits.  After each (re)load the config's sha256 is written to
``loaded`` next to the pid file so callers know which config is in force.
"""
import ctypes
import hashlib
import json
import os
import signal
import subprocess
import sys
import time

PR_SET_CHILD_SUBREAPER = 36
MARKER = "gridops_lab_supervisor"


def log(msg):
    sys.stdout.write("%s %s\n" % (time.strftime("%Y-%m-%dT%H:%M:%S"), msg))
    sys.stdout.flush()


def config_hash(path):
    with open(path, "rb") as fh:
        return hashlib.sha256(fh.read()).hexdigest()


def write_atomic(path, text):
    tmp = "%s.tmp%d" % (path, os.getpid())
    with open(tmp, "w") as fh:
        fh.write(text)
    os.rename(tmp, path)


def children_of(ppid):
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open("/proc/%s/stat" % entry) as fh:
                fields = fh.read().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        if int(fields[1]) == ppid and fields[0] not in ("Z", "X"):
            found.append(int(entry))
    return found


class Service:
    def __init__(self, spec):
        self.spec = spec
        self.name = spec["name"]
        self.proc = None
        self.restarts = 0
        self.next_start = 0.0

    def key(self):
        return json.dumps(self.spec, sort_keys=True)

    def argv(self):
        argv = list(self.spec["argv"])
        if self.spec.get("netns"):
            argv = ["nsenter", "--net=/run/netns/%s" % self.spec["netns"], "--"] + argv
        return argv

    def start(self):
        logf = open(self.spec["log"], "ab")
        env = dict(os.environ)
        env.update(self.spec.get("env", {}))
        try:
            self.proc = subprocess.Popen(self.argv(), stdin=subprocess.DEVNULL, stdout=logf,
                                         stderr=subprocess.STDOUT, start_new_session=True,
                                         env=env, cwd=self.spec.get("cwd", "/"))
        except OSError as exc:
            log("service %s failed to start: %s" % (self.name, exc))
            self.proc = None
            self.next_start = time.time() + 5
        finally:
            logf.close()
        if self.proc:
            log("service %s started, pid %d" % (self.name, self.proc.pid))

    def running(self):
        return self.proc is not None and self.proc.returncode is None

    def stop(self, timeout=10):
        if not self.running():
            return
        for sig, wait in ((signal.SIGTERM, timeout), (signal.SIGKILL, 5)):
            try:
                os.killpg(self.proc.pid, sig)
            except ProcessLookupError:
                pass
            deadline = time.time() + wait
            while time.time() < deadline:
                if self.proc.poll() is not None:
                    break
                time.sleep(0.1)
            if self.proc.returncode is not None:
                break
        log("service %s stopped (rc=%s)" % (self.name, self.proc.returncode))


class Supervisor:
    def __init__(self, config_path):
        self.config_path = config_path
        self.services = {}
        self.reload_wanted = True
        self.stop_wanted = False

    def load(self):
        digest = config_hash(self.config_path)
        with open(self.config_path) as fh:
            config = json.load(fh)
        wanted = dict((spec["name"], spec) for spec in config.get("services", []))
        for name in list(self.services):
            svc = self.services[name]
            if name not in wanted or svc.key() != json.dumps(wanted[name], sort_keys=True):
                svc.stop()
                del self.services[name]
        for name, spec in sorted(wanted.items()):
            if name not in self.services:
                svc = Service(spec)
                svc.start()
                self.services[name] = svc
        write_atomic(config["loaded_file"], digest + "\n")
        log("config %s loaded (%s)" % (self.config_path, digest[:12]))

    def reap(self):
        while True:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return
            if pid == 0:
                return
            for svc in self.services.values():
                if svc.proc is not None and svc.proc.pid == pid:
                    svc.proc.returncode = os.waitstatus_to_exitcode(status)
                    svc.restarts += 1
                    delay = min(30, 2 ** min(svc.restarts, 5))
                    svc.next_start = time.time() + delay
                    log("service %s exited (rc=%s); restart in %ss" % (svc.name, svc.proc.returncode, delay))

    def run(self):
        signal.signal(signal.SIGHUP, lambda *a: setattr(self, "reload_wanted", True))
        signal.signal(signal.SIGTERM, lambda *a: setattr(self, "stop_wanted", True))
        signal.signal(signal.SIGINT, lambda *a: setattr(self, "stop_wanted", True))
        while not self.stop_wanted:
            if self.reload_wanted:
                self.reload_wanted = False
                try:
                    self.load()
                except (OSError, ValueError, KeyError) as exc:
                    log("config not loaded: %s" % exc)
            self.reap()
            now = time.time()
            for svc in self.services.values():
                if not svc.running() and now >= svc.next_start:
                    svc.start()
            time.sleep(0.3)
        self.shutdown()

    def shutdown(self):
        log("stopping")
        for svc in self.services.values():
            svc.stop()
        # Orphans we inherited (node QEMUs): TERM, then KILL what is left.
        for sig in (signal.SIGTERM, signal.SIGKILL):
            for pid in children_of(os.getpid()):
                try:
                    os.kill(pid, sig)
                except OSError:
                    pass
            deadline = time.time() + 5
            while time.time() < deadline and children_of(os.getpid()):
                self.reap()
                time.sleep(0.1)
        self.reap()
        log("stopped")


def daemonize(pidfile, logfile):
    """Detach twice; the grandchild writes pidfile; the caller returns when it exists."""
    rd, wr = os.pipe()
    if os.fork() > 0:
        os.close(wr)
        ready = os.read(rd, 64)
        os.close(rd)
        if not ready.startswith(b"ok"):
            sys.exit("supervisor failed to start: %s" % ready.decode(errors="replace"))
        return False
    os.close(rd)
    os.setsid()
    if os.fork() > 0:
        os._exit(0)
    fd = os.open(logfile, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    null = os.open(os.devnull, os.O_RDONLY)
    os.dup2(null, 0)
    os.dup2(fd, 1)
    os.dup2(fd, 2)
    os.chdir("/")
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) != 0:
        os.write(wr, b"prctl(PR_SET_CHILD_SUBREAPER) failed")
        os._exit(1)
    write_atomic(pidfile, "%d\n" % os.getpid())
    os.write(wr, b"ok")
    os.close(wr)
    return True


def main(argv):
    if len(argv) != 3 or argv[0] != "start" or argv[1] != "--config":
        sys.exit("usage: %s start --config FILE" % MARKER)
    config_path = os.path.abspath(argv[2])
    with open(config_path) as fh:
        config = json.load(fh)
    if daemonize(config["pidfile"], config["log"]):
        try:
            Supervisor(config_path).run()
        finally:
            try:
                os.unlink(config["pidfile"])
            except OSError:
                pass
        os._exit(0)


if __name__ == "__main__":
    main(sys.argv[1:])
