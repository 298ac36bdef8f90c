# -*- coding: utf-8 -*-
# Copyright: (c) 2026, gridops.metal developers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Image broadcast: one image file to many nodes at once, the engine of the deploy module.

Plain Python (stdlib, 3.9+), no Ansible.  :func:`broadcast` sends one file to N
receivers and returns, per receiver, whether its target command got the whole
image intact.  Receivers are nodes in a busybox ramdisk, reached by a command
prefix (``Receiver.argv``: ssh in real life, ``ip netns exec`` in the tests);
on each the engine runs :data:`AGENT`, a POSIX sh script, and talks to it over
the command's stdin/stdout with one line per message:

    agent -> engine   READY | BYTES <n> | FWD <status> | LOG <text> | FAIL <step> <text>
                      | DONE <sha256> <target status> <source status> | BYE
    engine -> agent   NEXT <ip> <port> | NEXT - | CUT | QUIT   (or end of stdin = QUIT)

method "chain" (default): a pipelined chain server -> r1 -> ... -> rN.  Each
agent listens (``nc -l -p PORT``) and prints READY; the engine then tells each
its next hop (NEXT), connects to r1 and sends the file with ``socket.sendfile``.
Every agent tees the stream to its forwarder (``nc NEXT PORT``), to
``sha256sum`` and to the target command.  busybox 1.35's tee does NOT ignore
SIGPIPE, so the agent keeps a reader on every tee output for the whole run (a
holder on the forwarder fifo, a drain after the forwarder or the target ends):
a dying neighbour or a failing target never kills tee, so it never takes the
upstream nodes down with it.  A node that dies (its command session ends
before DONE, or no progress for ``stall_timeout`` while its upstream has more
data) fails at step "transfer" and is cut out: its upstream agent gets CUT
(its forwarder is killed and replaced by a drain) and the nodes downstream of
it, whose stream is now truncated, are stopped and re-fed by another chain
pass from the server (``retries`` passes at most, default 1).

method "pull": the engine serves the file over HTTP (a ThreadingHTTPServer on
server_address:port) and every agent runs ``wget -O - URL``, in parallel.

``progress(event)`` is called from the calling thread, at most every
``progress_interval`` seconds.
"""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import collections
import errno
import hashlib
import http.server
import os
import queue
import re
import secrets
import shlex
import signal
import socket
import subprocess
import threading
import time

METHODS = ("chain", "pull")
STEPS = ("start", "connect", "transfer", "verify", "write")
STATES = ("starting", "ready", "receiving", "done", "failed")
DEFAULT_PORT = 45213
SEND_CHUNK = 4 * 1024 * 1024
_TAIL = 400
_HEX64 = re.compile(r"^[0-9a-fA-F]{64}$")

# The agent: POSIX sh, busybox applets (``busybox X`` when a busybox binary is
# there, so the semantics are busybox's whatever else is on PATH).
# Arguments: MODE (chain|pull) DIR PORT INTERVAL TARGET URL.
AGENT = r"""M=$1 W=$2 P=$3 I=$4 T=$5 U=$6
BB=
command -v busybox >/dev/null 2>&1 && BB=busybox
kids() {
    for s in /proc/[0-9]*/stat; do
        { read -r kp kc ks kpp kr < "$s"; } 2>/dev/null && [ "$kpp" = "$1" ] && echo "$kp"
    done
}
killtree() {
    for k in $(kids "$1"); do killtree "$k"; done
    kill -9 "$1" 2>/dev/null
}
cleanup() {
    trap - HUP INT TERM
    for k in $(kids $$); do killtree "$k"; done
    rm -rf "$W"
    rmdir "${W%/*}" 2>/dev/null
    echo BYE
    exit 0
}
fail() { echo "FAIL $1 $2"; cleanup; }
trap cleanup HUP INT TERM
rm -rf "$W"
mkdir -p "$W" 2>/dev/null || { echo "FAIL start cannot create $W"; exit 1; }
$BB mkfifo "$W/out" "$W/sum" "$W/fwd" "$W/ctl" "$W/gate" "$W/idle" || fail start "mkfifo failed in $W"
if [ "$M" = chain ]; then
    case "$($BB netstat -ltn 2>/dev/null)" in
        *":$P "*) fail start "port $P is already in use" ;;
    esac
