"""Environment descriptions (schema, validation) and the environment registry."""
import copy
import json
import os
import pathlib
import sqlite3

import pytest
import yaml

from ansible_collections.gridops.metal.plugins.module_utils import _environments as envs
from ansible_collections.gridops.metal.plugins.module_utils import _registry
from ansible_collections.gridops.metal.plugins.module_utils._registry import Refused, Registry
from gridops_test.environments import description, schema_json, tiny_image

HERE = pathlib.Path(__file__).parent
REPO = HERE.parents[3]
CASES = yaml.safe_load((HERE / "test_environments.yaml").read_text())


def patched(case):
    desc = copy.deepcopy(CASES["base"])

    def merge(into, patch):
        for key, value in patch.items():
            if value is None:
                into.pop(key, None)
            elif isinstance(value, dict) and isinstance(into.get(key), dict):
                merge(into[key], value)
            else:
                into[key] = value
    merge(desc, case.get("set", {}))
    for dotted in case.get("unset", []):
        *parents, last = dotted.split(".")
        node = desc
        for part in parents:
            node = node[part]
        node.pop(last)
    return desc


def dump(path):
    """Every row of every table, to compare a registry before and after a refused call."""
    conn = sqlite3.connect(path)
    try:
        return list(conn.iterdump())
    finally:
        conn.close()


# --------------------------------------------------------------------------
# Schema


def test_published_schema_is_current():
    published = (REPO / "docs" / "environment.schema.json").read_text()
    assert published == schema_json(), \
        "regenerate it: tests/lib/gridops_test/environments.py schema > docs/environment.schema.json"


def test_published_schema_is_a_valid_json_schema():
    jsonschema = pytest.importorskip("jsonschema")
    jsonschema.Draft202012Validator.check_schema(envs.SCHEMA)


@pytest.mark.parametrize("case", CASES["valid"], ids=[c["case"] for c in CASES["valid"]])
def test_valid_descriptions(case):
    desc = patched(case)
    assert envs.validate(desc) == []
    normalized = envs.normalize(desc)
    for key, value in case.get("expect", {}).items():
        assert normalized[key] == value
    jsonschema = pytest.importorskip("jsonschema")
    jsonschema.validate(desc, envs.SCHEMA, cls=jsonschema.Draft202012Validator)


@pytest.mark.parametrize("case", CASES["invalid"], ids=[c["case"] for c in CASES["invalid"]])
def test_invalid_descriptions_are_refused_naming_the_field(case):
    desc = patched(case)
    with pytest.raises(Refused) as err:
        envs.normalize(desc)
    assert err.value.field == case["field"], str(err.value)
    assert str(err.value).startswith(case["field"] + ": ")
    assert case["message"] in str(err.value)
    # The published schema refuses it too.
    jsonschema = pytest.importorskip("jsonschema")
    assert list(jsonschema.Draft202012Validator(envs.SCHEMA).iter_errors(desc))


def test_every_problem_is_named_at_once():
    desc = patched({"set": {"imgae": 1, "version": "x"}, "unset": ["author"]})
    with pytest.raises(Refused) as err:
        envs.normalize(desc)
    assert [f for f, _m in err.value.errors] == ["author", "imgae", "version"]


def test_a_description_that_is_not_a_mapping():
    with pytest.raises(Refused) as err:
        envs.normalize(["name", "debian12"])
    assert "must be a mapping" in str(err.value)


# --------------------------------------------------------------------------
# The image on the deploy server


@pytest.mark.parametrize("compression", ["zstd", "gzip", "xz", "none"])
def test_tar_images_of_every_compression_are_verified(tmp_path, compression):
    path, sha = tiny_image(tmp_path, compression=compression)
    desc = envs.normalize(description(path, sha, compression=compression))
    assert envs.verify_image(desc) == os.path.getsize(path)


