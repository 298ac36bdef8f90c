# -*- coding: utf-8 -*-
# Copyright: (c) 2026, gridops.metal developers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The artifact engine's cache, keys, locks and recipe handling, on real files."""

from __future__ import absolute_import, division, print_function
__metaclass__ = type

import gzip
import json
import multiprocessing
import os
import subprocess
import time

import pytest

from ansible_collections.gridops.metal.plugins.module_utils import _artifacts as art


def _write_builder(payload="data", delay=0.0, counter=None):
    def build(tmp, runner):
        runner.note("building")
        if counter:
            with open(counter, "a") as fh:
                fh.write("%d\n" % os.getpid())
        time.sleep(delay)
        with open(os.path.join(tmp, "artifact.txt"), "w") as fh:
            fh.write(payload)
        return {"artifact": "artifact.txt"}
    return build


def _leftovers(cache, kind):
    kind_dir = os.path.join(cache.root, kind)
    return sorted(n for n in os.listdir(kind_dir) if n.startswith("."))


# -- keys and recipes ---------------------------------------------------------


def test_key_is_canonical_and_sensitive():
    recipe = {"a": [1, 2], "b": {"x": "y", "z": True}}
    reordered = {"b": {"z": True, "x": "y"}, "a": [1, 2]}
    key = art.cache_key("rootfs", recipe, {"v": "1"})
    assert key == art.cache_key("rootfs", reordered, {"v": "1"})
    assert len(key) == 64 and int(key, 16) >= 0
    assert key != art.cache_key("kernel", recipe, {"v": "1"})
    assert key != art.cache_key("rootfs", dict(recipe, a=[2, 1]), {"v": "1"})
    assert key != art.cache_key("rootfs", recipe, {"v": "2"})


def test_key_follows_builder_version(monkeypatch):
    before = art.cache_key("kernel", {"package": "p"})
    monkeypatch.setitem(art.BUILDER_VERSION, "kernel", art.BUILDER_VERSION["kernel"] + 1)
    assert art.cache_key("kernel", {"package": "p"}) != before


def test_defaults_give_the_same_key_as_explicit_values():
    implicit = art.normalize_recipe("rootfs", {})
    explicit = art.normalize_recipe("rootfs", {"suite": "bookworm", "variant": "minbase",
                                               "mirror": art.DEBIAN_MIRROR, "components": ["main"],
                                               "packages": []})
    assert implicit == explicit
    assert art.cache_key("rootfs", implicit) == art.cache_key("rootfs", explicit)


def test_package_order_and_duplicates_do_not_matter():
    one = art.normalize_recipe("rootfs", {"packages": ["b", "a", "b"]})
    two = art.normalize_recipe("rootfs", {"packages": ["a", "b"]})
    assert one == two and one["packages"] == ["a", "b"]
    assert art.normalize_recipe("rootfs", {"packages": ["c"]}) != one


def test_initramfs_recipe_nests_the_kernel_recipe_and_files():
    recipe = art.normalize_recipe("initramfs", {
        "modules": ["virtio-net", "virtio_net"],
        "files": [{"path": "/etc/x", "content": "y", "mode": "755"}],
    })
    assert recipe["kernel"] == {"package": "linux-image-amd64"}
    assert recipe["modules"] == ["virtio_net"]
    assert recipe["files"] == [{"path": "/etc/x", "content": "y", "mode": "0755"}]


@pytest.mark.parametrize("kind, recipe, message", [
    ("rootfs", {"packges": ["x"]}, "unknown option"),
    ("rootfs", {"packages": "vim"}, "list of strings"),
    ("rootfs", {"variant": "huge"}, "one of"),
    ("initramfs", {"network": "yes"}, "boolean"),
    ("initramfs", {"files": [{"path": "etc/x", "content": ""}]}, "absolute"),
    ("initramfs", {"files": [{"path": "/x", "content": "", "src": "/y"}]}, "exactly one"),
    ("initramfs", {"files": [{"path": "/x", "content": "", "mode": "rwx"}]}, "octal"),
    ("container_image", {"name": "Bad Name"}, "not a valid image name"),
    ("teapot", {}, "unknown artifact kind"),
])
def test_bad_recipes_are_refused(kind, recipe, message):
    with pytest.raises(art.ArtifactError, match=message):
        art.normalize_recipe(kind, recipe)


def test_cache_dir_from_environment(monkeypatch, tmp_path):
    monkeypatch.setenv(art.CACHE_ENV, str(tmp_path / "c"))
    assert art.Cache().root == str(tmp_path / "c")
    assert art.Cache(str(tmp_path / "d")).root == str(tmp_path / "d")
    monkeypatch.delenv(art.CACHE_ENV)
    assert art.Cache().root == os.path.expanduser("~/.cache/gridops-metal")


# -- cache entries --------------------------------------------------------------