fi
# The target; once it ends, drain its fifo (tee dies of SIGPIPE otherwise).
{ sh -c "$T" >"$W/target.log" 2>&1; echo $? >"$W/rc"; exec $BB cat >/dev/null; } <"$W/out" &
# sha256sum, child of a process that never reaps it: its /proc io (bytes read) stays readable.
( $BB sha256sum <"$W/sum" >"$W/sha" 2>&1 & echo $! >"$W/sha.pid"; exec $BB cat "$W/gate" >/dev/null ) &
if [ "$M" = chain ]; then
    # stdin: a fifo that never ends (small nc half-closes on stdin EOF, and the upstream nc exits on that).
    { $BB nc -l -p "$P" <>"$W/idle" 2>"$W/src.err"; echo $? >"$W/src.rc"; } | {
        read -r d <"$W/ctl"
        if [ "$d" = last ]; then exec $BB tee "$W/sum"; else exec $BB tee "$W/fwd" "$W/sum"; fi
    } >"$W/out" &
    i=0
    while :; do
        [ -s "$W/src.rc" ] && fail start "cannot listen on port $P: $($BB head -c 300 "$W/src.err")"
        case "$($BB netstat -ltn 2>/dev/null)" in *":$P "*) break ;; esac
        i=$((i + 1))
        [ $i -gt 150 ] && fail start "nc is not listening on port $P after 15 s"
        $BB sleep 0.1
    done
else
    { $BB wget -q -O - "$U" 2>"$W/src.err"; echo $? >"$W/src.rc"; } | $BB tee "$W/sum" >"$W/out" &
fi
(
    while [ ! -s "$W/sha.pid" ]; do $BB sleep 0.05; done
    read -r S <"$W/sha.pid"
    n=0
    while :; do
        st=
        { read -r x1 x2 st x3 <"/proc/$S/stat"; } 2>/dev/null
        { while read -r k v; do [ "$k" = rchar: ] && n=$v; done <"/proc/$S/io"; } 2>/dev/null
        [ "$st" = Z ] || [ -z "$st" ] && break
        echo "BYTES $n"
        $BB sleep "$I"
    done
    : <>"$W/gate"
    echo "BYTES $n"
    while [ ! -s "$W/rc" ]; do $BB sleep 0.1; done
    read -r rc <"$W/rc"
    sha=-
    [ -s "$W/sha" ] && read -r sha x <"$W/sha"
    src=-
    [ -s "$W/src.rc" ] && read -r src <"$W/src.rc"
    if [ "$rc" != 0 ]; then
        $BB tail -n 5 "$W/target.log" 2>/dev/null | while read -r l; do echo "LOG target: $l"; done
    fi
    if [ "$src" != - ] && [ "$src" != 0 ]; then
        $BB head -c 300 "$W/src.err" 2>/dev/null | while read -r l; do echo "LOG source: $l"; done
    fi
    echo "DONE $sha $rc $src"
) &
echo READY
F=
while read -r cmd a b; do
    case "$cmd" in
    NEXT)
        if [ "$a" = - ]; then
            ( echo last >"$W/ctl" ) &
        else
            $BB sleep 999999 <"$W/fwd" &
            ( echo fwd >"$W/ctl" ) &
            (
                $BB nc "$a" "$b" <"$W/fwd" >/dev/null 2>"$W/fwd.err"
                echo "FWD $? $($BB head -c 200 "$W/fwd.err" 2>/dev/null)"
                exec $BB cat "$W/fwd" >/dev/null
            ) &
            F=$!
        fi
        ;;
    CUT)
        [ -n "$F" ] && for k in $(kids "$F"); do kill -9 "$k" 2>/dev/null; done
        ;;
    QUIT) break ;;
    esac
