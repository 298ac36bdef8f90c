# -*- coding: utf-8 -*-
# Copyright: (c) 2026, gridops.metal developers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Action of gridops.metal.deploy: runs the module in the background on the deploy server and
shows its live progress (nodes per step, bytes broadcast) every progress_interval seconds.

A deployment of 100 nodes for 10 minutes must not be a silent wait: while the
module runs (asynchronously, as ``async:`` would run it), this action reads the
progress file the module rewrites every second and prints one line when it
changes.  With ``progress_interval: 0``, in check mode, or when the task has its
own ``async``, the module runs as any other.
"""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import json
import os
import time
import uuid

from ansible.module_utils.common.text.converters import to_text
from ansible.plugins.action import ActionBase
from ansible.utils.display import Display
from ansible.utils.vars import merge_hash

display = Display()

MODULE = "gridops.metal.deploy"
DEFAULT_REGISTRY = "/var/lib/gridops-metal/registry.sqlite"
# The longest a deployment may run in the background (the async limit).
ASYNC_LIMIT = 6 * 3600
_ASYNC_KEYS = ("ansible_job_id", "started", "finished", "results_file", "_ansible_suppress_tmpdir_delete")


def progress_line(state):
    """One line from the module's progress file: elapsed, nodes per state, bytes, the last event."""
    counts = state.get("counts") or {}
    parts = ["%s %d" % (k, counts[k]) for k in sorted(counts)]
    line = "[%ss] %s" % (state.get("elapsed", "?"), ", ".join(parts))
    total = state.get("bytes_total") or 0
    if total:
        line += "; broadcast %d/%d MiB" % ((state.get("bytes") or 0) >> 20, total >> 20)
    events = state.get("events") or []
    if events:
        line += "; %s" % events[-1]
    return line


class ActionModule(ActionBase):

    _supports_check_mode = True
    _supports_async = True

    def run(self, tmp=None, task_vars=None):
        result = super(ActionModule, self).run(tmp, task_vars)
        del tmp
        args = dict(self._task.args)
        interval = args.get("progress_interval", 10)
        try:
            interval = float(interval)
        except (TypeError, ValueError):
            result.update(failed=True, msg="progress_interval: %r is not a number of seconds" % (interval,))
            return result
        if self._task.check_mode or interval <= 0 or self._task.async_val:
            wrap_async = bool(self._task.async_val) and not self._connection.has_native_async
            return merge_hash(result, self._execute_module(module_name=MODULE, module_args=args, task_vars=task_vars,
                                                           wrap_async=wrap_async))
        if not args.get("progress_file"):
            base = os.path.dirname(args.get("registry") or DEFAULT_REGISTRY)
            args["progress_file"] = "%s/deployments/run-%s.json" % (base, uuid.uuid4().hex[:12])
        host = task_vars.get("inventory_hostname", "deploy server") if task_vars else "deploy server"
        saved = self._task.async_val
        self._task.async_val = ASYNC_LIMIT
        try:
            started = self._execute_module(module_name=MODULE, module_args=args, task_vars=task_vars, wrap_async=True)
        finally:
            self._task.async_val = saved
        jid = started.get("ansible_job_id")
        if not jid or started.get("failed"):
            return merge_hash(result, started)
        async_dir = self._remote_expand_user(self.get_shell_option("async_dir", default="~/.ansible_async"))
        status_args = {"jid": jid, "_async_dir": async_dir}
        last_line, last_shown = None, 0.0
        deadline = time.time() + ASYNC_LIMIT + 60
        status = {}
        while time.time() < deadline:
            time.sleep(min(2.0, interval))
            try:
                status = self._execute_module(module_name="ansible.legacy.async_status", module_args=status_args,
                                              task_vars=task_vars)
            except Exception as exc:  # a hiccup of the connection: poll again
                display.vvvv("deploy: polling failed, again: %s" % to_text(exc))
                continue
            if status.get("finished") or (status.get("failed") and status.get("_ansible_parsed", True)
                                          and not status.get("started")):
                break
            if time.time() - last_shown < interval:
                continue
            line = self._progress(args["progress_file"], task_vars)
            if line and line != last_line:
                display.display("%s: deploy %s" % (host, line))
                last_line = line
            last_shown = time.time()
        else:
            status = {"failed": True, "msg": "deploy: no result after %ds" % ASYNC_LIMIT}
        try:
            self._execute_module(module_name="ansible.legacy.async_status",
                                 module_args=dict(status_args, mode="cleanup"), task_vars=task_vars)
        except Exception:  # the job's file is left behind; nothing else to do
            pass
        for key in _ASYNC_KEYS:
            status.pop(key, None)
        return merge_hash(result, status)

    def _progress(self, path, task_vars):
        try:
            res = self._execute_module(module_name="ansible.legacy.slurp", module_args={"src": path},
                                       task_vars=task_vars)
        except Exception:
            return None
        if res.get("failed") or "content" not in res:
            return None
        import base64
        try:
            state = json.loads(base64.b64decode(res["content"]).decode("utf-8"))
        except (ValueError, TypeError):
            return None
        return progress_line(state)
