"""Helpers of the Molecule scenarios' testinfra tests (molecule/<scenario>/tests/).

Molecule runs those tests with its environment (MOLECULE_INVENTORY_FILE,
ANSIBLE_CONFIG of the scenario...), so a test can run a playbook of its
scenario against the same guest, as the refusal and rollback tests do.
"""
import json
import os
import subprocess
import tempfile
import time


def run_playbook(playbook, extra_vars=None, timeout=900):
    """Run a playbook of the scenario against its inventory.

    The playbook may write what it found to ``gridops_results`` (a path it is
    given); returns (return code, that JSON or None, output, seconds).
    """
    scenario = os.environ.get("MOLECULE_SCENARIO_DIRECTORY") or os.getcwd()
    with tempfile.TemporaryDirectory(prefix="gridops-molecule-") as tmp:
        results = os.path.join(tmp, "results.json")
        extra = dict(extra_vars or {}, gridops_results=results)
        argv = ["ansible-playbook", "-i", os.environ["MOLECULE_INVENTORY_FILE"], "-e", json.dumps(extra),
                os.path.join(scenario, playbook)]
        started = time.monotonic()
        proc = subprocess.run(argv, capture_output=True, text=True, timeout=timeout, check=False)
        seconds = round(time.monotonic() - started, 1)
        found = None
        if os.path.exists(results):
            with open(results) as fh:
                found = json.load(fh)
    print("FIGURES playbook %s %ss rc=%d" % (playbook, seconds, proc.returncode))
    return proc.returncode, found, proc.stdout + proc.stderr, seconds