done
cleanup
"""


class Receiver:
    """One node that receives the image.

    name: node name; address: the IP the previous hop (or the server) connects to;
    argv: callable(shell_command_string) -> argv list that runs that shell command
    on the node; target: shell command run on the node with the image on its stdin.
    """

    def __init__(self, name, address, argv, target):
        self.name = name
        self.address = address
        self.argv = argv
        self.target = target

    def __repr__(self):
        return "Receiver(%r, %r)" % (self.name, self.address)


def agent_command(mode, workdir, port, interval, target, url=""):
    """The shell command that runs the agent with its arguments (shlex-quoted)."""
    args = [mode, workdir, str(int(port)), _fmt_interval(interval), target, url or ""]
    return "set -- %s\n%s" % (" ".join(shlex.quote(a) for a in args), AGENT)


def _fmt_interval(seconds):
    return ("%.2f" % max(0.05, float(seconds))).rstrip("0").rstrip(".")


def parse_line(line):
    """One agent line -> (kind, data); unknown lines -> ("OTHER", line)."""
    if isinstance(line, bytes):
        line = line.decode("utf-8", "replace")
    line = line.rstrip("\r\n")
    word, _sep, rest = line.partition(" ")
    parts = rest.split()
    try:
        if word in ("READY", "BYE") and not rest.strip():
            return word, None
        if word == "BYTES" and len(parts) == 1:
            return "BYTES", int(parts[0])
        if word == "FWD" and parts:
            return "FWD", (int(parts[0]), rest.split(" ", 1)[1].strip() if " " in rest else "")
        if word == "FAIL" and parts:
            step = parts[0] if parts[0] in STEPS else "start"
            return "FAIL", (step, rest.split(" ", 1)[1].strip() if " " in rest else "")
        if word == "LOG":
            return "LOG", rest
        if word == "DONE" and len(parts) == 3:
            sha = parts[0].lower() if _HEX64.match(parts[0]) else None
            src = None if parts[2] == "-" else int(parts[2])
            return "DONE", (sha, int(parts[1]), src)
    except ValueError:
        pass
    return "OTHER", line


def file_sha256(path, chunk=1024 * 1024):
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(chunk), b""):
            digest.update(block)
    return digest.hexdigest()


def _positive(name, value):
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0:
        raise ValueError("%s must be a positive number, not %r" % (name, value))


def validate(path, receivers, method, sha256, port, server_address, timeout, stall_timeout,
             connect_timeout, progress, progress_interval, workdir, retries):
    """Raise ValueError for bad arguments; nothing has started yet."""
    if method not in METHODS:
        raise ValueError("method must be one of %s, not %r" % (", ".join(METHODS), method))
    if not isinstance(path, (str, bytes, os.PathLike)) or not os.path.isfile(path):
        raise ValueError("image %r is not a file" % (path,))
    if not os.access(path, os.R_OK):
        raise ValueError("image %r is not readable" % (path,))
    if sha256 is not None and not (isinstance(sha256, str) and _HEX64.match(sha256)):
        raise ValueError("sha256 must be 64 hexadecimal digits, not %r" % (sha256,))
    if isinstance(port, bool) or not isinstance(port, int) or not 0 <= port <= 65535:
        raise ValueError("port must be an integer in 0..65535, not %r" % (port,))
    if method == "pull" and not server_address:
        raise ValueError("method pull needs server_address (the address the nodes fetch from)")
    if server_address is not None and (not isinstance(server_address, str) or not server_address.strip()):
        raise ValueError("server_address must be a non-empty string")
    for name, value in (("timeout", timeout), ("stall_timeout", stall_timeout),
                        ("connect_timeout", connect_timeout), ("progress_interval", progress_interval)):
        _positive(name, value)
    if progress is not None and not callable(progress):
        raise ValueError("progress must be callable")
    if not isinstance(workdir, str) or not workdir.startswith("/") or workdir.rstrip("/") == "" \
            or any(c in workdir for c in "\n\r\0"):
        raise ValueError("workdir must be an absolute path (not /), not %r" % (workdir,))
    if isinstance(retries, bool) or not isinstance(retries, int) or retries < 0:
        raise ValueError("retries must be an integer >= 0, not %r" % (retries,))
    if not isinstance(receivers, (list, tuple)) or not receivers:
        raise ValueError("receivers must be a non-empty list of Receiver")
    seen = set()
    for rcv in receivers:
        for attr in ("name", "address", "argv", "target"):
            if not hasattr(rcv, attr):
                raise ValueError("receiver %r has no %s" % (rcv, attr))
        if not isinstance(rcv.name, str) or not rcv.name or any(c.isspace() for c in rcv.name):
            raise ValueError("receiver name must be a non-empty string without spaces, not %r" % (rcv.name,))
        if rcv.name in seen:
            raise ValueError("receiver name %r given twice" % rcv.name)
        seen.add(rcv.name)
        if method == "chain" and (not isinstance(rcv.address, str) or not rcv.address
                                  or any(c.isspace() for c in rcv.address)):
            raise ValueError("receiver %s: address must be a non-empty string, not %r" % (rcv.name, rcv.address))
        if not callable(rcv.argv):
            raise ValueError("receiver %s: argv must be callable(command) -> argv list" % rcv.name)
        if not isinstance(rcv.target, str) or not rcv.target.strip():
            raise ValueError("receiver %s: target must be a non-empty shell command" % rcv.name)


def new_result(method):
    return {"ok": False, "error": None, "step": None, "bytes": 0, "sha256": None, "seconds": 0.0,
            "method": method, "position": None, "attempts": 0}


class _Agent:
    """One agent command: its process, reader threads feeding the shared event queue."""

    def __init__(self, node, command, events):
        self.node = node
        self.events = events
        self.stderr = collections.deque(maxlen=20)
        self.bye = False
        self.ended = False
        self.proc = None
        argv = node.receiver.argv(command)
        self.proc = subprocess.Popen(list(argv), stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     stderr=subprocess.PIPE, start_new_session=True, bufsize=0)
        self._threads = [threading.Thread(target=self._read_out, daemon=True),
                         threading.Thread(target=self._read_err, daemon=True)]
        for thread in self._threads:
            thread.start()

    def _read_out(self):
        try:
            for raw in iter(self.proc.stdout.readline, b""):
                kind, data = parse_line(raw)
                if kind == "BYE":
                    self.bye = True
                self.events.put((self, kind, data))
        except (OSError, ValueError):
            pass
        self.events.put((self, "EOF", None))

    def _read_err(self):
        try:
            for raw in iter(self.proc.stderr.readline, b""):
                self.stderr.append(raw.decode("utf-8", "replace").rstrip())
        except (OSError, ValueError):
            pass

    def stderr_tail(self):
        text = " | ".join(line for line in self.stderr if line)
        return text[-_TAIL:]

    def send(self, line):
        try:
            self.proc.stdin.write((line + "\n").encode())
            self.proc.stdin.flush()
            return True
        except (OSError, ValueError):
            return False

    def quit(self):
        """Ask the agent to stop (QUIT, end of stdin); it kills its processes and removes its directory."""
        self.send("QUIT")
        try:
            self.proc.stdin.close()
        except (OSError, ValueError):
            pass

    def kill(self):
        if self.proc.poll() is None:
            try:
                os.killpg(self.proc.pid, signal.SIGKILL)
            except OSError:
                pass
        try:
            self.proc.wait(5)
        except subprocess.TimeoutExpired:
            pass

    def finish(self, deadline):
        self.quit()
        try:
            self.proc.wait(max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            pass
        self.kill()
        for thread in self._threads:
            thread.join(max(0.1, deadline - time.monotonic()))
        for stream in (self.proc.stdout, self.proc.stderr):
            try:
                stream.close()
            except OSError:
                pass


class _Node:
    def __init__(self, receiver, method):
        self.receiver = receiver
        self.name = receiver.name
        self.result = new_result(method)
        self.reset()

    def reset(self):
        self.agent = None
        self.state = "starting"
        self.bytes = 0
        self.last_line = time.monotonic()
        self.resolved = False
        self.retryable = False
        self.logs = []
        self.fwd = None
        self.workdir = None


class _Sender(threading.Thread):
    """Connects to the first node of the chain and sends the file with socket.sendfile."""

    def __init__(self, path, size, address, port, server_address, connect_timeout, stall_timeout):
        threading.Thread.__init__(self, daemon=True)
        self.path, self.size, self.address, self.port = path, size, address, port
        self.server_address = server_address
        self.connect_timeout, self.stall_timeout = connect_timeout, stall_timeout
        self.sent = 0
        self.connected = False
        self.error = None
        self.finished = False
        self.sock = None

    def run(self):
        try:
            source = (self.server_address, 0) if self.server_address else None
            deadline = time.monotonic() + self.connect_timeout
            while True:
                try:
                    self.sock = socket.create_connection((self.address, self.port), self.connect_timeout,
                                                         source_address=source)
                    break
                except OSError as exc:
                    if exc.errno != errno.ECONNREFUSED or time.monotonic() > deadline:
                        raise
                    time.sleep(0.2)
            self.connected = True
            self.sock.settimeout(self.stall_timeout)
            with open(self.path, "rb") as fh:
                while self.sent < self.size:
                    count = min(SEND_CHUNK, self.size - self.sent)
                    done = self.sock.sendfile(fh, self.sent, count)
                    if not done:
                        raise OSError("sendfile sent nothing at offset %d" % self.sent)
                    self.sent += done
            self.sock.shutdown(socket.SHUT_WR)
        except (OSError, socket.timeout) as exc:
            self.error = "%s: %s" % ("send" if self.connected else "connect", exc)
        finally:
            if self.sock is not None:
                try:
                    self.sock.close()
                except OSError:
                    pass
            self.finished = True

    def abort(self):
        if self.sock is not None:
            try:
                self.sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass


class _ImageHandler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.0"

    def do_GET(self):  # noqa: N802 (http.server's naming)
        server = self.server
        name = self.path.lstrip("/").split("?", 1)[0]
        if name not in server.names:
            self.send_error(404)
            return
        self.send_response(200)
        self.send_header("Content-Type", "application/octet-stream")
        self.send_header("Content-Length", str(server.size))
        self.end_headers()
        try:
            with open(server.image, "rb") as fh:
                self.connection.settimeout(server.stall_timeout)
                self.connection.sendfile(fh)
        except OSError:
            pass

    def log_message(self, *args):
        pass


def _http_server(path, size, names, address, port, stall_timeout):
    family = socket.AF_INET6 if ":" in address else socket.AF_INET

    class Server(http.server.ThreadingHTTPServer):
        address_family = family
        daemon_threads = True

    server = Server((address, port), _ImageHandler)
    server.image, server.size, server.names, server.stall_timeout = path, size, set(names), stall_timeout
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.2}, daemon=True)
    thread.start()
    return server, thread


def _url(address, port, name):
    host = "[%s]" % address if ":" in address else address
    return "http://%s:%d/%s" % (host, port, name)


class _Run:
    """One broadcast: the nodes, the passes, the events, progress."""

    def __init__(self, path, size, sha256, receivers, method, port, server_address, timeout, stall_timeout,
                 connect_timeout, progress, progress_interval, workdir, retries):
        self.path, self.size, self.sha256 = path, size, sha256
        self.method, self.port, self.server_address = method, port, server_address
        self.stall_timeout, self.connect_timeout = stall_timeout, connect_timeout
        self.progress, self.progress_interval = progress, progress_interval
        self.workdir, self.retries = workdir.rstrip("/"), retries
        self.nodes = [_Node(r, method) for r in receivers]
        self.start = time.monotonic()
        self.deadline = self.start + timeout
        self.timeout = timeout
        self.events = queue.Queue()
        self.token = secrets.token_hex(4)
        self.last_progress = 0.0
        self.agents = []
        self.http = None
        self.interval = min(1.0, progress_interval)

    # -- results ---------------------------------------------------------------

    def fail(self, node, step, error, retryable=False):
        if node.resolved:
            return
        node.resolved = True
        node.state = "failed"
        node.retryable = retryable
        res = node.result
        res.update(ok=False, step=step, error=error, bytes=node.bytes, seconds=round(time.monotonic() - self.start, 3))

    def succeed(self, node, sha):
        node.resolved = True
        node.state = "done"
        node.retryable = False
        node.result.update(ok=True, step=None, error=None, bytes=self.size, sha256=sha,
                           seconds=round(time.monotonic() - self.start, 3))

    def done(self, node, data):
        if node.resolved:
            return
        sha, rc, src = data
        node.result["sha256"] = sha
        logs = ("; " + " | ".join(node.logs)) if node.logs else ""
        if sha is not None and sha == self.sha256:
            node.bytes = self.size
            if rc != 0:
                self.fail(node, "write", "target exited with status %d%s" % (rc, logs))
            else:
                self.succeed(node, sha)
            return
        target = "" if rc == 0 else " (target exited with status %d)" % rc
        if node.bytes < self.size:
            if self.method == "pull" and src not in (None, 0) and node.bytes == 0:
                self.fail(node, "connect", "wget failed with status %s%s" % (src, logs))
                return
            self.fail(node, "transfer", "stream truncated: received %d of %d bytes%s%s"
                      % (node.bytes, self.size, target, logs), retryable=True)
        else:
            self.fail(node, "verify", "sha256 of the received stream is %s, expected %s%s"
                      % (sha, self.sha256, target))

    # -- agents ----------------------------------------------------------------

    def start_agent(self, node, mode, attempt):
        node.reset()
        node.result["attempts"] = attempt
        node.workdir = "%s/%s-%d-%d" % (self.workdir, self.token, self.nodes.index(node), attempt)
        url = _url(self.server_address, self.http_port, node.name) if mode == "pull" else ""
        command = agent_command(mode, node.workdir, self.port, self.interval, node.receiver.target, url)
        try:
            node.agent = _Agent(node, command, self.events)
        except (OSError, ValueError, TypeError) as exc:
            self.fail(node, "start", "cannot run the agent command: %s" % exc)
            return
        self.agents.append(node.agent)

    def handle(self, timeout):
        """Process events for up to `timeout` seconds (at least one wait); call progress."""
        end = time.monotonic() + max(0.0, timeout)
        while True:
            try:
                agent, kind, data = self.events.get(timeout=max(0.0, min(end - time.monotonic(), 0.2)))
            except queue.Empty:
                agent = None
            if agent is not None:
                self.on_event(agent, kind, data)
            self.report()
            if time.monotonic() >= end or agent is None:
                return

    def on_event(self, agent, kind, data):
        node = agent.node
        if node.agent is not agent:
            return  # a previous pass's agent
        node.last_line = time.monotonic()
        if kind == "EOF":
            agent.ended = True
        if node.resolved:
            return
        if kind == "READY":
            node.state = "ready"
        elif kind == "BYTES":
            if data > node.bytes:
                node.bytes = data
                node.state = "receiving"
        elif kind == "LOG":
            node.logs = (node.logs + [data])[-6:]
        elif kind == "FWD":
            node.fwd = data
        elif kind == "FAIL":
            self.fail(node, data[0], data[1] or "the agent failed")
            self.after_failure(node)
        elif kind == "DONE":
            self.done(node, data)
        elif kind == "EOF":
            try:
                # Its output ended; its exit status follows within moments.
                rc = agent.proc.wait(2)
            except subprocess.TimeoutExpired:
                rc = None
            when = "before READY" if node.state == "starting" else "before the end of the stream"
            why = "the agent's command ended (status %s) %s" % (rc, when)
            tail = agent.stderr_tail()
            self.fail(node, "start" if node.state == "starting" else "transfer",
                      why + (": " + tail if tail else ""))
            self.after_failure(node)

    def report(self, force=False):
        if self.progress is None:
            return
        now = time.monotonic()
        if not force and now - self.last_progress < self.progress_interval:
            return
        self.last_progress = now
        event = {"method": self.method, "elapsed": round(now - self.start, 3), "bytes_total": self.size,
                 "nodes": dict((n.name, {"bytes": n.bytes if not n.result["ok"] else self.size, "state": n.state})
                               for n in self.nodes)}
        self.progress(event)

    def finish_agents(self, agents, grace=5.0):
        deadline = time.monotonic() + grace
        for agent in agents:
            agent.quit()
        for agent in agents:
            agent.finish(deadline)
        # Best effort: an agent killed before its cleanup leaves its directory behind.
        leftovers = [a for a in agents if not a.bye and a.node.workdir]
        threads = []
        for agent in leftovers:
            thread = threading.Thread(target=_remove_dir, args=(agent.node, grace), daemon=True)
            thread.start()
            threads.append(thread)
        for thread in threads:
            thread.join(grace + 1)

    # -- chain -----------------------------------------------------------------

    def chain_pass(self, nodes, attempt):
        self.chain = []
        self.sender = None
        for node in nodes:
            self.start_agent(node, "chain", attempt)
        agents = [n.agent for n in nodes if n.agent is not None]
        try:
            ready_by = min(self.deadline, time.monotonic() + self.connect_timeout)
            while time.monotonic() < ready_by and any(n.state == "starting" and not n.resolved for n in nodes):
                self.handle(ready_by - time.monotonic())
            for node in nodes:
                if node.state == "starting" and not node.resolved:
                    self.fail(node, "start", "the agent was not ready within %ss%s" % (
                        self.connect_timeout, (": " + node.agent.stderr_tail()) if node.agent.stderr_tail() else ""))
                    node.agent.kill()
            self.chain = [n for n in nodes if not n.resolved]
            if not self.chain:
                return
            for pos, node in enumerate(self.chain):
                node.result["position"] = pos
                nxt = self.chain[pos + 1] if pos + 1 < len(self.chain) else None
                node.agent.send("NEXT %s %d" % (nxt.receiver.address, self.port) if nxt else "NEXT -")
            first = self.chain[0]
            self.sender = _Sender(self.path, self.size, first.receiver.address, self.port, self.server_address,
                                  self.connect_timeout, self.stall_timeout)
            self.sender.start()
            self.watch(self.chain)
        finally:
            if self.sender is not None:
                self.sender.abort()
            self.finish_agents(agents)
            if self.sender is not None:
                self.sender.join(5)

    def upstream_bytes(self, node):
        pos = self.chain.index(node)
        for prev in reversed(self.chain[:pos]):
            if prev.result["ok"] or not prev.resolved:
                return prev.bytes if not prev.result["ok"] else self.size
        return self.sender.sent if self.sender else 0

    def after_failure(self, node):
        if self.method != "chain" or node not in getattr(self, "chain", []):
            return
        pos = self.chain.index(node)
        for prev in reversed(self.chain[:pos]):
            if not (prev.agent and prev.agent.ended):
                prev.agent.send("CUT")
                break
        if node.agent is not None:
            node.agent.quit()
        for after in self.chain[pos + 1:]:
            if not after.resolved:
                self.fail(after, "transfer", "stream cut: upstream node %s failed after %d bytes"
                          % (node.name, node.bytes), retryable=True)
                after.agent.quit()

    def watch(self, nodes):
        """Events until every node is resolved, with stall detection and the overall timeout."""
        last_change = time.monotonic()
        snapshot = None
        sender_reported = False
        while any(not n.resolved for n in nodes):
            now = time.monotonic()
            if now >= self.deadline:
                for node in nodes:
                    self.fail(node, "transfer", "timed out after %ss (received %d of %d bytes)"
                              % (self.timeout, node.bytes, self.size))
                return
            self.handle(0.5)
            sender = getattr(self, "sender", None) if self.method == "chain" else None
            if sender is not None and sender.finished and sender.error and not sender_reported:
                sender_reported = True
                first = next((n for n in self.chain if not n.resolved), None)
                if first is not None and not sender.connected and first is self.chain[0]:
                    self.fail(first, "connect", "cannot connect to %s port %d: %s"
                              % (first.receiver.address, self.port, sender.error))
                    self.after_failure(first)
            current = (tuple(n.bytes for n in nodes), sender.sent if sender else 0)
            if current != snapshot:
                snapshot, last_change = current, time.monotonic()
                continue
            if time.monotonic() - last_change < self.stall_timeout:
                continue
            last_change = time.monotonic()
            for node in self.stalled(nodes):
                self.fail(node, "connect" if node.bytes == 0 and node.state != "receiving" else "transfer",
                          "no progress for %ss (received %d of %d bytes)" % (self.stall_timeout, node.bytes, self.size))
                if node.agent:
                    node.agent.quit()
                self.after_failure(node)

    def stalled(self, nodes):
        """The nodes to blame for a stall: silent agents, else the last one behind its upstream."""
        pending = [n for n in nodes if not n.resolved]
        silent = [n for n in pending if time.monotonic() - n.last_line > self.stall_timeout]
        if silent:
            return silent[:1]
        if self.method == "pull":
            return [n for n in pending if n.bytes < self.size]
        behind = [n for n in pending if n.bytes < self.upstream_bytes(n)]
        return behind[-1:]

    # -- pull ------------------------------------------------------------------

    def pull_pass(self, nodes, attempt):
        for node in nodes:
            self.start_agent(node, "pull", attempt)
        agents = [n.agent for n in nodes if n.agent is not None]
        try:
            self.watch(nodes)
        finally:
            self.finish_agents(agents)

    # -- the whole run -----------------------------------------------------------

    def run(self):
        todo = list(self.nodes)
        self.http_port = None
        try:
            if self.method == "pull":
                self.http, _thread = _http_server(self.path, self.size, [n.name for n in self.nodes],
                                                  self.server_address, self.port, self.stall_timeout)
                self.http_port = self.http.server_address[1]
            attempt = 0
            while todo and attempt <= self.retries and time.monotonic() < self.deadline:
                attempt += 1
                (self.chain_pass if self.method == "chain" else self.pull_pass)(todo, attempt)
                todo = [n for n in todo if n.retryable]
        except OSError as exc:
            for node in self.nodes:
                self.fail(node, "start", "broadcast failed: %s" % exc)
        finally:
            if self.http is not None:
                self.http.shutdown()
                self.http.server_close()
            for agent in self.agents:
                if agent.proc.poll() is None:
                    agent.kill()
        for node in self.nodes:
            if not node.resolved:
                self.fail(node, "transfer", "not completed")
            if node.result["method"] == "pull":
                node.result["position"] = None
        self.report(force=True)
        return dict((n.name, n.result) for n in self.nodes)


def _remove_dir(node, timeout):
    try:
        subprocess.run(list(node.receiver.argv("rm -rf -- %s" % shlex.quote(node.workdir))),
                       stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                       timeout=timeout, check=False, start_new_session=True)
    except (OSError, subprocess.SubprocessError, ValueError, TypeError):
        pass


def broadcast(path, receivers, method="chain", sha256=None, port=0, server_address=None,
              timeout=3600, stall_timeout=30, connect_timeout=30, progress=None, progress_interval=1.0,
              workdir="/tmp/gridops-broadcast", retries=1):
    """Send the file at `path` to every receiver; return {name: result}.

    Never raises for a node's failure (it is that node's result); raises
    ValueError for bad arguments, before starting anything.  `progress` is
    called from the calling thread.  `retries`: chain passes (or pull rounds)
    re-run for nodes that were alive but got a truncated stream (downstream of
    a node that died).
    """
    validate(path, receivers, method, sha256, port, server_address, timeout, stall_timeout,
             connect_timeout, progress, progress_interval, workdir, retries)
    size = os.path.getsize(path)
    expected = sha256.lower() if sha256 else file_sha256(path)
    if method == "chain" and port == 0:
        port = DEFAULT_PORT
    run = _Run(path, size, expected, list(receivers), method, port, server_address, timeout, stall_timeout,
               connect_timeout, progress, progress_interval, workdir, retries)
    return run.run()
