#!/usr/bin/env python
"""Time the netboot engine on N nodes: first write, unchanged run, switching every node, check mode.

    tests/bench/pxe_render.py [--nodes 1000] [--dir DIR]

Prints one FIGURES line (seconds); needs no root.  The engine is what
gridops.metal.netboot runs on the deploy server; the module's own overhead
through Ansible is measured by tests/integration/test_pxe_server.py.
"""
import argparse
import json
import os
import pathlib
import shutil
import sys
import tempfile
import time

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1] / "lib"))


def _engine():
    from gridops_test import artifacts
    artifacts.engine()      # the collection loader
    from ansible_collections.gridops.metal.plugins.module_utils import _pxe
    return _pxe


def nodes(count):
    return [{"name": "node-%04d" % i, "mac": "52:54:00:%02x:%02x:%02x" % (i >> 16, (i >> 8) & 255, i & 255),
             "ip": "10.%d.%d.%d" % (100 + i // 62500, (i // 250) % 250, i % 250 + 1)} for i in range(count)]


def run(count=1000, workdir=None):
    """{phase: seconds} for `count` nodes in a scratch boot root under workdir."""
    _pxe = _engine()
    scratch = tempfile.mkdtemp(prefix="gridops-pxe-bench-", dir=workdir)
    try:
        root, hosts = os.path.join(scratch, "root"), os.path.join(scratch, "hosts")
        os.makedirs(os.path.join(root, "deploy"))
        for name in ("vmlinuz", "initrd.img"):
            open(os.path.join(root, "deploy", name), "w").close()
        config = _pxe.Config(root, "http://10.0.0.1", dhcp_hostsdir=hosts)
        base = nodes(count)
        figures = {"nodes": count}
        start = time.perf_counter()
        checked = _pxe.validate_server({"interface": "eth0", "address": "10.100.0.0", "subnet": "10.96.0.0/11",
                                        "nodes": base})
        figures["validate_server"] = round(time.perf_counter() - start, 3)
        assert len(checked["nodes"]) == count
        for label, profile, check in (("first_write", "local", False), ("unchanged", "local", False),
                                      ("switch_all_to_deploy", "deploy", False), ("check_mode_switch", "local", True)):
            start = time.perf_counter()
            res = _pxe.netboot(config, [dict(n, profile=profile) for n in base], check_mode=check)
            figures[label] = round(time.perf_counter() - start, 3)
            assert len(res["changed_nodes"]) == (0 if label == "unchanged" else count), label
        start = time.perf_counter()
        res = _pxe.netboot(config, [dict(base[count // 2], profile="local")])
        figures["switch_one"] = round(time.perf_counter() - start, 4)
        figures["files"] = sum(len(files) for _dir, _sub, files in os.walk(scratch))
        return figures
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--nodes", type=int, default=1000)
    parser.add_argument("--dir", help="where to make the scratch boot root (default: the system's temp dir)")
    args = parser.parse_args(argv)
    print("FIGURES pxe-render-engine %s" % json.dumps(run(args.nodes, args.dir), sort_keys=True))
    return 0


if __name__ == "__main__":
    sys.exit(main())