def test_build_then_reuse(tmp_path):
    cache = art.Cache(str(tmp_path))
    counter = str(tmp_path / "count")
    meta, changed = cache.build("kernel", "k1", _write_builder(counter=counter), describe={"x": 1})
    assert changed is True
    assert meta["artifact"] == "artifact.txt" and meta["x"] == 1 and meta["key"] == "k1"
    with open(os.path.join(cache.entry("kernel", "k1"), "meta.json")) as fh:
        assert json.load(fh) == meta
    again, changed = cache.build("kernel", "k1", _write_builder(counter=counter))
    assert changed is False and again == meta
    with open(counter) as fh:
        assert len(fh.readlines()) == 1
    assert _leftovers(cache, "kernel") == []
    with open(cache.log_path("kernel", "k1")) as fh:
        assert "building" in fh.read()


def test_check_mode_builds_nothing(tmp_path):
    cache = art.Cache(str(tmp_path))
    meta, changed = cache.build("kernel", "k1", _write_builder(), check=True)
    assert (meta, changed) == (None, True)
    assert not os.path.exists(cache.entry("kernel", "k1"))
    cache.build("kernel", "k1", _write_builder())
    meta, changed = cache.build("kernel", "k1", _write_builder(), check=True)
    assert changed is False and meta["key"] == "k1"


def test_force_replaces_the_entry(tmp_path):
    cache = art.Cache(str(tmp_path))
    cache.build("rootfs", "k1", _write_builder("old"))
    meta, changed = cache.build("rootfs", "k1", _write_builder("new"), force=True)
    assert changed is True
    with open(os.path.join(cache.entry("rootfs", "k1"), meta["artifact"])) as fh:
        assert fh.read() == "new"
    assert _leftovers(cache, "rootfs") == []


def test_invalid_entry_is_rebuilt(tmp_path):
    cache = art.Cache(str(tmp_path))
    cache.build("container_image", "k1", _write_builder("one"))
    meta, changed = cache.build("container_image", "k1", _write_builder("two"), valid=lambda meta: False)
    assert changed is True
    with open(os.path.join(cache.entry("container_image", "k1"), "artifact.txt")) as fh:
        assert fh.read() == "two"


def test_failed_build_leaves_nothing_and_releases_the_lock(tmp_path):
    cache = art.Cache(str(tmp_path))

    def broken(tmp, runner):
        with open(os.path.join(tmp, "half"), "w") as fh:
            fh.write("half an artifact")
        raise art.ArtifactError("boom")

    with pytest.raises(art.ArtifactError, match="boom"):
        cache.build("initramfs", "k1", broken)
    assert not os.path.exists(cache.entry("initramfs", "k1"))
    assert _leftovers(cache, "initramfs") == []
    meta, changed = cache.build("initramfs", "k1", _write_builder())
    assert changed is True and meta["artifact"] == "artifact.txt"


def test_failed_command_reports_the_log(tmp_path):
    cache = art.Cache(str(tmp_path))

    def failing(tmp, runner):
        runner.run(["sh", "-c", "echo something went wrong >&2; exit 3"])

    with pytest.raises(art.ArtifactError, match="(?s)exit 3.*something went wrong"):
        cache.build("rootfs", "k1", failing)
    assert _leftovers(cache, "rootfs") == []


def test_stale_temporary_directories_are_cleaned(tmp_path):
    cache = art.Cache(str(tmp_path))
    stale = tmp_path / "kernel" / ".tmp-k1-dead"
    (stale / "sub").mkdir(parents=True)
    (stale / "sub" / "f").write_text("x")
    other = tmp_path / "kernel" / ".tmp-k2-busy"
    other.mkdir()
    cache.build("kernel", "k1", _write_builder())
    assert not stale.exists()
    assert other.exists()   # another key's build is none of our business


def test_remove_tree_refuses_when_something_stays_mounted(tmp_path, monkeypatch):
    target = tmp_path / "root"
    (target / "proc").mkdir(parents=True)
    monkeypatch.setattr(art, "mounts_below", lambda path: [str(target / "proc")])
    monkeypatch.setattr(art.subprocess, "call", lambda argv, **kw: 1)
    with pytest.raises(art.ArtifactError, match="still mounted"):
        art.remove_tree(str(target))
    assert target.exists()


def test_mounts_below_sees_real_mounts(tmp_path):
    assert art.mounts_below(str(tmp_path)) == []
    assert "/proc" in art.mounts_below("/proc") and art.mounts_below("/")[-1] == "/"


def _race(root, counter, barrier, results):
    barrier.wait()
    meta, changed = art.Cache(root).build("kernel", "shared", _write_builder(delay=1.0, counter=counter))
    results.put((changed, meta["build_seconds"]))


