"""Deployment rights: node ranges, partitions, expiry, transactions."""
import datetime
import sqlite3

import pytest

from ansible_collections.gridops.metal.plugins.module_utils import _rights as rights
from ansible_collections.gridops.metal.plugins.module_utils._registry import Refused, Registry

NOW = datetime.datetime(2026, 5, 1, 12, 0, 0, tzinfo=datetime.timezone.utc)
LATER = "2026-05-01T18:00:00Z"


@pytest.fixture
def registry(tmp_path):
    reg = Registry(str(tmp_path / "registry.sqlite"))
    yield reg
    reg.close()


def dump(reg):
    conn = sqlite3.connect(reg.path)
    try:
        return list(conn.iterdump())
    finally:
        conn.close()


def at(hours):
    return NOW + datetime.timedelta(hours=hours)


def test_grant_expands_ranges_and_lists_them_folded(registry):
    res = rights.grant(registry, "alice", ["node-[1-8]!node-3", "gpu-1"], expires=LATER, origin="oar:42", now=NOW)
    assert res["changed"] is True
    assert res["rights"] == [
        {"user": "alice", "nodes": "gpu-1,node-[1-2,4-8]", "node_count": 8, "partition": "*",
         "expires": LATER, "expired": False, "origin": "oar:42"}]
    with registry.transaction() as conn:
        assert conn.execute("SELECT COUNT(*) FROM rights").fetchone()[0] == 8


def test_grant_is_idempotent_and_updates_expiry(registry):
    rights.grant(registry, "alice", ["node-[1-4]"], expires=LATER, now=NOW)
    assert rights.grant(registry, "alice", ["node-[1-4]"], expires=LATER, now=NOW)["changed"] is False
    # Epoch seconds and another offset for the same instant are the same expiry.
    same = int(datetime.datetime(2026, 5, 1, 18, tzinfo=datetime.timezone.utc).timestamp())
    assert rights.grant(registry, "alice", ["node-[1-4]"], expires=str(same), now=NOW)["changed"] is False
    assert rights.grant(registry, "alice", ["node-[1-4]"], expires="2026-05-01T20:00:00+02:00",
                        now=NOW)["changed"] is False
    longer = rights.grant(registry, "alice", ["node-[1-4]"], expires="2026-05-02T00:00:00Z", now=NOW)
    assert longer["changed"] is True and longer["rights"][0]["expires"] == "2026-05-02T00:00:00Z"
    assert "2026-05-01T18:00:00Z" in longer["diff"]["before"] and "2026-05-02" in longer["diff"]["after"]
    forever = rights.grant(registry, "alice", ["node-[1-4]"], now=NOW)
    assert forever["changed"] is True and forever["rights"][0]["expires"] is None


def test_expired_rights_give_nothing(registry):
    rights.grant(registry, "alice", ["node-[1-2]"], expires=LATER, now=NOW)
    assert rights.check(registry, "alice", ["node-[1-2]"], now=at(1))["allowed"] is True
    late = rights.check(registry, "alice", ["node-[1-2]"], now=at(6))
    assert late["allowed"] is False and late["denied"] == "node-[1-2]"
    assert rights.list_rights(registry, "alice", now=at(7)) == []
    listed = rights.list_rights(registry, "alice", include_expired=True, now=at(7))
    assert listed[0]["expired"] is True
    # Expired rights stay until revoked; revoke(expired=True) drops only those.
    rights.grant(registry, "bob", ["node-3"], now=NOW)
    dropped = rights.revoke(registry, expired=True, now=at(7))
    assert dropped["changed"] is True and dropped["revoked"][0]["nodes"] == "node-[1-2]"
    assert rights.list_rights(registry, include_expired=True, now=at(7))[0]["user"] == "bob"


def test_an_expiry_in_the_past_or_without_zone_is_refused(registry):
    for expires, message in ((NOW.isoformat(), "in the past"), ("2020-01-01T00:00:00Z", "in the past"),
                             ("2026-05-02T00:00:00", "no time zone"), ("tomorrow", "not a date and time")):
        with pytest.raises(Refused) as err:
            rights.grant(registry, "alice", ["node-1"], expires=expires, now=NOW)
        assert err.value.field == "expires" and message in str(err.value)
    assert rights.list_rights(registry, now=NOW) == []


