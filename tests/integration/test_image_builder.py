"""image_builder, the environment registry and rights, on a deploy server container.

A small image (the systemd base that the container tests also use, so its
rootfs is shared and cached, plus files, a service and a first-boot script)
is built on the controller, copied, described and registered by the role,
with two existing images (a tar archive and a raw disk image, from the
controller).  Then the registry answers each user with what they may see,
refuses every kind of bad description naming the field and stays unchanged,
and the rights module works on the server.  Figures on FIGURES lines (pytest -s).
"""
import json
import time

import pytest
import yaml

from gridops_test import ansible_run, artifacts, environments, net
from gridops_test.pxe import PxeBed

SUBNET = "10.213.62"
IMAGES = "/var/lib/gridops-metal/images"
REGISTRY = "/var/lib/gridops-metal/registry.sqlite"
FAKE_KERNEL = "/boot/vmlinuz-gridops-test"

pytestmark = [pytest.mark.root, pytest.mark.slow]


def figures(label, **values):
    print("FIGURES %s %s" % (label, json.dumps(values, sort_keys=True)), flush=True)


def small_image():
    """The test image: no kernel package (a placeholder file stands for one: it is never booted)."""
    return {
        "name": "small",
        "version": 1,
        "description": "systemd base for tests",
        "author": "tests@gridops.invalid",
        "visibility": "public",
        "os": "debian12",
        "boot": {"kernel": FAKE_KERNEL, "params": "console=ttyS0"},
        "recipe": {
            "packages": list(artifacts.engine().CONTAINER_BASE_PACKAGES),
            "kernel": "",
            "files": [{"path": FAKE_KERNEL, "content": "a placeholder, not a kernel\n"},
                      {"path": "/etc/systemd/network/80-dhcp.network",
                       "content": "[Match]\nName=e*\n\n[Network]\nDHCP=yes\n"}],
            "services": ["systemd-networkd"],
            "first_boot": "#!/bin/sh\necho first boot > /var/log/gridops-first-boot\n",
        },
    }


@pytest.fixture(scope="module")
def bed(tmp_path_factory):
    image = environments.server_image()
    bed = PxeBed(tmp_path_factory.mktemp("images"), image["image"], subnet=SUBNET)
    try:
        yield bed
    finally:
        bed.close()


@pytest.fixture(scope="module")
def existing(tmp_path_factory):
    """Two images on the controller: a tar with a kernel and a raw disk image."""
    tmp = tmp_path_factory.mktemp("existing")
    tar, _sha = environments.tiny_image(tmp, name="tiny-tar", compression="gzip")
    raw = tmp / "disk.img"
    raw.write_bytes(b"\0" * 65536)
    return [
        {"name": "tiny-tar", "version": 2, "author": "tests", "os": "linux", "visibility": "private",
         "image": {"src": tar, "kind": "tar", "compression": "gzip"},
         "boot": {"kernel": "/vmlinuz", "initrd": "/initrd.img"}, "filesystem": "xfs"},
        {"name": "raw-disk", "author": "tests", "os": "other", "visibility": "shared",
         "image": {"src": str(raw), "kind": "dd", "compression": "none"}},
    ]


@pytest.fixture(scope="module")
def converged(bed, existing):
    extra = {"image_builder_images": [small_image()], "image_builder_existing": existing,
             "image_builder_owner": "alice"}

    def run():
        start = time.monotonic()
        res = ansible_run.playbook("environments.yml", bed.inventory, extra, args=["--tags", "images"], timeout=900)
        return res, round(time.monotonic() - start, 1)
    return [run(), run()]


def env_module(bed, args, ok=True, check=False):
    return environments.module("environment", dict({"registry": REGISTRY}, **args), inventory=bed.inventory,
                               host="pxe-server", ok=ok, check=check)


def registry_dump(bed):
    return bed.exec("python3", "-c", "import sqlite3; print('\\n'.join(sqlite3.connect(%r).iterdump()))"
                    % REGISTRY).stdout


def test_images_are_built_registered_and_idempotent(bed, converged):
    (first, first_s), (second, second_s) = converged
    assert second.changed() == 0, second
    built = artifacts.engine().image(small_image()["recipe"])
    assert built["changed"] is False
    figures("image_builder-converge", first_seconds=first_s, second_seconds=second_s)
    figures("image_builder-small-image", image_build_seconds=built["build_seconds"],
            rootfs_build_seconds=built["rootfs"]["build_seconds"], cached_call_seconds=built["seconds"],
            size=built["size"], packages=built["package_count"])
    listing = bed.exec("ls", IMAGES).stdout.split()
    assert "small-1-%s.tar.zst" % built["sha256"][:12] in listing
    assert {"small-1.yml", "tiny-tar-2.yml", "raw-disk-1.yml", "tiny-tar.tar.gz", "disk.img"} <= set(listing)
    desc = yaml.safe_load(bed.exec("cat", "%s/small-1.yml" % IMAGES).stdout)
    assert desc["image"]["sha256"] == built["sha256"] and desc["boot"]["kernel"] == FAKE_KERNEL
    # What the recipe put in: the first-boot unit and the service are enabled, the files there.
    names = bed.exec("sh", "-c", "zstd -dc %s/small-1-*.tar.zst | tar -t" % IMAGES, timeout=120).stdout.split()
    for wanted in ("./etc/systemd/system/multi-user.target.wants/gridops-first-boot.service",
                   "./etc/systemd/system/multi-user.target.wants/systemd-networkd.service",
                   "./usr/local/lib/gridops/first-boot", "." + FAKE_KERNEL):
        assert wanted in names


