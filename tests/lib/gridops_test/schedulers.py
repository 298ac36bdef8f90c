"""Private, real OAR 2.5 and Slurm 22.05 instances for tests.

Each instance is made for one test session and removed with it:

* its own network namespace, so the daemons' fixed ports (PostgreSQL 5432,
  Almighty 6666, slurmctld 6817, slurmd 6818) never meet another run's;
* its own files under a private directory: data, spool, logs, configuration;
* its daemons in the foreground as children of the test process (PID 1 on
  these machines never reaps), stopped in ``close()``.

OAR's setuid wrappers (``oarsub``, ``oarstat``, ``Almighty``...) always read
``/etc/oar/oar.conf``: an OAR instance therefore also runs in a private
mount namespace where ``/etc/oar`` and ``/var/lib/oar`` are bind mounts of
its own directories.  :meth:`OarCluster.argv` enters both namespaces.

Slurm reads ``SLURM_CONF``; its slurmctld runs in a namespace of its own
and every slurmd in another one, all on one bridge, as on a real cluster.

Jobs are submitted as an ordinary user (:class:`TestUser`): OAR refuses root.
"""
import contextlib
import json
import os
import pathlib
import pwd
import re
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time

from . import net, procs

PG_BIN = pathlib.Path("/usr/lib/postgresql/15/bin")


def _chown(path, user, group=None):
    shutil.chown(str(path), user, group or user)


def private_dir(kind):
    """A fresh directory that daemons running as other users (postgres, oar, slurm) can traverse.

    (pytest's tmp_path is mode 0700 and owned by root.)"""
    path = pathlib.Path(tempfile.mkdtemp(prefix="gridops-%s-%s-" % (kind, net.run_suffix())))
    os.chmod(path, 0o755)
    return path


def _kill_namespace_leftovers(netns):
    """Whatever still runs in netns (daemons' detached children) is killed and reaped."""
    for _attempt in range(3):
        pids = netns.pids()
        if not pids:
            break
        for pid in pids:
            with contextlib.suppress(OSError):
                os.kill(pid, signal.SIGKILL)
        time.sleep(0.2)
        procs.reap_orphans()


class TestUser:
    """An ordinary Unix user for submitting jobs, removed in close()."""

    def __init__(self, name=None):
        self.name = name or "gtu%s%s" % (net.run_suffix(), secrets.token_hex(1))
        self.home = private_dir("home") / self.name
        procs.run(["useradd", "--create-home", "--home-dir", str(self.home), "--shell", "/bin/sh",
                   "--comment", "gridops.metal test user", self.name])
        self.uid = pwd.getpwnam(self.name).pw_uid

    def argv(self, argv, env=None):
        """argv run as this user in its home (PWD set: oarsub reads it), with a clean environment plus env."""
        extra = ["%s=%s" % kv for kv in sorted((env or {}).items())]
        return (["setpriv", "--reuid", self.name, "--regid", self.name, "--init-groups", "--reset-env", "--",
                 "env", "--chdir", str(self.home), "PWD=%s" % self.home, "HOME=%s" % self.home,
                 "USER=%s" % self.name, "LOGNAME=%s" % self.name] + extra + list(argv))

    def close(self):
        procs.run(["pkill", "-KILL", "-U", self.name], check=False)
        procs.reap_orphans()
        procs.run(["userdel", "--remove", self.name], check=False)
        shutil.rmtree(self.home.parent, ignore_errors=True)


# --------------------------------------------------------------------------- OAR


