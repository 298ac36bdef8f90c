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


def _rows(reg, user="alice"):
    with reg.transaction() as conn:
        return [(r["node"], r["partition"], r["expires"], r["origin"])
                for r in conn.execute("SELECT * FROM rights WHERE user = ? ORDER BY node, origin", (user,))]


def test_a_permanent_right_survives_a_job_grant_and_its_revoke(registry):
    rights.grant(registry, "alice", ["node-[1-2]"], now=NOW)  # the operator's: no end, no origin
    job = rights.grant(registry, "alice", ["node-[1-3]"], expires=LATER, origin="oar:42", now=NOW)
    assert job["changed"] is True
    assert _rows(registry) == [("node-1", "*", None, None), ("node-1", "*", LATER, "oar:42"),
                               ("node-2", "*", None, None), ("node-2", "*", LATER, "oar:42"),
                               ("node-3", "*", LATER, "oar:42")]
    # The job's end revokes its origin only.
    end = rights.revoke(registry, "alice", origin="oar:42", now=NOW)
    assert end["changed"] is True and [r["nodes"] for r in end["revoked"]] == ["node-[1-3]"]
    assert _rows(registry) == [("node-1", "*", None, None), ("node-2", "*", None, None)]
    # Long after the job's walltime, the operator's right still holds.
    assert rights.check(registry, "alice", ["node-[1-2]"], now=at(24 * 365))["allowed"] is True
    assert rights.check(registry, "alice", ["node-3"], now=at(1))["allowed"] is False


def test_the_end_of_one_job_leaves_the_right_of_another_job_on_the_same_node(registry):
    rights.grant(registry, "alice", ["node-[1-2]"], expires=LATER, origin="oar:1", now=NOW)
    rights.grant(registry, "alice", ["node-[2-3]"], expires="2026-05-01T20:00:00Z", origin="oar:2", now=NOW)
    rights.revoke(registry, "alice", origin="oar:1", now=at(1))
    assert _rows(registry) == [("node-2", "*", "2026-05-01T20:00:00Z", "oar:2"),
                               ("node-3", "*", "2026-05-01T20:00:00Z", "oar:2")]
    assert rights.check(registry, "alice", ["node-[2-3]"], now=at(7))["allowed"] is True
    assert rights.check(registry, "alice", ["node-1"], now=at(1))["allowed"] is False
    # The other order: the second job ends first, the first one's right (ending earlier) stays as it was.
    rights.grant(registry, "alice", ["node-2"], expires=LATER, origin="oar:1", now=NOW)
    rights.revoke(registry, "alice", origin="oar:2", now=at(1))
    assert _rows(registry) == [("node-2", "*", LATER, "oar:1")]
    assert rights.check(registry, "alice", ["node-2"], now=at(7))["allowed"] is False


def test_an_expiry_is_extended_never_shortened(registry):
    rights.grant(registry, "alice", ["node-1"], expires="2026-05-01T20:00:00Z", origin="oar:1", now=NOW)
    shorter = rights.grant(registry, "alice", ["node-1"], expires=LATER, origin="oar:1", now=NOW)
    assert shorter["changed"] is False and _rows(registry) == [("node-1", "*", "2026-05-01T20:00:00Z", "oar:1")]
    longer = rights.grant(registry, "alice", ["node-1"], expires="2026-05-02T00:00:00Z", origin="oar:1", now=NOW)
    assert longer["changed"] is True and _rows(registry) == [("node-1", "*", "2026-05-02T00:00:00Z", "oar:1")]
    # No end is the longest; nothing with an end shortens it.
    assert rights.grant(registry, "alice", ["node-1"], origin="oar:1", now=NOW)["changed"] is True
    assert rights.grant(registry, "alice", ["node-1"], expires=LATER, origin="oar:1", now=NOW)["changed"] is False
    assert _rows(registry) == [("node-1", "*", None, "oar:1")]
    # An expired right of the origin is renewed by a new grant.
    rights.grant(registry, "bob", ["node-1"], expires=LATER, origin="oar:3", now=NOW)
    renewed = rights.grant(registry, "bob", ["node-1"], expires="2026-05-02T06:00:00Z", origin="oar:3", now=at(7))
    assert renewed["changed"] is True and _rows(registry, "bob") == [("node-1", "*", "2026-05-02T06:00:00Z", "oar:3")]


def test_revoke_without_an_origin_drops_every_origin_and_none_is_the_operators(registry):
    rights.grant(registry, "alice", ["node-1"], now=NOW)
    rights.grant(registry, "alice", ["node-1"], expires=LATER, origin="oar:1", now=NOW)
    assert rights.revoke(registry, "alice", origin=None, now=NOW)["changed"] is True
    assert _rows(registry) == [("node-1", "*", LATER, "oar:1")]
    rights.grant(registry, "alice", ["node-1"], now=NOW)
    assert rights.revoke(registry, "alice", ["node-1"], now=NOW)["changed"] is True
    assert _rows(registry) == []
    with pytest.raises(Refused) as err:
        rights.revoke(registry, "alice", origin=42, now=NOW)
    assert err.value.field == "origin"


def test_a_registry_of_layout_2_keeps_its_rights_and_gets_one_row_per_origin(tmp_path):
    from ansible_collections.gridops.metal.plugins.module_utils import _registry
    path = str(tmp_path / "registry.sqlite")
    conn = sqlite3.connect(path)
    for migration in _registry.MIGRATIONS[:2]:
        for statement in migration:
            conn.execute(statement)
    conn.execute("PRAGMA user_version = 2")
    conn.execute("INSERT INTO rights (user, node, partition, expires, origin, granted) "
                 "VALUES ('alice', 'node-1', '*', NULL, NULL, '2026-04-01T00:00:00Z')")
    conn.commit()
    conn.close()
    with Registry(path) as reg:
        assert _rows(reg) == [("node-1", "*", None, None)]
        rights.grant(reg, "alice", ["node-1"], expires=LATER, origin="oar:1", now=NOW)
        rights.grant(reg, "alice", ["node-1"], now=NOW)  # the operator's again: no second row
        assert _rows(reg) == [("node-1", "*", None, None), ("node-1", "*", LATER, "oar:1")]
        with reg.transaction() as conn:
            assert conn.execute("PRAGMA user_version").fetchone()[0] == _registry.SCHEMA_VERSION
            with pytest.raises(sqlite3.IntegrityError):
                conn.execute("INSERT INTO rights (user, node, partition, expires, origin, granted) "
                             "VALUES ('alice', 'node-1', '*', NULL, NULL, 'x')")
