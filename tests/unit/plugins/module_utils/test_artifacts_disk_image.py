# -*- coding: utf-8 -*-
# Copyright: (c) 2026, gridops.metal developers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The disk_image kind's recipe and key (its build and boot are exercised by the Molecule scenarios)."""

from __future__ import absolute_import, division, print_function
__metaclass__ = type

import pytest

from ansible_collections.gridops.metal.plugins.module_utils import _artifacts as art


def test_defaults_and_the_rootfs_it_builds_on():
    recipe = art.normalize_recipe("disk_image", {"packages": ["lvm2", "lvm2"]})
    assert recipe["size"] == "4G" and recipe["interface"] == "eth0" and recipe["hostname"] == "gridops-guest"
    assert recipe["modules"] == list(art.DEFAULT_DISK_IMAGE_MODULES)
    rootfs = art.disk_rootfs_recipe(recipe)
    assert set(art.DISK_IMAGE_BASE_PACKAGES) | {"lvm2"} == set(rootfs["packages"])
    assert rootfs["variant"] == "minbase"
    # The same disk for the same recipe; another size, another disk.
    assert art.cache_key("disk_image", recipe) == art.cache_key("disk_image", art.normalize_recipe(
        "disk_image", {"packages": ["lvm2"], "size": "4G"}))
    assert art.cache_key("disk_image", recipe) != art.cache_key("disk_image", dict(recipe, size="8G"))
    assert art.normalize_recipe("disk_image", {"interface": ""})["interface"] == ""


@pytest.mark.parametrize("recipe, message", [
    ({"size": "4T"}, "size '4T' is not a number of M or G"),
    ({"size": "0G"}, "is not a number of M or G"),
    ({"hostname": "Bad_Host"}, "hostname 'Bad_Host' is not a host name"),
    ({"interface": "a/b"}, "interface 'a/b' is not an interface name"),
    ({"files": [{"path": "etc/x", "content": ""}]}, "absolute"),
    ({"kernel": "linux-image-amd64"}, "unknown option"),
])
def test_bad_recipes_are_refused(recipe, message):
    with pytest.raises(art.ArtifactError, match=message):
        art.normalize_recipe("disk_image", recipe)


def test_files_escaping_the_tree_are_refused(tmp_path):
    root = tmp_path / "root"
    (root / "etc").mkdir(parents=True)
    (root / "link").symlink_to(tmp_path)
    art._place_files(str(root), [{"path": "/etc/motd", "content": "hi\n", "mode": "0600"}])
    assert (root / "etc" / "motd").read_text() == "hi\n" and oct((root / "etc" / "motd").stat().st_mode)[-3:] == "600"
    with pytest.raises(art.ArtifactError, match="leave the image through a link"):
        art._place_files(str(root), [{"path": "/link/evil", "content": "x", "mode": "0644"}])
    assert not (tmp_path / "evil").exists()


def test_check_mode_builds_nothing(tmp_path, monkeypatch):
    monkeypatch.setattr(art, "rootfs", lambda recipe, cache_dir=None, force=False, check=False: {
        "key": "r" * 64, "changed": True})
    res = art.disk_image({}, cache_dir=str(tmp_path), check=True)
    assert res["changed"] is True and res["kind"] == "disk_image" and res["build_seconds"] is None
