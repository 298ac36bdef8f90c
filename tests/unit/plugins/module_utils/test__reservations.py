# Copyright: (c) 2026, gridops.metal developers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The reservation parsers on what real OAR and Slurm printed, the selection, the cache bound,
the cluster description and the hooks' spool."""
import json
import os
import pathlib

import pytest
import yaml

from ansible_collections.gridops.metal.plugins.module_utils import _reservations as rsv

CASES = yaml.safe_load(pathlib.Path(__file__).with_suffix(".yaml").read_text())
SAMPLES = pathlib.Path(__file__).parent / "reservations"

PARSERS = {
    "oarstat": rsv.parse_oarstat,
    "oar_api": lambda text: rsv.parse_oar_api(text)[0],
    "squeue": rsv.parse_squeue,
    "sinfo": rsv.parse_sinfo,
    "oar_record": lambda record: rsv.oar_job(record, "oar"),
    "slurm_record": lambda record: rsv.slurm_job(record, "slurm"),
}


def _jobs(name):
    return rsv.parse_oarstat((SAMPLES / name).read_text())


@pytest.mark.parametrize("case", CASES["samples"], ids=lambda c: c["file"])
def test_recorded_samples(case):
    text = (SAMPLES / case["file"]).read_text()
    assert PARSERS[case["parser"]](text) == case["jobs"]
    if "total" in case:
        assert rsv.parse_oar_api(text)[1] == case["total"]


def test_sinfo_addresses():
    assert rsv.parse_sinfo((SAMPLES / "sinfo.json").read_text()) == {
        "node-1": "10.217.0.11", "node-2": "10.217.0.12", "node-3": "10.217.0.13"}


@pytest.mark.parametrize("case", CASES["other_versions"], ids=lambda c: "%s-%s" % (c["parser"], c["job"]["id"]))
def test_other_versions_field_names(case):
    assert PARSERS[case["parser"]](case["record"]) == case["job"]


@pytest.mark.parametrize("case", CASES["walltime"], ids=lambda c: repr(c["input"]))
def test_walltime(case):
    assert rsv.parse_walltime(case["input"]) == case["seconds"]


@pytest.mark.parametrize("value", CASES["walltime_errors"], ids=repr)
def test_walltime_errors(value):
    with pytest.raises(ValueError):
        rsv.parse_walltime(value)


@pytest.mark.parametrize("case", CASES["bad_data"], ids=lambda c: c["message"][:40])
def test_bad_data_names_the_source(case):
    with pytest.raises(getattr(rsv, case["error"])) as err:
        PARSERS[case["parser"]](case["text"])
    assert case["message"] in str(err.value)


def test_missing_clustershell_says_what_to_install(monkeypatch):
    monkeypatch.setattr(rsv, "HAS_CLUSTERSHELL", False)
    with pytest.raises(rsv.ReservationError) as err:
        rsv.parse_squeue((SAMPLES / "squeue.json").read_text())
    assert "needs the ClusterShell Python library" in str(err.value)


# -- selection


def test_select_by_state_is_case_insensitive():
    jobs = _jobs("oarstat.json")
    kept, notes = rsv.select_jobs(jobs, "oar", states=["running"])
    assert [j["id"] for j in kept] == ["1", "2"] and notes == []
    kept, notes = rsv.select_jobs(jobs, "oar", states=[])
    assert [j["id"] for j in kept] == ["1", "3", "2"]


def test_select_by_id_user_and_name():
    jobs = _jobs("oarstat.json")
    assert [j["id"] for j in rsv.select_jobs(jobs, "oar", job_ids=[2, "1"])[0]] == ["2", "1"]
    assert [j["id"] for j in rsv.select_jobs(jobs, "oar", names=["deploy-me"])[0]] == ["1"]
    assert rsv.select_jobs(jobs, "oar", users=["bob"]) == ([], [])


def test_a_job_asked_for_but_filtered_out_is_explained():
    kept, notes = rsv.select_jobs(_jobs("oarstat.json"), "oar (oarstat)", job_ids=["3"], states=["running"])
    assert kept == [] and notes == ["oar (oarstat): job 3 left out: state Waiting"]


def test_unknown_job_ids_are_an_error_naming_the_source():
    with pytest.raises(rsv.UnknownJobs) as err:
        rsv.select_jobs(_jobs("oarstat.json"), "oar (oarstat -f -J)", job_ids=["1", "4711", "4712"])
    assert str(err.value).startswith("oar (oarstat -f -J): unknown job ids 4711, 4712")
    assert err.value.job_ids == ["4711", "4712"]


def test_cache_is_never_valid_past_the_first_walltime_end():
    jobs = _jobs("oarstat.json")  # ends at 1795269323 and 1795265134; the waiting one has no end
    assert rsv.cache_valid_until(jobs, 1795263940, 3600) == 1795265134
    assert rsv.cache_valid_until(jobs, 1795263940, 60) == 1795264000
    assert rsv.cache_valid_until(jobs, 1795263940, 0) == 1795265134
    assert rsv.cache_valid_until([], 1795263940, 0) is None
    assert rsv.cache_valid_until([], 1795263940, 60) == 1795264000


