"""The deploy engine's checks and plans: templates, layouts, partition tables, steps, hooks, the automaton."""
import json
import subprocess

import pytest

from ansible_collections.gridops.metal.plugins.module_utils import _deploy, _registry, _rights

GIB = 1024 ** 3
ENV = {"name": "debian12", "version": 1, "filesystem": "ext4", "partition_type": 131,
       "image": {"kind": "tar", "compression": "zstd", "sha256": "0" * 64, "file": "/x.tar.zst"},
       "boot": {"kernel": "/vmlinuz", "initrd": "/initrd.img", "params": "console=ttyS0"}}


def template(**over):
    base = {"disk": "/dev/vda", "partitions": [{"name": "swap", "role": "swap", "size": "256M"},
                                               {"name": "root", "role": "deploy", "size": "rest"}]}
    base.update(over)
    return _deploy.normalize_template(base, ENV)


@pytest.mark.parametrize("value, mib", [("512M", 512), ("8G", 8192), ("1.5G", 1536), (2048, 2048), ("1T", 1048576),
                                        ("4GiB", 4096), ("rest", None)])
def test_sizes(value, mib):
    assert _deploy.parse_size(value, "size") == mib


@pytest.mark.parametrize("value", ["", "8X", "-1G", True, "0M", "1K"])
def test_bad_sizes_name_the_field(value):
    with pytest.raises(_deploy.DeployError, match="partitions\\[0\\].size"):
        _deploy.parse_size(value, "partitions[0].size")


@pytest.mark.parametrize("over, field", [
    ({"label": "bsd"}, "cluster_template.label"),
    ({"disk": "vda"}, "cluster_template.disk"),
    ({"boot": "usb"}, "cluster_template.boot"),
    ({"partitions": []}, "cluster_template.partitions"),
    ({"partitions": [{"name": "a", "role": "swap", "size": "1G"}]}, "exactly one partition with role deploy"),
    ({"partitions": [{"name": "a", "role": "deploy"}, {"name": "a", "role": "swap", "size": "1G"}]},
     r"partitions\[1\].name"),
    ({"partitions": [{"name": "a", "role": "deploy"}, {"name": "b", "role": "tmp"}]}, "only one partition may take"),
    ({"partitions": [{"name": "a", "role": "root"}]}, r"partitions\[0\].role"),
    ({"partitions": [{"name": "a", "role": "deploy", "filesystem": "ntfs"}]}, r"partitions\[0\].filesystem"),
    ({"partitions": [{"name": "a", "role": "deploy", "colour": 1}]}, "unknown key"),
    ({"partitions": [{"name": "p%d" % i, "role": "deploy" if i == 0 else "tmp", "size": "1G"} for i in range(5)]},
     "at most 4 primary"),
    ({"size": 3}, "unknown key"),
])
def test_bad_templates_name_the_field(over, field):
    base = {"disk": "/dev/vda", "partitions": [{"name": "root", "role": "deploy"}]}
    base.update(over)
    with pytest.raises(_deploy.DeployError, match=field):
        _deploy.normalize_template(base, ENV)


def test_layout_is_aligned_and_fills_the_disk():
    layout = _deploy.plan_layout(template(), 8 * GIB)
    swap, root = layout
    assert swap["start"] == 2048 and swap["sectors"] == 256 * 2048 and swap["device"] == "/dev/vda1"
    assert root["start"] == swap["start"] + swap["sectors"]
    assert root["start"] + root["sectors"] == 8 * GIB // 512
    assert root["filesystem"] == "ext4", "the environment's file system"


def test_gpt_layout_leaves_room_for_the_backup_table():
    layout = _deploy.plan_layout(template(label="gpt"), 8 * GIB)
    assert layout[-1]["start"] + layout[-1]["sectors"] <= 8 * GIB // 512 - 34


def test_a_template_that_does_not_fit_is_refused():
    tpl = template(partitions=[{"name": "prod", "role": "keep", "size": "6G"},
                               {"name": "root", "role": "deploy", "size": "4G"}])
    with pytest.raises(_deploy.DeployError, match="10240 MiB of fixed sizes do not fit /dev/vda"):
        _deploy.plan_layout(tpl, 8 * GIB)