def test_kernel_links_are_followed_and_dangling_ones_refused(tmp_path):
    path, sha = tiny_image(tmp_path)
    for kernel in ("/vmlinuz", "/boot/vmlinuz-6.1.0-99-amd64", "/boot/../vmlinuz"):
        envs.verify_image(envs.normalize(description(path, sha, boot={"kernel": kernel})))
    for kernel, field in (("/dangling", "boot.kernel"), ("/boot", "boot.kernel"), ("/boot/vmlinuz", "boot.kernel")):
        with pytest.raises(Refused) as err:
            envs.verify_image(envs.normalize(description(path, sha, boot={"kernel": kernel})))
        assert err.value.field == field
    with pytest.raises(Refused) as err:
        envs.verify_image(envs.normalize(description(path, sha, boot={"kernel": "/vmlinuz", "initrd": "/initrd"})))
    assert err.value.field == "boot.initrd" and "/initrd is not in the image" in str(err.value)


@pytest.mark.parametrize("change, field, message", [
    ({"sha256": "0" * 64}, "image.sha256", "checksum mismatch"),
    ({"compression": "gzip"}, "image.compression", "is not gzip-compressed (it looks zstd-compressed)"),
    ({"compression": "none"}, "image.compression", "is zstd-compressed, the description says none"),
    ({"file": "/nonexistent/x.tar.zst"}, "image.file", "no such file on the deploy server"),
    ({"size": 3}, "image.size", "the description says 3"),
])
def test_image_checks(tmp_path, change, field, message):
    path, sha = tiny_image(tmp_path)
    desc = description(path, sha)
    desc["image"].update(change)
    with pytest.raises(Refused) as err:
        envs.verify_image(envs.normalize(desc))
    assert err.value.field == field and message in str(err.value)


def test_a_raw_image_is_not_a_tar(tmp_path):
    raw = tmp_path / "disk.img"
    raw.write_bytes(b"\0" * 4096)
    sha = envs.sha256_file(str(raw))
    dd = description(str(raw), sha, compression="none")
    dd["image"]["kind"] = "dd"
    del dd["boot"], dd["filesystem"]
    assert envs.verify_image(envs.normalize(dd)) == 4096
    tar = description(str(raw), sha, compression="none")
    with pytest.raises(Refused) as err:
        envs.verify_image(envs.normalize(tar))
    assert err.value.field == "image.kind"


def test_postinstall_scripts_must_exist(tmp_path):
    path, sha = tiny_image(tmp_path)
    hook = tmp_path / "hook.sh"
    hook.write_text("#!/bin/sh\n")
    envs.verify_image(envs.normalize(description(path, sha, postinstall=[{"script": str(hook)}])))
    with pytest.raises(Refused) as err:
        envs.verify_image(envs.normalize(description(path, sha, postinstall=[
            {"script": str(hook)}, {"script": str(tmp_path / "missing.sh")}])))
    assert err.value.field == "postinstall[1].script"


# --------------------------------------------------------------------------
# The registry


@pytest.fixture
def image(tmp_path):
    path, sha = tiny_image(tmp_path / "images")
    return {"path": path, "sha256": sha}


@pytest.fixture
def registry(tmp_path):
    path = str(tmp_path / "registry" / "registry.sqlite")
    reg = Registry(path)
    yield reg
    reg.close()