def test_partitions(registry):
    rights.grant(registry, "alice", ["node-[1-2]"], partitions=["tmp"], now=NOW)
    assert rights.check(registry, "alice", ["node-1"], partition="tmp", now=NOW)["allowed"] is True
    assert rights.check(registry, "alice", ["node-1"], partition="deploy", now=NOW)["allowed"] is False
    # The whole disk needs '*'.
    assert rights.check(registry, "alice", ["node-1"], now=NOW)["allowed"] is False
    rights.grant(registry, "alice", ["node-1"], now=NOW)
    assert rights.check(registry, "alice", ["node-1"], partition="deploy", now=NOW)["allowed"] is True
    assert rights.check(registry, "alice", ["node-1"], now=NOW)["allowed"] is True
    listed = rights.list_rights(registry, "alice", now=NOW)
    assert [(r["nodes"], r["partition"]) for r in listed] == [("node-1", "*"), ("node-[1-2]", "tmp")]


def test_revoke_part_of_a_range(registry):
    rights.grant(registry, "alice", ["node-[1-8]"], partitions=["*", "tmp"], now=NOW)
    res = rights.revoke(registry, "alice", ["node-[3-4]"], partitions=["tmp"], now=NOW)
    assert res["changed"] is True
    assert [(r["nodes"], r["partition"]) for r in res["rights"]] == [("node-[1-8]", "*"), ("node-[1-2,5-8]", "tmp")]
    assert rights.revoke(registry, "alice", ["node-[3-4]"], partitions=["tmp"], now=NOW)["changed"] is False
    everything = rights.revoke(registry, "alice", now=NOW)
    assert everything["changed"] is True and everything["rights"] == []


def test_other_users_are_not_touched(registry):
    rights.grant(registry, "alice", ["node-[1-2]"], now=NOW)
    rights.grant(registry, "bob", ["node-[1-2]"], now=NOW)
    rights.revoke(registry, "alice", now=NOW)
    assert rights.check(registry, "bob", ["node-[1-2]"], now=NOW)["allowed"] is True
    assert [r["user"] for r in rights.list_rights(registry, nodes=["node-1"], now=NOW)] == ["bob"]


@pytest.mark.parametrize("kwargs, field", [
    ({"user": "alice smith"}, "user"),
    ({"user": ""}, "user"),
    ({"nodes": ["node-[1-"]}, "nodes"),
    ({"nodes": ["node-[3-1]"]}, "nodes"),
    ({"nodes": ["@compute"]}, "nodes"),
    ({"nodes": []}, "nodes"),
    ({"partitions": ["a b"]}, "partitions"),
    ({"partitions": [3]}, "partitions"),
    ({"origin": 42}, "origin"),
])
def test_bad_grants_are_refused_naming_the_field_and_change_nothing(registry, kwargs, field):
    rights.grant(registry, "carol", ["node-9"], now=NOW)
    before = dump(registry)
    args = dict(user="alice", nodes=["node-[1-2]"], now=NOW)
    args.update(kwargs)
    with pytest.raises(Refused) as err:
        rights.grant(registry, **args)
    assert err.value.field == field, str(err.value)
    assert dump(registry) == before


def test_revoke_needs_a_user_unless_expired(registry):
    with pytest.raises(Refused) as err:
        rights.revoke(registry, now=NOW)
    assert err.value.field == "user"


def test_check_mode_rolls_back(tmp_path):
    path = str(tmp_path / "registry.sqlite")
    with Registry(path) as reg:
        rights.grant(reg, "alice", ["node-1"], now=NOW)
        before = dump(reg)
    with Registry(path, check=True) as reg:
        assert rights.grant(reg, "alice", ["node-[1-3]"], now=NOW)["changed"] is True
        assert rights.revoke(reg, "alice", now=NOW)["changed"] is True
    with Registry(path) as reg:
        assert dump(reg) == before


def test_time_parsing():
    utc = datetime.timezone.utc
    assert rights.parse_time("2026-05-01T12:00:00Z") == NOW
    assert rights.parse_time("2026-05-01 14:00:00+02:00") == NOW
    assert rights.parse_time(int(NOW.timestamp())) == NOW
    assert rights.parse_time(str(NOW.timestamp())) == NOW
    assert rights.parse_time(None) is None and rights.parse_time("") is None
    assert rights.parse_time(datetime.datetime(2026, 5, 1, 12, 0, 0, 500, tzinfo=utc)) == NOW
    with pytest.raises(Refused):
        rights.parse_time(True)
