#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: (c) 2026, gridops.metal developers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import absolute_import, division, print_function

__metaclass__ = type

DOCUMENTATION = r"""
---
module: lab_supervisor
short_description: Start, reload or stop the process supervisor of a gridops lab
version_added: 0.1.0
description:
  - A lab's long-running processes (virtual BMCs, libvirtd, vbmcd) run as children of one supervisor process,
    which is also the child subreaper of everything they start (the nodes' QEMU processes), so nothing is left
    as a zombie on machines whose init does not reap.
  - The supervisor's configuration is a JSON file listing its services; this module starts the supervisor,
    or makes a running one reload when the file changed since it was last loaded, or stops it.
  - Node QEMU processes keep running across a reload.
author:
  - gridops.metal developers (@gridops)
attributes:
  check_mode:
    description: Reports whether the supervisor would be started, reloaded or stopped.
    support: full
  diff_mode:
    description: Not supported.
    support: none
options:
  state:
    description: C(started) starts or reloads the supervisor; C(stopped) stops it and everything it runs.
    type: str
    choices: [started, stopped]
    default: started
  config:
    description:
      - Path of the supervisor's JSON configuration, with keys C(pidfile), C(log), C(loaded_file) and C(services)
        (a list of C(name), C(argv), C(log) and optional C(netns), C(env), C(cwd)).
    type: path
    required: true
  script:
    description: Path of C(gridops_lab_supervisor.py) (shipped in the C(gridops.metal.lab) role). Required to start.
    type: path
  python:
    description: Python interpreter that runs the supervisor.
    type: path
    default: /usr/bin/python3
  timeout:
    description: Seconds to wait for the supervisor to start, reload or stop.
    type: int
    default: 30
"""

EXAMPLES = r"""
- name: Run the lab's BMCs
  gridops.metal.lab_supervisor:
    config: /var/lib/gridops-lab/default/supervisor.json
    script: "{{ role_path }}/files/gridops_lab_supervisor.py"

- name: Stop them and every node
  gridops.metal.lab_supervisor:
    config: /var/lib/gridops-lab/default/supervisor.json
    state: stopped
"""

RETURN = r"""
pid:
  description: PID of the running supervisor (null when stopped).
  returned: always
  type: int
  sample: 4242
operation:
  description: What was done, C(none), C(start), C(reload) or C(stop).
  returned: always
  type: str
  sample: reload
"""

import hashlib
import json
import os
import signal
import time

from ansible.module_utils.basic import AnsibleModule
from ansible_collections.gridops.metal.plugins.module_utils._lab import read_pidfile

MARKER = "gridops_lab_supervisor"


def _read(path):
    try:
        with open(path) as fh:
            return fh.read().strip()
    except (IOError, OSError):
        return None


def _wait(predicate, timeout):
    deadline = time.time() + timeout
    while time.time() < deadline:
        if predicate():
            return True
        time.sleep(0.1)
    return predicate()


def main():
    module = AnsibleModule(
        argument_spec=dict(
            state=dict(type="str", choices=["started", "stopped"], default="started"),
            config=dict(type="path", required=True),
            script=dict(type="path"),
            python=dict(type="path", default="/usr/bin/python3"),
            timeout=dict(type="int", default=30),
        ),
        required_if=[("state", "started", ("script",))],
        supports_check_mode=True,
    )
    p = module.params
    try:
        with open(p["config"], "rb") as fh:
            raw = fh.read()
        config = json.loads(raw)
        pidfile, loaded_file = config["pidfile"], config["loaded_file"]
    except (IOError, OSError, ValueError, KeyError) as exc:
        if p["state"] == "stopped":
            module.exit_json(changed=False, pid=None, operation="none", msg="no usable config: %s" % exc)
        module.fail_json(msg="config: cannot use %s: %s" % (p["config"], exc))
    digest = hashlib.sha256(raw).hexdigest()
    pid = read_pidfile(pidfile, MARKER)

    if p["state"] == "stopped":
        if pid is None:
            module.exit_json(changed=False, pid=None, operation="none")
        if not module.check_mode:
            os.kill(pid, signal.SIGTERM)
            if not _wait(lambda: read_pidfile(pidfile, MARKER) is None, p["timeout"]):
                module.fail_json(msg="supervisor %d did not stop within %ss" % (pid, p["timeout"]), pid=pid)
        module.exit_json(changed=True, pid=None, operation="stop")

    if pid is not None and _read(loaded_file) == digest:
        module.exit_json(changed=False, pid=pid, operation="none")
    action = "start" if pid is None else "reload"
    if module.check_mode:
        module.exit_json(changed=True, pid=pid, operation=action)
    if pid is None:
        if os.path.exists(loaded_file):
            os.unlink(loaded_file)
        rc, out, err = module.run_command([p["python"], p["script"], "start", "--config", p["config"]])
        if rc != 0:
            module.fail_json(msg="supervisor failed to start: %s" % (err or out).strip(), rc=rc)
    else:
        os.kill(pid, signal.SIGHUP)
    if not _wait(lambda: _read(loaded_file) == digest, p["timeout"]):
        module.fail_json(msg="supervisor did not load %s within %ss; see %s" % (p["config"], p["timeout"], config.get("log")))
    module.exit_json(changed=True, pid=read_pidfile(pidfile, MARKER), operation=action)


if __name__ == "__main__":
    main()
