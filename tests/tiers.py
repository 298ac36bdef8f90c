#!/usr/bin/env python
"""Run the test tiers of gridops.metal and print what ran, per tier.

    tests/tiers.py [TIER ...]      (default: every tier, quick ones first)

Each tier runs even when an earlier one failed, so one run reports every
problem; the exit status is non-zero if any tier failed.  pytest tiers write
JUnit XML under build/reports/ from which the test counts are read.
"""
import os
import pathlib
import re
import shutil
import subprocess
import sys
import time
import xml.etree.ElementTree as ET

REPO = pathlib.Path(__file__).resolve().parent.parent
REPORTS = REPO / "build" / "reports"
SANITY_ROOT = REPO / "build" / "sanity"
PYTHON_VERSION = "%d.%d" % sys.version_info[:2]


def pytest_cmd(tier, path):
    return [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-q", "--durations=10",
            "--junitxml=%s" % (REPORTS / (tier + ".xml")), path]


def tier_lint():
    return [
        ["yamllint", "-s", "."],
        # A private HOME: ansible-lint puts ~/.ansible/collections first, where a stale
        # installed copy of this collection (molecule's prerun makes one) would win.
        ["ansible-lint", "--profile", "production", "--offline",
         {"env": dict(os.environ, HOME=str(_private_home("lint")))}],
        ["antsibull-changelog", "lint"],
        ["ansible-galaxy", "collection", "build", "--force", "--output-path", "build/"],
    ]


def _private_home(name):
    home = REPO / "build" / ("%s-home" % name)
    home.mkdir(parents=True, exist_ok=True)
    return home


def _sanity_home():
    """A HOME for ansible-test whose cache holds our get-pip stand-in."""
    import ansible_test

    src = pathlib.Path(ansible_test.__file__).parent / "_internal" / "python_requirements.py"
    pip_version = re.search(r"pip='([0-9.]+)'", src.read_text()).group(1)
    home = REPO / "build" / "sanity-home"
    cache = home / ".ansible" / "test" / "cache"
    cache.mkdir(parents=True, exist_ok=True)
    shutil.copy2(REPO / "tests" / "sanity_get_pip.py", cache / ("get_pip_%s.py" % pip_version.replace(".", "_")))
    return home


def tier_sanity():
    """ansible-test wants the tree at ansible_collections/<ns>/<name>: copy it."""
    # Per run, so two runs on one machine do not overwrite each other's copy.
    root = SANITY_ROOT.parent / ("sanity-" + os.environ.get("GRIDOPS_TEST_SUFFIX", str(os.getpid())))
    if root.exists():
        shutil.rmtree(root)
    dest = root / "ansible_collections" / "gridops" / "metal"
    dest.mkdir(parents=True)
    files = subprocess.run(["git", "ls-files", "-co", "--exclude-standard", "-z"], cwd=REPO,
                           check=True, capture_output=True).stdout.decode().split("\0")
    for rel in filter(None, files):
        src = REPO / rel
        if src.is_file():
            (dest / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dest / rel)
    # The copy sits inside this checkout's ignored build/: give it a repository of
    # its own so ansible-test lists the copy's files, not the (ignoring) parent's.
    subprocess.run(["git", "init", "-q"], cwd=dest, check=True)
    subprocess.run(["git", "add", "-A"], cwd=dest, check=True)
    env = dict(os.environ, HOME=str(_sanity_home()))
    return [["ansible-test", "sanity", "--venv", "--requirements", "--python", PYTHON_VERSION,
             "--color", "no", {"cwd": dest, "env": env}]]


def tier_unit():
    return [pytest_cmd("unit", "tests/unit")]


def tier_integration():
    return [pytest_cmd("integration", "tests/integration")]


def tier_molecule():
    scenarios = sorted(p.parent.name for p in (REPO / "molecule").glob("*/molecule.yml"))
    return [["molecule", "test", "-s", name] for name in scenarios]


def tier_e2e():
    return [pytest_cmd("e2e", "tests/e2e")]


TIERS = {
    "lint": tier_lint,
    "sanity": tier_sanity,
    "unit": tier_unit,
    "integration": tier_integration,
    "molecule": tier_molecule,
    "e2e": tier_e2e,
}