@pytest.mark.parametrize("disk, device", [("/dev/sda", "/dev/sda2"), ("/dev/nvme0n1", "/dev/nvme0n1p2"),
                                          ("/dev/disk/by-id/ata-X", "/dev/disk/by-id/ata-X-part2")])
def test_partition_devices(disk, device):
    assert _deploy.partition_device(disk, 2) == device


def sfdisk_json(script, tmp_path, size=8 * GIB):
    """What the real sfdisk makes of our script, on a sparse file."""
    disk = tmp_path / "disk.img"
    with open(disk, "wb") as fh:
        fh.truncate(size)
    subprocess.run(["sfdisk", "-q", str(disk)], input=script, text=True, check=True, capture_output=True)
    out = subprocess.run(["sfdisk", "--json", str(disk)], text=True, check=True, capture_output=True).stdout
    return json.loads(out)["partitiontable"]


@pytest.mark.parametrize("label", ["msdos", "gpt"])
def test_the_table_sfdisk_writes_matches_the_plan(tmp_path, label):
    tpl = template(label=label)
    layout = _deploy.plan_layout(tpl, 8 * GIB)
    table = sfdisk_json(_deploy.sfdisk_script(tpl, layout, ENV), tmp_path)
    assert _deploy.table_matches(tpl, layout, table) == (True, "the disk's table matches the template")
    root = table["partitions"][1]
    if label == "msdos":
        assert root.get("bootable") and root["type"] == "83" and table["partitions"][0]["type"] == "82"
    else:
        assert "LegacyBIOSBootable" in root.get("attrs", "") and root["name"] == "root"


def test_a_different_table_does_not_match(tmp_path):
    tpl = template()
    other = template(partitions=[{"name": "swap", "role": "swap", "size": "512M"},
                                 {"name": "root", "role": "deploy", "size": "rest"}])
    table = sfdisk_json(_deploy.sfdisk_script(other, _deploy.plan_layout(other, 8 * GIB), ENV), tmp_path)
    match, why = _deploy.table_matches(tpl, _deploy.plan_layout(tpl, 8 * GIB), table)
    assert not match and "partition 1 (swap)" in why
    assert _deploy.table_matches(tpl, [], None) == (False, "the disk has no partition table")


def test_format_never_touches_keep_and_data_only_on_a_new_table():
    tpl = template(partitions=[{"name": "prod", "role": "keep", "size": "1G"},
                               {"name": "data", "role": "data", "size": "1G"},
                               {"name": "root", "role": "deploy", "size": "2G"},
                               {"name": "tmp", "role": "tmp", "size": "rest"}])
    layout = _deploy.plan_layout(tpl, 8 * GIB)
    kept = _deploy.format_commands(layout, False, "tar")
    assert "/dev/vda1" not in kept and "/dev/vda2" not in kept
    assert "mkfs.ext4 -q -F /dev/vda3" in kept and "mkfs.ext4 -q -F /dev/vda4" in kept
    assert "/dev/vda2" in _deploy.format_commands(layout, True, "tar")
    assert "/dev/vda1" not in _deploy.format_commands(layout, True, "tar")
    assert "/dev/vda3" not in _deploy.format_commands(layout, False, "dd"), "a dd image brings its file system"


def test_fstab_names_every_mounted_partition_by_uuid():
    tpl = template(partitions=[{"name": "swap", "role": "swap", "size": "1G"},
                               {"name": "root", "role": "deploy", "size": "4G"},
                               {"name": "scratch", "role": "data", "size": "rest", "mount": "/scratch"}])
    text = _deploy.fstab(_deploy.plan_layout(tpl, 8 * GIB))
    assert text.splitlines() == ["UUID=@UUID1@ none swap sw 0 0", "UUID=@UUID2@ / ext4 errors=remount-ro 0 1",
                                 "UUID=@UUID3@ /scratch ext4 defaults 0 2"]