def test_registry_layout_is_migrated_once(registry):
    with registry.transaction() as conn:
        assert conn.execute("PRAGMA user_version").fetchone()[0] == _registry.SCHEMA_VERSION
        tables = set(r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'"))
    assert {"environments", "rights"} <= tables
    with registry.transaction():
        pass


def test_a_newer_registry_is_refused(tmp_path):
    path = str(tmp_path / "new.sqlite")
    conn = sqlite3.connect(path)
    conn.execute("PRAGMA user_version = %d" % (_registry.SCHEMA_VERSION + 1))
    conn.close()
    with Registry(path) as reg, pytest.raises(_registry.RegistryError) as err:
        envs.list_environments(reg, "alice")
    assert "newer than this collection's" in str(err.value)


def test_not_a_database(tmp_path):
    path = tmp_path / "junk.sqlite"
    path.write_bytes(b"not a database, really" * 100)
    with Registry(str(path)) as reg, pytest.raises(_registry.RegistryError):
        envs.list_environments(reg, "alice")


def test_add_is_idempotent_and_records_owner_size_and_time(registry, image):
    desc = description(image["path"], image["sha256"])
    first = envs.add(registry, desc, "alice")
    assert first["changed"] is True
    env = first["environment"]
    assert (env["name"], env["version"], env["owner"], env["visibility"]) == ("tiny", 1, "alice", "private")
    assert env["image"]["size"] == os.path.getsize(image["path"])
    assert env["registered"].endswith("Z")
    again = envs.add(registry, desc, "alice")
    assert again["changed"] is False and again["environment"] == env


def test_duplicate_name_and_version_is_refused_and_registry_unchanged(registry, image):
    envs.add(registry, description(image["path"], image["sha256"]), "alice")
    before = dump(registry.path)
    with pytest.raises(Refused) as err:
        envs.add(registry, description(image["path"], image["sha256"], description="another text"), "alice")
    assert err.value.field == "version" and "duplicate name/version" in str(err.value)
    assert dump(registry.path) == before
    # Another owner may use the same name and version.
    assert envs.add(registry, description(image["path"], image["sha256"], description="bob's"), "bob")["changed"]


@pytest.mark.parametrize("change, field", [
    ({"image": {"sha256": "f" * 64}}, "image.sha256"),
    ({"boot": {"kernel": "/boot/vmlinuz-0.0"}}, "boot.kernel"),
    ({"imgae": {}}, "imgae"),
    ({"postinstall": [{"script": "/nonexistent/hook.sh"}]}, "postinstall[0].script"),
])
def test_refused_adds_leave_the_registry_unchanged(registry, image, change, field):
    envs.add(registry, description(image["path"], image["sha256"]), "alice")
    before = dump(registry.path)
    desc = description(image["path"], image["sha256"], name="other")
    for key, value in change.items():
        desc[key] = dict(desc[key], **value) if isinstance(desc.get(key), dict) else value
    with pytest.raises(Refused) as err:
        envs.add(registry, desc, "alice")
    assert err.value.field == field
    assert dump(registry.path) == before


def test_a_failure_inside_the_transaction_rolls_everything_back(registry, image, monkeypatch):
    envs.add(registry, description(image["path"], image["sha256"]), "alice")
    before = dump(registry.path)

    def broken(row):
        raise RuntimeError("disk on fire")
    monkeypatch.setattr(envs, "_record", broken)
    with pytest.raises(RuntimeError):
        envs.add(registry, description(image["path"], image["sha256"], name="second"), "alice")
    assert dump(registry.path) == before


def test_update_makes_new_versions(registry, image):
    desc = description(image["path"], image["sha256"])
    with pytest.raises(Refused) as err:
        envs.add(registry, desc, "alice", update=True)
    assert err.value.field == "name" and "add it first" in str(err.value)
    envs.add(registry, desc, "alice")
    same = envs.add(registry, desc, "alice", update=True)
    assert same["changed"] is False and same["environment"]["version"] == 1
    v2 = envs.add(registry, dict(desc, description="second"), "alice", update=True)
    assert v2["changed"] is True and v2["environment"]["version"] == 2
    assert '"version": 1' in v2["diff"]["before"] and '"version": 2' in v2["diff"]["after"]
    with pytest.raises(Refused) as err:
        envs.add(registry, dict(desc, description="third", version=2), "alice", update=True)
    assert err.value.field == "version"
    with pytest.raises(Refused) as err:
        envs.add(registry, dict(desc, description="old", version=1), "alice", update=True)
    assert err.value.field == "version"
    v5 = envs.add(registry, dict(desc, description="fifth", version=5), "alice", update=True)
    assert v5["environment"]["version"] == 5
    assert [e["version"] for e in envs.list_environments(registry, "alice", all_versions=True)] == [1, 2, 5]


def test_visibility_per_user(registry, image):
    def add(name, owner, visibility):
        envs.add(registry, description(image["path"], image["sha256"], name=name, visibility=visibility), owner)

    add("a-private", "alice", "private")
    add("a-shared", "alice", "shared")
    add("a-public", "alice", "public")
    add("b-private", "bob", "private")

    def names(user, owner=None):
        return sorted("%s/%s" % (e["owner"], e["name"]) for e in envs.list_environments(registry, user, owner=owner))

    assert names("alice") == ["alice/a-private", "alice/a-public", "alice/a-shared"]
    assert names("bob") == ["alice/a-public", "bob/b-private"]
    assert names("bob", owner="alice") == ["alice/a-public", "alice/a-shared"]
    assert names("carol") == ["alice/a-public"]
    assert names("alice", owner="bob") == []
    assert envs.show(registry, "a-shared", "bob", owner="alice")["owner"] == "alice"
    for name, owner in (("a-shared", None), ("a-private", None), ("a-private", "alice"), ("b-private", "bob")):
        with pytest.raises(Refused) as err:
            envs.show(registry, name, "carol", owner=owner)
        assert err.value.field == "name" and "visible to carol" in str(err.value)
    assert envs.show(registry, "a-public", "carol")["owner"] == "alice"


def test_show_prefers_ones_own_and_refuses_ambiguous_public_names(registry, image):
    for owner in ("alice", "bob"):
        envs.add(registry, description(image["path"], image["sha256"], visibility="public",
                                       description=owner), owner)
    assert envs.show(registry, "tiny", "alice")["description"] == "alice"
    with pytest.raises(Refused) as err:
        envs.show(registry, "tiny", "carol")
    assert err.value.field == "owner" and "alice, bob" in str(err.value)
    assert envs.show(registry, "tiny", "carol", owner="bob")["description"] == "bob"


def test_list_latest_versions_and_show_a_version(registry, image):
    desc = description(image["path"], image["sha256"], visibility="public")
    envs.add(registry, desc, "alice")
    envs.add(registry, dict(desc, description="v2"), "alice", update=True)
    assert [e["version"] for e in envs.list_environments(registry, "bob")] == [2]
    assert envs.show(registry, "tiny", "bob")["version"] == 2
    assert envs.show(registry, "tiny", "bob", version=1)["version"] == 1
    with pytest.raises(Refused):
        envs.show(registry, "tiny", "bob", version=3)


def test_remove_a_version_then_all(registry, image):
    desc = description(image["path"], image["sha256"])
    envs.add(registry, desc, "alice")
    envs.add(registry, dict(desc, description="v2"), "alice", update=True)
    envs.add(registry, desc, "bob")
    assert envs.remove(registry, "tiny", "alice", version=1)["changed"] is True
    assert envs.remove(registry, "tiny", "alice", version=1)["changed"] is False
    gone = envs.remove(registry, "tiny", "alice")
    assert [e["version"] for e in gone["removed"]] == [2]
    assert envs.list_environments(registry, "alice") == []
    assert len(envs.list_environments(registry, "bob")) == 1


def test_bad_user_names_are_refused(registry, image):
    for call in (lambda: envs.add(registry, description(image["path"], image["sha256"]), "al ice"),
                 lambda: envs.list_environments(registry, ""),
                 lambda: envs.remove(registry, "tiny", "alice;rm")):
        with pytest.raises(Refused) as err:
            call()
        assert err.value.field == "user"
    with pytest.raises(Refused) as err:
        envs.list_environments(registry, "alice", owner="../bob")
    assert err.value.field == "owner"


def test_check_mode_predicts_without_writing(tmp_path, image):
    path = str(tmp_path / "reg" / "registry.sqlite")
    desc = description(image["path"], image["sha256"])
    with Registry(path, check=True) as reg:
        assert envs.add(reg, desc, "alice")["changed"] is True
    assert not os.path.exists(path)
    with Registry(path) as reg:
        envs.add(reg, desc, "alice")
    before = dump(path)
    with Registry(path, check=True) as reg:
        assert envs.add(reg, dict(desc, description="v2"), "alice", update=True)["environment"]["version"] == 2
        assert envs.remove(reg, "tiny", "alice")["changed"] is True
        with pytest.raises(Refused):
            envs.add(reg, dict(desc, image=dict(desc["image"], sha256="0" * 64), name="bad"), "alice")
    assert dump(path) == before


def test_records_survive_reopening(tmp_path, image):
    path = str(tmp_path / "registry.sqlite")
    with Registry(path) as reg:
        env = envs.add(reg, description(image["path"], image["sha256"]), "alice")["environment"]
    with Registry(path) as reg:
        assert envs.show(reg, "tiny", "alice") == env
    assert json.loads(json.dumps(env)) == env