def test_listing_per_user(bed, converged):
    def names(user, owner=None):
        args = {"operation": "list", "user": user}
        if owner:
            args["owner"] = owner
        return sorted("%s/%s-%d" % (e["owner"], e["name"], e["version"]) for e in env_module(bed, args)["environments"])

    assert names("alice") == ["alice/raw-disk-1", "alice/small-1", "alice/tiny-tar-2"]
    assert names("bob") == ["alice/small-1"]
    assert names("bob", owner="alice") == ["alice/raw-disk-1", "alice/small-1"]
    shown = env_module(bed, {"operation": "show", "name": "raw-disk", "owner": "alice", "user": "bob"})
    assert shown["environment"]["image"]["kind"] == "dd"
    hidden = env_module(bed, {"operation": "show", "name": "tiny-tar", "owner": "alice", "user": "bob"}, ok=False)
    assert hidden["field"] == "name"


def _bad_cases(bed):
    small = yaml.safe_load(bed.exec("cat", "%s/small-1.yml" % IMAGES).stdout)
    image = small["image"]

    def variant(**change):
        desc = json.loads(json.dumps(small))
        desc["name"] = "bad-%s" % net.run_suffix()
        for key, value in change.items():
            if value is None:
                desc.pop(key)
            else:
                desc[key] = value
        return desc

    return [
        ("missing field", variant(image={k: v for k, v in image.items() if k != "sha256"}), "image.sha256",
         "required field missing"),
        ("mistyped field name", variant(imgae=image, image=None), "image", "required field missing"),
        ("mistyped value", variant(version="2"), "version", "must be an integer"),
        ("checksum mismatch", variant(image=dict(image, sha256="0" * 64)), "image.sha256", "checksum mismatch"),
        ("kernel absent from the image", variant(boot={"kernel": "/boot/vmlinuz-absent"}), "boot.kernel",
         "is not in the image"),
        ("duplicate name/version", dict(small, description="another content"), "version", "duplicate name/version"),
    ]


def test_bad_descriptions_are_refused_naming_the_field(bed, converged):
    before = registry_dump(bed)
    for case, desc, field, message in _bad_cases(bed):
        res = env_module(bed, {"description": desc, "user": "alice"}, ok=False)
        assert res["field"] == field, (case, res["msg"])
        assert message in res["msg"], (case, res["msg"])
    assert registry_dump(bed) == before


def test_update_check_mode_and_remove(bed, converged):
    small = yaml.safe_load(bed.exec("cat", "%s/small-1.yml" % IMAGES).stdout)
    before = registry_dump(bed)
    # The description file the role wrote is a valid input, and the same environment.
    same = env_module(bed, {"src": "%s/small-1.yml" % IMAGES, "user": "alice"})
    assert same["changed"] is False and same["environment"]["version"] == 1
    newer = dict((k, v) for k, v in small.items() if k != "version")
    planned = env_module(bed, {"operation": "update", "description": dict(newer, description="v2"), "user": "alice"},
                         check=True)
    assert planned["changed"] is True and planned["environment"]["version"] == 2
    assert registry_dump(bed) == before
    gone = env_module(bed, {"operation": "remove", "name": "raw-disk", "user": "alice"})
    assert gone["changed"] is True and [e["version"] for e in gone["removed"]] == [1]
    assert env_module(bed, {"operation": "remove", "name": "raw-disk", "user": "alice"})["changed"] is False


def test_rights_on_the_server(bed):
    def rights(args, ok=True):
        return environments.module("rights", dict({"registry": REGISTRY}, **args), inventory=bed.inventory,
                                   host="pxe-server", ok=ok)

    granted = rights({"user": "alice", "nodes": ["node-[1-8]!node-3"], "expires": "2099-01-01T00:00:00Z",
                      "origin": "test"})
    assert granted["changed"] is True and granted["rights"][0]["nodes"] == "node-[1-2,4-8]"
    assert rights({"user": "alice", "nodes": ["node-[1-8]!node-3"], "expires": "2099-01-01T00:00:00Z",
                   "origin": "test"})["changed"] is False
    check = rights({"operation": "check", "user": "alice", "nodes": ["node-[1-4]"]})
    assert check["allowed"] is False and check["denied"] == "node-3"
    refused = rights({"user": "alice", "nodes": ["node-[1-"]}, ok=False)
    assert refused["field"] == "nodes"
    refused = rights({"user": "alice", "nodes": ["node-1"], "expires": "2001-01-01T00:00:00Z"}, ok=False)
    assert refused["field"] == "expires"
    assert rights({"operation": "revoke", "user": "alice"})["changed"] is True