def test_steps_default_and_refuse_unknown_variants():
    steps = _deploy.normalize_steps({})
    assert [a["variant"] for a in steps["BroadcastEnv"]] == ["chain", "pull"]
    steps = _deploy.normalize_steps({"broadcast_env": ["pull"], "set_deployment_env": [{"variant": "current",
                                                                                       "timeout": 30}]})
    assert steps["BroadcastEnv"] == [{"variant": "pull", "retries": 0, "timeout": 1800.0}]
    assert steps["SetDeploymentEnv"][0]["timeout"] == 30.0
    for bad, field in (({"broadcast_env": [{"variant": "torrent"}]}, r"steps.broadcast_env\[0\].variant"),
                       ({"boot_new_env": [{"variant": "reboot", "retries": -1}]}, "retries"),
                       ({"boot_new_env": [{"variant": "reboot", "timeout": 0}]}, "timeout"),
                       ({"kexec": []}, "unknown macro-step")):
        with pytest.raises(_deploy.DeployError, match=field):
            _deploy.normalize_steps(bad)


def test_nodes_are_expanded_and_need_their_facts():
    facts = {"node-%d" % i: {"mac": "52:54:00:00:00:0%d" % i, "ip": "10.0.0.%d" % i, "bmc_address": "10.1.0.%d" % i,
                             "disk_size": "8G", "unrelated": object()} for i in (1, 2)}
    nodes = _deploy.normalize_nodes(["node-[1-2]"], facts, _rights.expand_nodes, {"bmc_user": "admin"})
    assert [n["name"] for n in nodes] == ["node-1", "node-2"]
    assert nodes[0]["disk_size"] == 8 * GIB and nodes[0]["bmc_user"] == "admin" and "unrelated" not in nodes[0]
    with pytest.raises(_deploy.DeployError, match="node-3 has no facts"):
        _deploy.normalize_nodes(["node-[1-3]"], facts, _rights.expand_nodes)
    bad = dict(facts, **{"node-2": dict(facts["node-2"], mac="52:54")})
    with pytest.raises(_deploy.DeployError, match="node_facts.node-2.mac"):
        _deploy.normalize_nodes(["node-[1-2]"], bad, _rights.expand_nodes)


def test_hooks(tmp_path):
    script = tmp_path / "motd.sh"
    script.write_text("#!/bin/sh\necho hi > /etc/motd\n")
    hooks = _deploy.normalize_hooks([{"script": str(script)}, {"content": "#!/bin/sh\ntrue\n", "chroot": False},
                                     {"archive": str(script), "run": "bin/go", "args": "-x"}])
    assert [h["name"] for h in hooks] == ["motd.sh", "hook-1", "motd.sh"]
    assert hooks[1]["chroot"] is False and hooks[2]["kind"] == "archive"
    for bad, field in (([{"script": "/nonexistent"}], r"postinstall\[0\].script: cannot read"),
                       ([{"content": "x", "script": str(script)}], "exactly one of"),
                       ([{"archive": str(script)}], r"postinstall\[0\].run"),
                       ([{"archive": str(script), "run": "../x"}], r"postinstall\[0\].run")):
        with pytest.raises(_deploy.DeployError, match=field):
            _deploy.normalize_hooks(bad)


def test_hook_scripts_run_in_sh(tmp_path):
    """The generated hook block, run by a real sh with ROOT pointing at a directory, not in a chroot."""
    hooks = _deploy.normalize_hooks([{"content": "#!/bin/sh\necho \"$1 $GRIDOPS_NODE\" > \"$GRIDOPS_ROOT/out\"\n",
                                      "args": "hello", "chroot": False, "name": "greet"}])
    block = _deploy.hook_commands(hooks, [])
    script = "set -e\nROOT=%s\nexport GRIDOPS_ROOT=$ROOT GRIDOPS_NODE=n1\n%s" % (tmp_path, block)
    script = script.replace(_deploy.WORKDIR, str(tmp_path / "work"))
    subprocess.run(["busybox", "sh", "-c", script], check=True, capture_output=True)
    assert (tmp_path / "out").read_text() == "hello n1\n"


