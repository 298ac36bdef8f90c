# Copyright: (c) 2026, gridops.metal developers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
import pathlib

import pytest
import yaml

from ansible.errors import AnsibleFilterError
from ansible_collections.gridops.metal.plugins.filter.pxe import FilterModule

CASES = yaml.safe_load(pathlib.Path(__file__).with_suffix(".yaml").read_text())
FILTERS = FilterModule().filters()


def test_filter_names():
    assert sorted(FILTERS) == ["ipv4_hex", "normalize_mac", "pxe_mac_filename"]


@pytest.mark.parametrize("name, case", [pytest.param(name, case, id="%s(%r)" % (name, case["input"]))
                                        for name in sorted(FILTERS) for case in CASES[name]])
def test_good(name, case):
    assert FILTERS[name](case["input"]) == case["expected"]


@pytest.mark.parametrize("case", CASES["errors"], ids=lambda case: "%s(%r)" % (case["filter"], case["input"]))
def test_errors(case):
    with pytest.raises(AnsibleFilterError) as err:
        FILTERS[case["filter"]](case["input"])
    message = str(err.value)
    assert message.startswith(case["filter"] + ": ")
    assert case["reason"] in message
    assert repr(case["input"]) in message, "the message names the bad value"
