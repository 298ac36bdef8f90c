"""Fixtures shared by every test tier (unit, integration, e2e).

* the collection loader, so ``ansible_collections.gridops.metal`` imports;
* this process as child subreaper, reaping orphans at the end of each test;
* namespaces, bridges and taps with per-run unique names, removed even when
  a test fails.
"""
import os
import pathlib

import pytest

from gridops_test import net, procs

pytest_plugins = ["gridops_test.fixtures_artifacts", "gridops_test.fixtures_schedulers"]

REPO = pathlib.Path(__file__).resolve().parent.parent
COLLECTIONS = REPO / "build" / "collections"


def _install_collection_loader():
    from ansible.utils.collection_loader._collection_finder import _AnsibleCollectionFinder

    if not (COLLECTIONS / "ansible_collections" / "gridops" / "metal").exists():
        raise pytest.UsageError("gridops.metal is not installed in %s: run `make install`" % COLLECTIONS)
    _AnsibleCollectionFinder(paths=[str(COLLECTIONS)])._install()


_install_collection_loader()


def pytest_configure(config):
    if os.geteuid() == 0:
        procs.become_subreaper()


def pytest_collection_modifyitems(config, items):
    if os.geteuid() != 0:
        skip = pytest.mark.skip(reason="needs root")
        for item in items:
            if "root" in item.keywords:
                item.add_marker(skip)


@pytest.fixture(autouse=True)
def _reap_orphans():
    yield
    procs.reap_orphans()


@pytest.fixture
def netns():
    """A fresh network namespace, deleted after the test."""
    ns = net.Netns()
    try:
        yield ns
    finally:
        ns.close()


@pytest.fixture
def bridge(netns):
    """A bridge with IPv4 10.213.0.1/24 and IPv6 fd42:213::1/64 inside `netns`."""
    br = net.Bridge(netns)
    try:
        yield br
    finally:
        br.close()


@pytest.fixture
def tap_factory(netns):
    """Create taps on demand: tap_factory(bridge) -> Tap; all removed after."""
    taps = []

    def make(bridge=None):
        tap = net.Tap(netns, bridge)
        taps.append(tap)
        return tap

    try:
        yield make
    finally:
        for tap in taps:
            tap.close()


@pytest.fixture
def daemon_factory(tmp_path):
    """Start foreground daemons as children; all stopped and reaped after."""
    daemons = []

    def start(argv, netns=None, name="daemon", **kwargs):
        d = procs.Daemon(argv, tmp_path / ("%s-%d.log" % (name, len(daemons))), netns=netns, **kwargs)
        daemons.append(d)
        return d.start()

    try:
        yield start
    finally:
        for d in reversed(daemons):
            d.stop()