class FakeDeployment(_deploy.Deployment):
    """The automaton with scripted macro-step outcomes (no node is reached)."""

    def __init__(self, nodes, steps, outcomes):
        _deploy.Deployment.__init__(self, nodes, ENV, template(), steps, ssh=None, power_request=None)
        self.outcomes = outcomes
        self.calls = []

    def act(self, macro):
        def action(variant, nodes, timeout):
            self.calls.append((macro, variant, [n["name"] for n in nodes]))
            bad = self.outcomes.get((macro, variant), {})
            failed = dict((n["name"], _deploy.StepFailed(bad[n["name"]], "%s broke" % n["name"]))
                          for n in nodes if n["name"] in bad and bad[n["name"]])
            for n in nodes:
                if n["name"] in bad and bad[n["name"]] is not None and n["name"] in failed:
                    # a failure that happens once only
                    if n["name"].endswith("-flaky"):
                        bad[n["name"]] = None
            return [n for n in nodes if n["name"] not in failed], failed
        return action


def test_ko_nodes_are_retried_then_moved_to_the_next_variant_then_reported():
    nodes = [{"name": n, "ip": "10.0.0.1"} for n in ("a", "b-flaky", "c")]
    steps = _deploy.normalize_steps({"broadcast_env": [{"variant": "chain", "retries": 1}, {"variant": "pull"}]})
    run = FakeDeployment(nodes, steps, {("BroadcastEnv", "chain"): {"b-flaky": "send", "c": "send"},
                                        ("BroadcastEnv", "pull"): {"c": "verify"}})
    ok = run.run_macro("BroadcastEnv", nodes, run.act("BroadcastEnv"))
    assert [n["name"] for n in ok] == ["a", "b-flaky"]
    assert run.calls == [("BroadcastEnv", "chain", ["a", "b-flaky", "c"]), ("BroadcastEnv", "chain", ["b-flaky", "c"]),
                         ("BroadcastEnv", "pull", ["c"])]
    c = run.results["c"]
    assert (c["state"], c["failed_step"], c["failed_micro_step"]) == ("failed", "BroadcastEnv", "verify")
    assert c["error"] == "c broke"
    assert run.results["b-flaky"]["steps"]["BroadcastEnv"]["tries"] == 2
    assert run.results["a"]["steps"]["BroadcastEnv"]["ok"] is True


def test_history_and_statistics():
    reg = _registry.Registry(None)
    send = {"step": "BroadcastEnv", "micro_step": "send", "seconds": 4.0, "ok": True, "error": None}
    results = [{"name": "n1", "state": "deployed", "failed_step": None, "failed_micro_step": None, "error": None,
                "seconds": 10.0, "steps": {}, "micro_steps": [send]},
               {"name": "n2", "state": "failed", "failed_step": "BootNewEnv", "failed_micro_step": "reboot",
                "error": "x", "seconds": 3.0, "steps": {}, "micro_steps": [dict(send, seconds=6.0)]}]
    started = _registry.utcnow()
    _deploy.record(reg, "d1", "alice", ENV, "chain", started, 12.5, results, {})
    _deploy.record(reg, "d2", "alice", ENV, "chain", started, 12.5, results[1:], {})
    stats = _deploy.statistics(reg)
    assert stats["nodes"]["n2"] == {"deployments": 2, "failed": 2, "failure_rate": 1.0,
                                    "failed_steps": {"BootNewEnv/reboot": 2}}
    assert stats["nodes"]["n1"]["failure_rate"] == 0.0
    assert stats["micro_steps"]["BroadcastEnv/send"] == {"count": 3, "mean_seconds": 5.33, "max_seconds": 6.0,
                                                         "failed": 0}
    assert [d["id"] for d in stats["recent"]] == ["d1", "d2"] or [d["id"] for d in stats["recent"]] == ["d2", "d1"]
    with pytest.raises(_registry.RegistryError):
        _deploy.record(reg, "d1", "alice", ENV, "chain", started, 1.0, results, {})
