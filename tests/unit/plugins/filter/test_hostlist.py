# Copyright: (c) 2026, gridops.metal developers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
import pathlib

import pytest
import yaml

from ansible.errors import AnsibleFilterError
from ansible_collections.gridops.metal.plugins.filter import hostlist
from ansible_collections.gridops.metal.plugins.filter.hostlist import FilterModule, expand_hostlist, fold_hostlist

CASES = yaml.safe_load(pathlib.Path(__file__).with_suffix(".yaml").read_text())


def _id(case):
    return repr(case["input"])


@pytest.mark.parametrize("case", CASES["expand"], ids=_id)
def test_expand(case):
    assert expand_hostlist(case["input"]) == case["expected"]


@pytest.mark.parametrize("case", CASES["fold"], ids=_id)
def test_fold(case):
    assert fold_hostlist(case["input"]) == case["expected"]


@pytest.mark.parametrize("case", CASES["fold"], ids=_id)
def test_fold_then_expand_round_trips(case):
    if case["expected"]:
        assert expand_hostlist(case["expected"]) == expand_hostlist(case["input"])


def _check_error(func, case):
    with pytest.raises(AnsibleFilterError) as err:
        func(case["input"])
    message = str(err.value)
    assert message.startswith(func.__name__ + ": ")
    assert case["reason"] in message
    assert repr(case.get("bad", case["input"])) in message, "the message names the bad value"


@pytest.mark.parametrize("case", CASES["expand_errors"], ids=_id)
def test_expand_errors(case):
    _check_error(expand_hostlist, case)


@pytest.mark.parametrize("case", CASES["fold_errors"], ids=_id)
def test_fold_errors(case):
    _check_error(fold_hostlist, case)


def test_expand_accepts_any_iterable():
    # Jinja's map/select hand filters a generator.
    assert expand_hostlist(n for n in ["b1", "a1"]) == ["a1", "b1"]


def test_missing_clustershell_says_what_to_install(monkeypatch):
    monkeypatch.setattr(hostlist, "HAS_CLUSTERSHELL", False)
    for func in (expand_hostlist, fold_hostlist):
        with pytest.raises(AnsibleFilterError, match="install ClusterShell"):
            func("node[1-2]")


def test_filter_module_exports():
    assert FilterModule().filters() == {"expand_hostlist": expand_hostlist, "fold_hostlist": fold_hostlist}
