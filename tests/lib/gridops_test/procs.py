"""Run daemons in the foreground as children, and reap everything.

PID 1 on the development and CI machines does not reap orphans: a daemon that
forks into the background and later dies stays a zombie forever.  The test
process therefore makes itself a *child subreaper*: orphans of anything it
started are re-parented to it, and :func:`reap_orphans` collects them.
Daemons are started in the foreground (``dnsmasq -k``, ``ipmi_sim -n``) in
their own session so that stopping one stops its whole process group.
"""
import contextlib
import ctypes
import errno
import os
import signal
import subprocess
import time

PR_SET_CHILD_SUBREAPER = 36

_libc = ctypes.CDLL(None, use_errno=True)


def become_subreaper():
    """Make this process the reaper of its orphaned descendants (Linux only)."""
    if _libc.prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) != 0:
        err = ctypes.get_errno()
        raise OSError(err, "prctl(PR_SET_CHILD_SUBREAPER): " + os.strerror(err))


def reap_orphans():
    """Collect every exited child that nobody waits for; return their PIDs."""
    reaped = []
    while True:
        try:
            pid, _status = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            break
        if pid == 0:
            break
        reaped.append(pid)
    return reaped


def netns_argv(netns, argv):
    """Prefix argv so that it runs inside the named network namespace.

    ``nsenter --net`` rather than ``ip netns exec``: the latter remounts /sys,
    which breaks daemons that look at cgroups there (slurmd).
    """
    if not netns:
        return list(argv)
    return ["nsenter", "--net=/run/netns/%s" % netns, "--"] + list(argv)


def run(argv, netns=None, check=True, timeout=120, **kwargs):
    """Run a command to completion (optionally inside a namespace)."""
    kwargs.setdefault("capture_output", True)
    kwargs.setdefault("text", True)
    res = subprocess.run(netns_argv(netns, argv), timeout=timeout, check=False, **kwargs)
    if check and res.returncode != 0:
        raise subprocess.CalledProcessError(res.returncode, argv, res.stdout, res.stderr)
    return res


class Daemon:
    """A foreground daemon started as our child, in its own process group."""

    def __init__(self, argv, log_path, netns=None, env=None, cwd=None):
        self.argv = list(argv)
        self.log_path = str(log_path)
        self.netns = netns
        self.env = env
        self.cwd = cwd
        self.proc = None

    def start(self):
        log = open(self.log_path, "ab")
        try:
            self.proc = subprocess.Popen(
                netns_argv(self.netns, self.argv),
                stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                start_new_session=True, env=self.env, cwd=self.cwd,
            )
        finally:
            log.close()
        return self

    @property
    def pid(self):
        return self.proc.pid if self.proc else None

    def alive(self):
        return self.proc is not None and self.proc.poll() is None

    def log(self):
        with contextlib.suppress(OSError), open(self.log_path, errors="replace") as fh:
            return fh.read()
        return ""

    def stop(self, timeout=10):
        """SIGTERM the process group, then SIGKILL; always reap."""
        if self.proc is None:
            return None
        for sig, wait in ((signal.SIGTERM, timeout), (signal.SIGKILL, 10)):
            if self.proc.poll() is not None:
                break
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, sig)
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.proc.wait(wait)
        # Whatever else was in its group (children it forked) goes too.
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.proc.pid, signal.SIGKILL)
        reap_orphans()
        return self.proc.returncode

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.stop()


def wait_for(predicate, timeout, interval=0.2, what="condition"):
    """Poll predicate() until it returns a truthy value; raise TimeoutError otherwise."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise TimeoutError("timed out after %ss waiting for %s" % (timeout, what))
        time.sleep(interval)


def pid_alive(pid):
    """True if pid exists and is not a zombie."""
    try:
        with open("/proc/%d/stat" % pid) as fh:
            state = fh.read().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state not in ("Z", "X")


def kill_tree(pid, sig=signal.SIGKILL):
    """Kill pid and all its descendants (found through /proc)."""
    children = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open("/proc/%s/stat" % entry) as fh:
                ppid = int(fh.read().rsplit(")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            continue
        children.setdefault(ppid, []).append(int(entry))
    todo, seen = [pid], []
    while todo:
        cur = todo.pop()
        seen.append(cur)
        todo.extend(children.get(cur, []))
    for cur in reversed(seen):
        try:
            os.kill(cur, sig)
        except OSError as exc:
            if exc.errno != errno.ESRCH:
                raise
    reap_orphans()
