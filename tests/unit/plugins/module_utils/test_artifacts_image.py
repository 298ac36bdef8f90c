# -*- coding: utf-8 -*-
# Copyright: (c) 2026, gridops.metal developers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The artifact engine's ``image`` kind: recipes, keys, and the files it writes into a tree."""

from __future__ import absolute_import, division, print_function
__metaclass__ = type

import os

import pytest

from ansible_collections.gridops.metal.plugins.module_utils import _artifacts as art


def test_image_defaults():
    recipe = art.normalize_recipe("image", {})
    assert recipe["kernel"] == "linux-image-amd64" and recipe["compression"] == "zstd"
    assert recipe["variant"] == "minbase" and recipe["services"] == [] and recipe["first_boot"] == ""


def test_an_image_shares_its_rootfs_with_the_container_image_of_the_same_packages():
    packages = list(art.CONTAINER_BASE_PACKAGES)
    image = art.image_rootfs_recipe(art.normalize_recipe("image", {"packages": packages, "kernel": ""}))
    container = art.container_rootfs_recipe(art.normalize_recipe("container_image", {}))
    assert art.cache_key("rootfs", art.normalize_recipe("rootfs", image)) == \
        art.cache_key("rootfs", art.normalize_recipe("rootfs", container))


def test_the_kernel_package_joins_the_rootfs_packages():
    recipe = art.image_rootfs_recipe(art.normalize_recipe("image", {"packages": ["openssh-server"]}))
    assert recipe["packages"] == ["linux-image-amd64", "openssh-server"]


@pytest.mark.parametrize("recipe, message", [
    ({"compression": "bzip2"}, "one of"),
    ({"kernel": "linux image"}, "not a package name"),
    ({"services": ["ssh; rm -rf /"]}, "not a systemd unit name"),
    ({"services": "ssh"}, "list of strings"),
    ({"first_boot": ["echo"]}, "must be a string"),
    ({"files": [{"path": "relative", "content": ""}]}, "absolute"),
    ({"pakages": []}, "unknown option"),
])
def test_bad_image_recipes_are_refused(recipe, message):
    with pytest.raises(art.ArtifactError, match=message):
        art.normalize_recipe("image", recipe)


def test_files_stay_inside_the_tree(tmp_path):
    root = tmp_path / "root"
    (root / "etc").mkdir(parents=True)
    (root / "lib").symlink_to("usr/lib")
    (root / "usr" / "lib").mkdir(parents=True)
    (root / "etc" / "resolv.conf").symlink_to("/run/resolv.conf")
    (root / "escape").symlink_to(str(tmp_path / "outside"))
    files = art.normalize_recipe("image", {"files": [
        {"path": "/etc/motd", "content": "hi\n"},
        {"path": "/lib/x.conf", "content": "through a relative link\n", "mode": "0600"},
        {"path": "/etc/resolv.conf", "content": "nameserver 10.0.0.1\n"},
    ]})["files"]
    art._place_files(str(root), files)
    assert (root / "etc" / "motd").read_text() == "hi\n"
    assert (root / "usr" / "lib" / "x.conf").stat().st_mode & 0o777 == 0o600
    # A link in place of a file is replaced, not followed.
    assert not (root / "etc" / "resolv.conf").is_symlink()
    for path in ("/escape/x", "/etc"):
        bad = art.normalize_recipe("image", {"files": [{"path": path, "content": ""}]})["files"]
        with pytest.raises(art.ArtifactError, match="directory or leave the image"):
            art._place_files(str(root), bad)
    assert not os.path.exists(tmp_path / "outside")


def test_check_mode_builds_nothing(tmp_path, monkeypatch):
    calls = []

    def fake_rootfs(recipe, cache_dir=None, force=False, check=False):
        calls.append(check)
        return {"key": "r" * 64, "changed": True}
    monkeypatch.setattr(art, "rootfs", fake_rootfs)
    res = art.image({"kernel": ""}, cache_dir=str(tmp_path), check=True)
    assert calls == [True] and res["changed"] is True and not os.path.exists(res["path"])
