"""Run gridops.metal's power engine on a JSON request from stdin; print the results as JSON.

    {"nodes": [...], "request": {make_request keyword arguments}, "window": N, "spacing": S}
    -> {"results": [...], "elapsed": seconds}

Started by bmcs.run_engine() inside the network namespace that holds the BMCs
(a process, not a thread, can be moved there).
"""
import json
import pathlib
import sys
import time

REPO = pathlib.Path(__file__).resolve().parents[3]


def main():
    from ansible.utils.collection_loader._collection_finder import _AnsibleCollectionFinder

    _AnsibleCollectionFinder(paths=[str(REPO / "build" / "collections")])._install()
    from ansible_collections.gridops.metal.plugins.module_utils import _power

    payload = json.load(sys.stdin)
    nodes = _power.normalize_nodes(payload["nodes"])
    request = _power.make_request(**payload.get("request", {}))
    start = time.monotonic()
    results = _power.run(nodes, request, window=payload.get("window", 25), spacing=payload.get("spacing", 0.0))
    json.dump({"results": results, "elapsed": round(time.monotonic() - start, 3)}, sys.stdout)
    return 0


if __name__ == "__main__":
    sys.exit(main())