def test_drop_ended():
    jobs = _jobs("oarstat.json")
    kept, ended = rsv.drop_ended(jobs, now=1795266000)
    assert [j["id"] for j in kept] == ["1", "3"] and ended == ["2"]


# -- cluster description


@pytest.mark.parametrize("case", CASES["description"])
def test_cluster_description_precedence(case, tmp_path):
    path = tmp_path / "site.yml"
    path.write_text(yaml.safe_dump(case["document"]))
    assert rsv.load_cluster_description(str(path), loader=yaml.safe_load) == case["facts"]


@pytest.mark.parametrize("case", CASES["description_errors"], ids=lambda c: c["message"])
def test_cluster_description_errors_name_the_file(case, tmp_path):
    path = tmp_path / "site.yml"
    path.write_text(yaml.safe_dump(case["document"]))
    with pytest.raises(rsv.BadData) as err:
        rsv.load_cluster_description(str(path), loader=yaml.safe_load)
    assert str(err.value).startswith("cluster description %s: " % path)
    assert case["message"] in str(err.value)


def test_cluster_description_missing_file(tmp_path):
    with pytest.raises(rsv.SourceUnavailable) as err:
        rsv.load_cluster_description(str(tmp_path / "nope.json"))
    assert "No such file" in str(err.value)


def test_the_labs_inventory_json_is_a_description(tmp_path):
    # The shape roles/lab/templates/inventory.json.j2 writes.
    lab = {"lab_name": "default", "cluster": "lab", "deploy_server": {"name": "srv", "vars": {}},
           "nodes": {"node-1": {"mac": "52:54:c2:1f:00:01", "ip": "172.29.213.11", "bmc_port": 623,
                                "cluster": "lab", "disk_device": "/dev/vda"}},
           "vars": {"lab_subnet": "172.29.213.0/24"}}
    path = tmp_path / "inventory.json"
    path.write_text(json.dumps(lab))
    facts = rsv.load_cluster_description(str(path))
    assert facts["node-1"]["mac"] == "52:54:c2:1f:00:01" and facts["node-1"]["cluster"] == "lab"


def test_nodes_are_found_by_short_name():
    description = {"graphene-1": {"mac": "x"}}
    assert rsv.node_facts(description, "graphene-1.nancy.grid5000.fr") == {"mac": "x"}
    assert rsv.node_facts(description, "graphene-2.nancy.grid5000.fr") is None


# -- spool


def test_spool_round_trip(tmp_path):
    job = _jobs("oarstat_one_job.json")[0]
    path = rsv.write_spool_entry(str(tmp_path), job)
    assert os.path.basename(path) == "oar-1.json" and oct(os.stat(path).st_mode & 0o777) == "0o644"
    on_disk = json.loads(pathlib.Path(path).read_text())
    assert on_disk["ends"] == "2026-11-21T13:55:23Z" and on_disk["nodes"] == ["node-1", "node-2"]
    jobs, problems = rsv.read_spool(str(tmp_path))
    assert jobs == [job] and problems == []
    assert rsv.remove_spool_entry(str(tmp_path), "oar", "1") is True
    assert rsv.remove_spool_entry(str(tmp_path), "oar", "1") is False
    assert not list(tmp_path.iterdir()), "no temporary file left behind"


def test_bad_spool_entries_are_problems_not_failures(tmp_path):
    rsv.write_spool_entry(str(tmp_path), _jobs("oarstat_one_job.json")[0])
    (tmp_path / "broken.json").write_text("{")
    (tmp_path / "nonodes.json").write_text(json.dumps({"id": 5, "scheduler": "slurm", "user": "a"}))
    (tmp_path / "badtime.json").write_text(json.dumps({"id": 6, "scheduler": "slurm", "user": "a", "nodes": ["n"],
                                                       "ends_at": "tomorrow"}))
    (tmp_path / ".tmp-half").write_text("{")
    jobs, problems = rsv.read_spool(str(tmp_path))
    assert [j["id"] for j in jobs] == ["1"]
    assert len(problems) == 3
    assert any("broken.json: not JSON" in p for p in problems)
    assert any("nonodes.json: missing nodes" in p for p in problems)
    assert any("ends_at is 'tomorrow', not a number of seconds" in p for p in problems)


def test_unreadable_spool_names_it(tmp_path):
    with pytest.raises(rsv.SourceUnavailable) as err:
        rsv.read_spool(str(tmp_path / "missing"))
    assert str(err.value).startswith("spool %s: cannot list it" % (tmp_path / "missing"))


def test_spool_names_are_safe():
    with pytest.raises(ValueError):
        rsv.spool_path("/spool", "oar", "../../etc/passwd")