def test_two_processes_build_the_same_key_once(tmp_path):
    ctx = multiprocessing.get_context("fork")
    counter = str(tmp_path / "count")
    barrier = ctx.Barrier(2)
    results = ctx.Queue()
    procs = [ctx.Process(target=_race, args=(str(tmp_path / "cache"), counter, barrier, results))
             for _i in range(2)]
    for proc in procs:
        proc.start()
    try:
        outcome = sorted(results.get(timeout=60) for _i in range(2))
    finally:
        for proc in procs:
            proc.join(30)
    assert [p.exitcode for p in procs] == [0, 0]
    with open(counter) as fh:
        assert len(fh.readlines()) == 1
    # One built, the other waited for the lock and then reused the same entry.
    assert [changed for changed, _s in outcome] == [False, True]
    assert outcome[0][1] == outcome[1][1]
    assert _leftovers(art.Cache(str(tmp_path / "cache")), "kernel") == []


# -- helpers of the builders ------------------------------------------------------


def test_apt_stanza_and_depends_parsing():
    text = ("Package: linux-image-amd64\nVersion: 6.1.192-2\n"
            "Depends: linux-image-6.1.0-56-amd64 (= 6.1.192-2), foo | bar, baz:any\n"
            "Description: x\n more\n\nPackage: second\n")
    fields = art._parse_stanza(text)
    assert fields["Version"] == "6.1.192-2" and fields["Description"] == "x\nmore"
    assert art._depends_names(fields["Depends"]) == ["linux-image-6.1.0-56-amd64", "foo", "baz"]


def test_kernel_package_resolution_follows_the_meta_package(monkeypatch):
    index = {
        "linux-image-amd64": {"Package": "linux-image-amd64", "Version": "2",
                              "Depends": "linux-image-6.1.0-9-amd64 (= 2)"},
        "linux-image-6.1.0-9-amd64": {"Package": "linux-image-6.1.0-9-amd64", "Version": "2",
                                      "Depends": "kmod, linux-base (>= 4.3~)", "SHA256": "ab"},
    }
    monkeypatch.setattr(art, "_apt_show", lambda runner, pkg: index[pkg])
    assert art.resolve_kernel_package(None, "linux-image-amd64") == ("linux-image-6.1.0-9-amd64", "2", "ab")


def test_module_load_order(tmp_path):
    (tmp_path / "modules.dep").write_text(
        "kernel/drivers/net/virtio_net.ko: kernel/drivers/net/net_failover.ko kernel/net/core/failover.ko "
        "kernel/drivers/virtio/virtio.ko kernel/drivers/virtio/virtio_ring.ko\n"
        "kernel/drivers/net/net_failover.ko: kernel/net/core/failover.ko\n"
        "kernel/net/core/failover.ko:\n"
        "kernel/drivers/virtio/virtio.ko: kernel/drivers/virtio/virtio_ring.ko\n"
        "kernel/drivers/virtio/virtio_ring.ko:\n"
        "kernel/fs/ext4/ext4.ko.xz: kernel/fs/jbd2/jbd2.ko.xz\n"
        "kernel/fs/jbd2/jbd2.ko.xz:\n")
    (tmp_path / "modules.builtin").write_text("kernel/net/packet/af_packet.ko\n")
    order, builtin = art.module_load_order(str(tmp_path), ["virtio-net", "af_packet", "ext4", "virtio"])
    names = [os.path.basename(p).split(".")[0] for p in order]
    assert names == ["failover", "net_failover", "virtio_ring", "virtio", "virtio_net", "jbd2", "ext4"]
    assert builtin == ["af_packet"]
    with pytest.raises(art.ArtifactError, match="neither in modules.dep"):
        art.module_load_order(str(tmp_path), ["nosuchmod"])


def test_elf_libraries_of_a_dynamic_and_a_static_program():
    libs = art.elf_libraries("/bin/sh" if os.path.exists("/bin/sh") else "/usr/bin/env")
    assert any("libc.so" in lib for lib in libs)
    if os.path.exists("/bin/busybox"):
        assert art.elf_libraries("/bin/busybox") == []


def test_build_dispatch_refuses_unknown_kinds(tmp_path):
    with pytest.raises(art.ArtifactError, match="unknown artifact kind"):
        art.build("teapot", {}, cache_dir=str(tmp_path))


def test_file_contents_stay_out_of_results():
    recipe = art.normalize_recipe("initramfs", {"files": [{"path": "/etc/secret", "content": "hunter2"}]})
    public = art._public_recipe(recipe)
    assert "hunter2" not in json.dumps(public)
    assert public["files"][0]["content"].startswith("sha256:")
    assert recipe["files"][0]["content"] == "hunter2"