def junit_counts(tier):
    path = REPORTS / (tier + ".xml")
    if not path.exists():
        return None
    root = ET.parse(path).getroot()
    suites = [root] if root.tag == "testsuite" else list(root)
    total = {"tests": 0, "failures": 0, "errors": 0, "skipped": 0}
    for suite in suites:
        for key in total:
            total[key] += int(suite.get(key, 0))
    failed = total["failures"] + total["errors"]
    return {"passed": total["tests"] - failed - total["skipped"], "failed": failed, "skipped": total["skipped"]}


def leftovers(suffix):
    """What this run's tests left on the machine: everything they make carries the run suffix."""
    found = []
    netns = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True, check=False).stdout
    found += ["netns %s" % line.split()[0] for line in netns.splitlines() if suffix in line]
    for entry in os.listdir("/proc"):
        if not entry.isdigit() or int(entry) == os.getpid():
            continue
        try:
            with open("/proc/%s/cmdline" % entry, "rb") as fh:
                cmd = fh.read().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if suffix in cmd:
            found.append("process %s %s" % (entry, cmd[:100]))
    with open("/proc/mounts") as fh:
        found += ["mount %s" % line.split()[1] for line in fh if suffix in line]
    if shutil.which("podman"):
        names = subprocess.run(["podman", "ps", "-a", "--format", "{{.Names}}"], capture_output=True, text=True,
                               check=False).stdout.split()
        found += ["container %s" % n for n in names if suffix in n]
    loops = subprocess.run(["losetup", "-a"], capture_output=True, text=True, check=False).stdout
    found += ["loop %s" % line.split(":")[0] for line in loops.splitlines() if suffix in line]
    return found


def become_subreaper():
    """Orphans of the tiers (daemons that detach: conmon, the lab supervisor) are
    re-parented to this process instead of PID 1, which never reaps them here."""
    import ctypes

    if os.geteuid() == 0:
        ctypes.CDLL(None, use_errno=True).prctl(36, 1, 0, 0, 0)  # PR_SET_CHILD_SUBREAPER


def reap():
    while True:
        try:
            pid, _status = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            return


def run_tier(name):
    report = REPORTS / (name + ".xml")
    if report.exists():
        report.unlink()
    start = time.monotonic()
    status = "ok"
    commands = TIERS[name]()
    if not commands:
        status = "empty"
    for cmd in commands:
        opts = cmd[-1] if isinstance(cmd[-1], dict) else {}
        argv = [c for c in cmd if not isinstance(c, dict)]
        print("==> [%s] %s" % (name, " ".join(argv)), flush=True)
        try:
            rc = subprocess.call(argv, cwd=opts.get("cwd", REPO), env=opts.get("env"))
        except OSError as exc:
            print("[%s] cannot run %s: %s (run through `make`, which sets PATH)" % (name, argv[0], exc))
            rc = 127
        if rc == 5 and "pytest" in argv:
            status = "empty" if status == "ok" else status
        elif rc != 0:
            status = "FAILED"
    return status, time.monotonic() - start, junit_counts(name)


def main(argv):
    names = argv or list(TIERS)
    unknown = [n for n in names if n not in TIERS]
    if unknown:
        sys.exit("unknown tier(s): %s; known: %s" % (", ".join(unknown), ", ".join(TIERS)))
    REPORTS.mkdir(parents=True, exist_ok=True)
    # One suffix for every name the tests make (gridops_test.net.run_suffix), so
    # what they leave behind can be found afterwards.
    suffix = os.environ.setdefault("GRIDOPS_TEST_SUFFIX", os.urandom(3).hex())
    become_subreaper()
    results = []
    for name in names:
        results.append((name,) + run_tier(name))
        reap()
    left = leftovers(suffix)
    print("\n==> gridops.metal test summary")
    print("%-12s %-8s %9s  %s" % ("tier", "status", "seconds", "tests"))
    totals = {"passed": 0, "failed": 0, "skipped": 0}
    for name, status, seconds, counts in results:
        tests = ""
        if counts:
            tests = "%(passed)d passed, %(failed)d failed, %(skipped)d skipped" % counts
            for key in totals:
                totals[key] += counts[key]
        print("%-12s %-8s %9.1f  %s" % (name, status, seconds, tests))
    print("left behind (run suffix %s): %s" % (suffix, "; ".join(left) if left else "nothing"))
    print("%(passed)d passed, %(failed)d failed, %(skipped)d skipped" % totals)
    return 1 if left or any(r[1] == "FAILED" for r in results) else 0


if __name__ == "__main__":
    os.chdir(REPO)
    sys.exit(main(sys.argv[1:]))