class OarCluster:
    """OAR 2.5.9 server + PostgreSQL + the REST API, with noop/deploy-capable resources.

    nodes: node names; each becomes one resource with ``deploy=YES``.
    """

    def __init__(self, nodes, log=print):
        self.root = private_dir("oar")
        self.nodes = list(nodes)
        self.log = log
        self.netns = None
        self.holder = None
        self.daemons = []
        self.etc = self.root / "etc"
        self.conf = self.etc / "oar.conf"
        self.api_port = 6668

    # -- running things inside the instance's namespaces

    def argv(self, argv):
        """argv run inside this instance's network and mount namespaces."""
        return ["nsenter", "--target", str(self.holder.pid), "--net", "--mount", "--"] + list(argv)

    def run(self, argv, check=True, timeout=120, **kwargs):
        return procs.run(self.argv(argv), check=check, timeout=timeout, **kwargs)

    def _daemon(self, name, argv, env=None):
        d = procs.Daemon(self.argv(argv), self.root / ("%s.log" % name), env=env)
        self.daemons.append(d)
        return d.start()

    # -- lifecycle

    def start(self):
        t0 = time.monotonic()
        try:
            self._make_files()
            self.netns = net.Netns()
            self._start_holder()
            self._start_postgres()
            self._create_database()
            self._start_almighty()
            self._add_resources()
            self._start_api()
        except BaseException as exc:
            diagnostics = self.diagnostics()
            self.close()
            raise RuntimeError("OAR did not start: %s\n%s" % (exc, diagnostics)) from exc
        self.log("OAR up in %.1f s (netns %s)" % (time.monotonic() - t0, self.netns.name))
        return self

    def _make_files(self):
        # cp -a: ownership matters (oar.conf is readable by group oar only).
        procs.run(["cp", "-a", "/etc/oar", str(self.etc)])
        procs.run(["cp", "-a", "/var/lib/oar", str(self.root / "home")])
        for sub in ("log", "run"):
            (self.root / sub).mkdir()
            _chown(self.root / sub, "oar")
        (self.root / "pg").mkdir()
        _chown(self.root / "pg", "postgres")
        self.db_password = secrets.token_hex(8)
        self.set_conf(
            DB_HOSTNAME="127.0.0.1", DB_PORT="5432",
            DB_BASE_PASSWD=self.db_password, DB_BASE_PASSWD_RO=self.db_password + "ro",
            LOG_FILE=str(self.root / "log" / "oar.log"), LOG_LEVEL="3",
            OAR_RUNTIME_DIRECTORY=str(self.root / "run"),
            # Jobs run on no real node here: skip the node checks.
            FINAUD_FREQUENCY="0", PINGCHECKER_SENTINELLE_SCRIPT_COMMAND="/bin/true",
            SCHEDULER_JOB_SECURITY_TIME="1", SCHEDULER_MIN_TIME_BETWEEN_2_CALLS="1",
            JOB_RESOURCE_MANAGER_FILE="/bin/true",
        )

    def set_conf(self, **values):
        """Set KEY="value" lines in this instance's oar.conf (read by every OAR process at start)."""
        text = self.conf.read_text()
        for key, value in values.items():
            line = '%s="%s"' % (key, value)
            text, count = re.subn(r"(?m)^#?\s*%s=.*$" % re.escape(key), line, text, count=1)
            if not count:
                text += "\n" + line + "\n"
        self.conf.write_text(text)

    def _start_holder(self):
        script = ("set -e; mount --bind {etc} /etc/oar; mount --bind {home} /var/lib/oar; "
                  "echo ready; exec sleep infinity").format(etc=self.etc, home=self.root / "home")
        self.holder = procs.Daemon(self.netns.argv(["unshare", "--mount", "--propagation", "private", "--",
                                                    "sh", "-c", script]), self.root / "holder.log")
        self.holder.start()
        procs.wait_for(lambda: "ready" in self.holder.log() or not self.holder.alive(), 10, what="mount namespace")
        if not self.holder.alive():
            raise RuntimeError("OAR mount namespace: %s" % self.holder.log())

    def _start_postgres(self):
        pg = self.root / "pg"
        procs.run(["runuser", "-u", "postgres", "--", str(PG_BIN / "initdb"), "-D", str(pg / "data"),
                   "-U", "postgres", "-A", "trust", "--no-sync", "-E", "UTF8"])
        self._daemon("postgres", ["runuser", "-u", "postgres", "--", str(PG_BIN / "postgres"),
                                  "-D", str(pg / "data"), "-c", "listen_addresses=127.0.0.1",
                                  "-c", "unix_socket_directories=%s" % pg, "-c", "fsync=off",
                                  "-c", "full_page_writes=off", "-c", "synchronous_commit=off"])

        def ready():
            return self.run([str(PG_BIN / "pg_isready"), "-h", "127.0.0.1", "-U", "postgres", "-q"], check=False).returncode == 0

        procs.wait_for(ready, 30, what="PostgreSQL")

    def _create_database(self):
        self.run(["oar-database", "--create", "--conf", "/etc/oar/oar.conf", "--db-admin-user", "postgres",
                  "--db-admin-pass", "unused", "-y"], input="", timeout=180)

    def _start_almighty(self):
        # The environment of an init script, not ours: the hooks it runs must not depend on ours.
        self._daemon("almighty", ["/usr/sbin/Almighty"], env={"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "LANG": "C.UTF-8"})

        def listening():
            out = self.run(["ss", "-Htln", "sport = :6666"]).stdout
            return "6666" in out

        procs.wait_for(listening, 30, what="Almighty on port 6666")

    def _add_resources(self):
        for node in self.nodes:
            self.run(["oarnodesetting", "-a", "-h", node, "-p", "deploy=YES"])

        def alive():
            out = self.run(["oarnodes", "-J"]).stdout
            states = [r.get("state") for r in json.loads(out).values()] if out.strip() else []
            return len(states) == len(self.nodes) and all(s == "Alive" for s in states)

        procs.wait_for(alive, 30, what="OAR resources Alive")

    def _start_api(self):
        self._daemon("oarapi", ["python3", "-m", "gridops_test.cgi_server", "--port", str(self.api_port),
                                "--script", "/usr/lib/cgi-bin/oarapi/oarapi.cgi", "--prefix", "/oarapi"],
                     env=dict(os.environ, PYTHONPATH=str(pathlib.Path(__file__).resolve().parent.parent)))

        def answers():
            res = self.run(["python3", "-c", "import urllib.request,sys;"
                            "urllib.request.urlopen('http://127.0.0.1:%d/oarapi/version.json',timeout=5)"
                            % self.api_port], check=False)
            return res.returncode == 0

        procs.wait_for(answers, 30, what="OAR REST API")

    @property
    def api_url(self):
        return "http://127.0.0.1:%d/oarapi" % self.api_port

    # -- jobs

    def oarsub(self, user, *args):
        """Submit a job as user; return its id."""
        res = self.run(user.argv(["oarsub"] + list(args)), check=False)
        match = re.search(r"OAR_JOB_ID=(\d+)", res.stdout)
        if not match:
            raise RuntimeError("oarsub %s failed (rc %d): %s %s" % (args, res.returncode, res.stdout, res.stderr))
        return int(match.group(1))

    def job(self, job_id):
        """The job's record from `oarstat -f -J -j ID`, as root."""
        out = self.run(["oarstat", "-f", "-J", "-j", str(job_id)]).stdout
        return json.loads(out)[str(job_id)]

    def wait_state(self, job_id, states, timeout=60):
        states = (states,) if isinstance(states, str) else tuple(states)

        def reached():
            state = self.job(job_id)["state"]
            return state if state in states else None

        return procs.wait_for(reached, timeout, interval=0.5, what="OAR job %s in %s" % (job_id, states))

    def oardel(self, user, job_id):
        self.run(user.argv(["oardel", str(job_id)]))

    def diagnostics(self, tail=3000):
        """The tails of the daemons' logs and of oar.log, for failure messages."""
        parts = ["--- %s\n%s" % (" ".join(d.argv[-3:]), d.log()[-tail:]) for d in self.daemons]
        with contextlib.suppress(OSError):
            parts.append("--- oar.log\n" + (self.root / "log" / "oar.log").read_text(errors="replace")[-tail:])
        return "\n".join(parts)

    def close(self):
        for d in reversed(self.daemons):
            d.stop()
        self.daemons = []
        if self.holder:
            self.holder.stop()
        if self.netns:
            _kill_namespace_leftovers(self.netns)
            self.netns.close()
        procs.reap_orphans()
        shutil.rmtree(self.root, ignore_errors=True)


# --------------------------------------------------------------------------- Slurm


class SlurmCluster:
    """munged + slurmctld + one slurmd per node, each node in its own network namespace.

    The controller's namespace holds a bridge (10.217.0.1/24); every node's
    namespace is joined to it by a veth pair and gets 10.217.0.(11+i).
    """

    SUBNET = "10.217.0"

    def __init__(self, nodes, log=print, slurm_user="slurm", conf=None):
        self.root = private_dir("slurm")
        self.extra_conf = dict(conf or {})
        self.nodes = list(nodes)
        self.log = log
        self.slurm_user = slurm_user
        self.conf = self.root / "slurm.conf"
        self.netns = None
        self.node_netns = {}
        self.daemons = []
        self.cluster_name = "gt%s" % net.run_suffix()
        self.env = {"SLURM_CONF": str(self.conf)}

    def address(self, node):
        return "%s.%d" % (self.SUBNET, 11 + self.nodes.index(node))

    def start(self):
        t0 = time.monotonic()
        try:
            self._make_network()
            self._write_files()
            self._start_munge()
            self._daemon("slurmctld", self._slurmctld_argv())
            for node in self.nodes:
                self._daemon("slurmd-" + node, self.node_netns[node].argv(["slurmd", "-D", "-N", node,
                                                                          "-f", str(self.conf)]))
            procs.wait_for(self._nodes_idle, 30, interval=0.3, what="slurm nodes idle")
        except BaseException as exc:
            diagnostics = self.diagnostics()
            self.close()
            raise RuntimeError("Slurm did not start: %s\n%s" % (exc, diagnostics)) from exc
        self.log("Slurm up in %.1f s (netns %s)" % (time.monotonic() - t0, self.netns.name))
        return self

    def _make_network(self):
        self.netns = net.Netns()
        self.bridge = net.Bridge(self.netns, ipv4="%s.1/24" % self.SUBNET, ipv6=None)
        for node in self.nodes:
            ns = net.Netns()
            self.node_netns[node] = ns
            outside, inside = net.unique_name("gvo"), net.unique_name("gvi")
            net.ip("link", "add", outside, "type", "veth", "peer", "name", inside, netns=self.netns.name)
            net.ip("link", "set", inside, "netns", ns.name, netns=self.netns.name)
            net.ip("link", "set", outside, "master", self.bridge.name, "up", netns=self.netns.name)
            net.ip("addr", "add", self.address(node) + "/24", "dev", inside, netns=ns.name)
            net.ip("link", "set", inside, "up", netns=ns.name)

    def _write_files(self):
        for sub in ["ctld", "munge", "log"] + ["slurmd/" + node for node in self.nodes]:
            (self.root / sub).mkdir(parents=True)
        _chown(self.root / "ctld", self.slurm_user)
        _chown(self.root / "log", self.slurm_user)
        host = os.uname().nodename.split(".")[0]
        lines = [
            "ClusterName=%s" % self.cluster_name,
            "SlurmctldHost=%s(%s.1)" % (host, self.SUBNET),
            "SlurmUser=%s" % self.slurm_user,
            "AuthType=auth/munge",
            "CredType=cred/munge",
            "AuthInfo=socket=%s" % (self.root / "munge" / "munge.socket"),
            "StateSaveLocation=%s" % (self.root / "ctld"),
            "SlurmdSpoolDir=%s" % (self.root / "slurmd" / "%n"),
            "SlurmctldPidFile=%s" % (self.root / "slurmctld.pid"),
            "SlurmdPidFile=%s" % (self.root / "slurmd-%n.pid"),
            "SlurmctldLogFile=%s" % (self.root / "log" / "slurmctld.log"),
            "SlurmdLogFile=%s" % (self.root / "log" / "slurmd-%n.log"),
            "ProctrackType=proctrack/linuxproc",
            "TaskPlugin=task/none",
            "JobAcctGatherType=jobacct_gather/none",
            "AccountingStorageType=accounting_storage/none",
            "SchedulerType=sched/builtin",
            "SelectType=select/linear",
            "MpiDefault=none",
            "ReturnToService=2",
            "SlurmctldTimeout=30",
            "SlurmdTimeout=30",
            "MinJobAge=2",
            "MailProg=/bin/true",
            "KillWait=2",
            "NodeName=DEFAULT CPUs=1 RealMemory=100 State=UNKNOWN",
        ]
        lines += ["NodeName=%s NodeAddr=%s" % (node, self.address(node)) for node in self.nodes]
        lines.append("PartitionName=debug Nodes=ALL Default=YES MaxTime=INFINITE State=UP")
        self.conf.write_text("\n".join(lines) + "\n")
        self.set_conf(**self.extra_conf)

    def set_conf(self, **values):
        """Set Key=value lines in slurm.conf (then `scontrol reconfigure`)."""
        text = self.conf.read_text()
        for key, value in values.items():
            text, count = re.subn(r"(?m)^%s=.*$" % re.escape(key), "%s=%s" % (key, value), text, count=1)
            if not count:
                text = "%s=%s\n" % (key, value) + text
        self.conf.write_text(text)

    def _start_munge(self):
        munge = self.root / "munge"
        with open(munge / "munge.key", "wb") as fh:
            fh.write(os.urandom(128))
        os.chmod(munge / "munge.key", 0o600)
        self._daemon("munged", ["munged", "--foreground", "--force",
                                "--socket=%s" % (munge / "munge.socket"),
                                "--key-file=%s" % (munge / "munge.key"),
                                "--pid-file=%s" % (munge / "munged.pid"),
                                "--log-file=%s" % (munge / "munged.log"),
                                "--seed-file=%s" % (munge / "munged.seed")])
        procs.wait_for((munge / "munge.socket").exists, 10, what="munged socket")

    def _daemon(self, name, argv):
        d = procs.Daemon(argv, self.root / ("%s.out" % name),
                         env=dict({"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "LANG": "C.UTF-8"}, **self.env))
        self.daemons.append(d)
        return d.start()

    def _slurmctld_argv(self):
        return self.netns.argv(["slurmctld", "-D", "-f", str(self.conf)])

    def restart_controller(self):
        """Restart slurmctld (what a service restart does): jobs and nodes survive in its state."""
        ctld = next(d for d in self.daemons if d.argv == self._slurmctld_argv())
        ctld.stop()
        ctld.start()
        procs.wait_for(lambda: self.command(["squeue", "-h"], check=False).returncode == 0, 30,
                       interval=0.3, what="slurmctld after restart")

    def argv(self, argv):
        """argv run in the controller's network namespace, where the cluster is reachable."""
        return self.netns.argv(argv)

    def command(self, argv, user=None, check=True, timeout=60):
        """Run a Slurm client command (as user if given) against this cluster."""
        argv = user.argv(argv, env=self.env) if user else list(argv)
        return procs.run(self.argv(argv), check=check, timeout=timeout, env=dict(os.environ, **self.env))

    def _nodes_idle(self):
        res = self.command(["sinfo", "-h", "-N", "-o", "%N %t"], check=False)
        states = dict(line.split() for line in res.stdout.splitlines() if line.strip())
        return len(states) == len(self.nodes) and all(s == "idle" for s in states.values())

    # -- jobs

    def sbatch(self, user, *args):
        res = self.command(["sbatch", "--parsable"] + list(args), user=user, check=False)
        if res.returncode != 0:
            raise RuntimeError("sbatch %s failed: %s %s" % (args, res.stdout, res.stderr))
        return int(res.stdout.strip().split(";")[0])

    def job_state(self, job_id):
        res = self.command(["squeue", "-h", "-j", str(job_id), "-o", "%T"], check=False)
        return res.stdout.strip() or "GONE"

    def wait_state(self, job_id, states, timeout=60):
        states = (states,) if isinstance(states, str) else tuple(states)

        def reached():
            state = self.job_state(job_id)
            return state if state in states else None

        return procs.wait_for(reached, timeout, interval=0.3, what="Slurm job %s in %s" % (job_id, states))

    def scancel(self, user, job_id):
        self.command(["scancel", str(job_id)], user=user)

    def diagnostics(self, tail=3000):
        parts = ["--- %s\n%s" % (" ".join(d.argv[-4:]), d.log()[-tail:]) for d in self.daemons]
        for log in sorted((self.root / "log").glob("*.log")) if (self.root / "log").exists() else []:
            parts.append("--- %s\n%s" % (log.name, log.read_text(errors="replace")[-tail:]))
        return "\n".join(parts)

    def close(self):
        for d in reversed(self.daemons):
            d.stop()
        self.daemons = []
        for ns in list(self.node_netns.values()) + ([self.netns] if self.netns else []):
            _kill_namespace_leftovers(ns)
            ns.close()
        self.node_netns = {}
        procs.reap_orphans()
        shutil.rmtree(self.root, ignore_errors=True)


# --------------------------------------------------------------------------- running Ansible against them


def ansible_inventory(path, argv_prefix=(), args=(), env=None):
    """`ansible-inventory -i path --list` (inside argv_prefix: a scheduler's namespaces).

    Returns (returncode, inventory as plain values or None, stderr)."""
    from . import ansible_run

    argv = list(argv_prefix) + ["ansible-inventory", "-i", str(path), "--list"] + list(args)
    proc = subprocess.run(argv, cwd=str(ansible_run.REPO), env=ansible_run.env(**(env or {})),
                          capture_output=True, text=True, timeout=120, check=False)
    inventory = ansible_run._untag(json.loads(proc.stdout)) if proc.returncode == 0 else None
    return proc.returncode, inventory, proc.stderr


class ReservationHooks:
    """The reservation_hooks role applied to a private scheduler; its files in a private directory.

    role_vars complete the role's variables (the scheduler's configuration file, runner_wait...);
    apply() runs the role (again) with overrides, as ansible_run.playbook does."""

    def __init__(self, scheduler, description, start_playbook, **role_vars):
        import yaml

        from . import ansible_run

        self.root = private_dir("hooks")
        (self.root / "description.yml").write_text(yaml.safe_dump(description))
        (self.root / "start.yml").write_text(start_playbook)
        self.playbook = self.root / "hooks.yml"
        self.playbook.write_text("- hosts: localhost\n  gather_facts: false\n"
                                 "  roles: [gridops.metal.reservation_hooks]\n")
        self.description = self.root / "description.yml"
        self.spool = self.root / "state" / "spool"
        self.runs = self.root / "state" / "runs"
        self.log = self.root / "state" / "hooks.log"
        self.registry = self.root / "registry" / "registry.sqlite"
        runner = pathlib.Path(sys.executable).parent / "ansible-runner"
        self.config = dict({
            "reservation_hooks_scheduler": scheduler,
            "reservation_hooks_dir": str(self.root / "lib"),
            "reservation_hooks_state_dir": str(self.root / "state"),
            "reservation_hooks_registry": str(self.registry),
            "reservation_hooks_start_playbook": str(self.root / "start.yml"),
            "reservation_hooks_cluster_description": str(self.description),
            "reservation_hooks_ansible_runner": str(runner),
            "reservation_hooks_runner_envvars": {
                "ANSIBLE_COLLECTIONS_PATH": str(ansible_run.REPO / "build" / "collections")},
        }, **role_vars)

    def apply(self, check=True, **overrides):
        from . import ansible_run

        extra = dict(self.config, ansible_python_interpreter=sys.executable, **overrides)
        return ansible_run.playbook(str(self.playbook), "localhost,", extra, args=["-c", "local"], check=check)

    def log_text(self):
        return self.log.read_text() if self.log.exists() else "(no hooks.log)"

    def close(self):
        shutil.rmtree(self.root, ignore_errors=True)