@pytest.fixture
def fake_kernel(tmp_path, monkeypatch):
    """A kernel result whose modules tree holds three dummy modules."""
    moddir = tmp_path / "kernel" / "lib" / "modules" / "6.1.0-0-amd64"
    for rel in ("kernel/drivers/virtio/virtio_ring.ko", "kernel/drivers/virtio/virtio.ko",
                "kernel/drivers/block/virtio_blk.ko"):
        (moddir / rel).parent.mkdir(parents=True, exist_ok=True)
        (moddir / rel).write_bytes(b"\x7fELF fake " + rel.encode())
    (moddir / "modules.dep").write_text(
        "kernel/drivers/virtio/virtio_ring.ko:\n"
        "kernel/drivers/virtio/virtio.ko: kernel/drivers/virtio/virtio_ring.ko\n"
        "kernel/drivers/block/virtio_blk.ko: kernel/drivers/virtio/virtio.ko kernel/drivers/virtio/virtio_ring.ko\n")
    (moddir / "modules.builtin").write_text("kernel/drivers/virtio/virtio_pci.ko\n")
    fake = {"key": "f" * 64, "changed": False, "kernel_version": "6.1.0-0-amd64", "modules_dir": str(moddir),
            "vmlinuz": str(tmp_path / "kernel" / "vmlinuz")}
    monkeypatch.setattr(art, "kernel", lambda recipe, cache_dir=None, force=False, check=False: dict(fake))
    return fake


def _cpio_listing(image):
    with gzip.open(image) as fh:
        data = fh.read()
    out = subprocess.run(["/bin/busybox", "cpio", "-tv"], input=data, capture_output=True, check=True).stdout
    listing = {}
    for line in out.decode().splitlines():
        fields = line.split()
        listing[fields[-1] if "->" not in line else fields[-3]] = fields[0]
    return listing


@pytest.mark.skipif(not os.path.exists("/bin/busybox"), reason="needs busybox-static")
def test_initramfs_contents_and_reproducibility(fake_kernel, tmp_path):
    recipe = {
        "modules": ["virtio_blk", "virtio_pci"],
        "files": [{"path": "/usr/local/bin/hello", "content": "#!/bin/sh\necho hi\n", "mode": "0755"}],
        "init_hook": "echo hooked",
        "hostname": "unit",
    }
    cache = str(tmp_path / "cache")
    first = art.initramfs(recipe, cache_dir=cache)
    assert first["changed"] is True and first["kernel_version"] == "6.1.0-0-amd64"
    assert first["modules"] == ["virtio_ring", "virtio", "virtio_blk"]
    assert first["builtin_modules"] == ["virtio_pci"]
    assert first["ssh"] is False and first["vmlinuz"] == fake_kernel["vmlinuz"]
    listing = _cpio_listing(first["initramfs"])
    assert listing["init"].startswith("-rwx") and listing["bin/busybox"].startswith("-rwx")
    assert listing["usr/local/bin/hello"] == "-rwxr-xr-x"
    assert "lib/modules/6.1.0-0-amd64/kernel/drivers/block/virtio_blk.ko" in listing
    assert "usr/sbin/dropbear" not in listing
    sha = art.sha256_file(first["initramfs"])
    again = art.initramfs(recipe, cache_dir=cache)
    assert again["changed"] is False and again["key"] == first["key"]
    rebuilt = art.initramfs(recipe, cache_dir=cache, force=True)
    assert art.sha256_file(rebuilt["initramfs"]) == sha   # same inputs, same bytes
    other = art.initramfs(dict(recipe, hostname="other"), cache_dir=cache)
    assert other["key"] != first["key"] and other["changed"] is True


@pytest.mark.skipif(not (os.path.exists("/bin/busybox") and art.shutil.which("dropbear", path="/usr/sbin")),
                    reason="needs busybox-static and dropbear-bin")
def test_initramfs_with_keys_carries_dropbear_and_its_libraries(fake_kernel, tmp_path):
    res = art.initramfs({"authorized_keys": ["ssh-ed25519 AAAA test"], "modules": []},
                        cache_dir=str(tmp_path / "cache"))
    listing = _cpio_listing(res["initramfs"])
    assert res["ssh"] is True and "usr/sbin/dropbear" in listing
    assert listing["root/.ssh/authorized_keys"] == "-rw-------"
    libs = [lib for lib in res["inputs"]["host_files"] if "/lib" in lib]
    assert libs and all(lib.lstrip("/") in listing for lib in libs)


def test_initramfs_src_files_must_exist(fake_kernel, tmp_path):
    with pytest.raises(art.ArtifactError, match="is not a file"):
        art.initramfs({"files": [{"path": "/x", "src": str(tmp_path / "missing")}]}, cache_dir=str(tmp_path))


def test_initramfs_check_mode_builds_nothing(fake_kernel, tmp_path):
    res = art.initramfs({}, cache_dir=str(tmp_path / "cache"), check=True)
    assert res["changed"] is True and not os.path.exists(res["path"])
