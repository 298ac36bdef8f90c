# Copyright: (c) 2026, gridops.metal developers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The filters resolve by FQCN through Ansible itself, not only through the collection loader."""
import json
import os
import pathlib
import subprocess
import sys

REPO = pathlib.Path(__file__).resolve().parents[2]


def _debug(template):
    """Run `ansible localhost -m debug -a msg=<template>`; return (rc, the host's result)."""
    env = dict(os.environ,
               PATH="%s%s%s" % (pathlib.Path(sys.executable).parent, os.pathsep, os.environ.get("PATH", "")),
               ANSIBLE_CONFIG=str(REPO / "ansible.cfg"),
               ANSIBLE_COLLECTIONS_PATH=str(REPO / "build" / "collections"),
               ANSIBLE_LOAD_CALLBACK_PLUGINS="1",
               ANSIBLE_STDOUT_CALLBACK="ansible.builtin.json")
    proc = subprocess.run(["ansible", "localhost", "-i", "localhost,", "-c", "local", "-m", "debug",
                           "-a", "msg=%s" % template],
                          cwd=REPO, env=env, capture_output=True, text=True, timeout=120, check=False)
    try:
        output = json.loads(proc.stdout)
    except ValueError:
        raise AssertionError("ansible printed no JSON:\n%s\n%s" % (proc.stdout, proc.stderr))
    return proc.returncode, output["plays"][0]["tasks"][0]["hosts"]["localhost"]


def test_expand_hostlist_by_fqcn():
    rc, result = _debug("{{ 'n[1-3]' | gridops.metal.expand_hostlist }}")
    assert rc == 0, result
    assert result["msg"] == ["n1", "n2", "n3"]


def test_other_filters_by_fqcn():
    rc, result = _debug("{{ {"
                        "'fold': ['n1', 'n2', 'n5'] | gridops.metal.fold_hostlist, "
                        "'pxe': 'AA-BB-CC-DD-EE-FF' | gridops.metal.pxe_mac_filename, "
                        "'hex': '192.168.0.1' | gridops.metal.ipv4_hex, "
                        "'mac': 'aabb.ccdd.eeff' | gridops.metal.normalize_mac} }}")
    assert rc == 0, result
    assert result["msg"] == {"fold": "n[1-2,5]", "pxe": "01-aa-bb-cc-dd-ee-ff", "hex": "C0A80001",
                             "mac": "aa:bb:cc:dd:ee:ff"}


def test_filter_error_names_the_value():
    rc, result = _debug("{{ 'n[3-1' | gridops.metal.expand_hostlist }}")
    assert rc != 0
    assert result["failed"]
    assert "expand_hostlist: invalid node set 'n[3-1': missing bracket" in result["msg"]
