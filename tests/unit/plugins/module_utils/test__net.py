# Copyright: (c) 2026, gridops.metal developers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
import pathlib

import pytest
import yaml

from ansible_collections.gridops.metal.plugins.module_utils import _net

CASES = yaml.safe_load(pathlib.Path(__file__).with_suffix(".yaml").read_text())


def _cases(*names):
    return [pytest.param(name, case, id="%s(%r)" % (name, case["input"])) for name in names for case in CASES[name]]


@pytest.mark.parametrize("name, case", _cases("normalize_mac", "ipv4_hex", "pxelinux_mac_name", "pxelinux_ip_names"))
def test_good(name, case):
    assert getattr(_net, name)(case["input"]) == case["expected"]


@pytest.mark.parametrize("name, case", _cases("normalize_mac_errors", "ipv4_hex_errors"))
def test_errors(name, case):
    func = getattr(_net, name[:-len("_errors")])
    with pytest.raises(ValueError) as err:
        func(case["input"])
    message = str(err.value)
    assert case["reason"] in message
    assert repr(case["input"]) in message, "the message names the bad value"


@pytest.mark.parametrize("func, what", [(_net.normalize_mac, "MAC address"), (_net.ipv4_hex, "IPv4 address"),
                                        (_net.pxelinux_mac_name, "MAC address"), (_net.pxelinux_ip_names, "IPv4 address")])
def test_error_says_what_was_expected(func, what):
    with pytest.raises(ValueError, match="^invalid %s 'nope': " % what):
        func("nope")


def test_str_subclass_is_shown_as_plain_string():
    class Tagged(str):
        def __repr__(self):
            return "Tagged(%s)" % str.__repr__(self)

    with pytest.raises(ValueError, match=r"^invalid MAC address 'nope': "):
        _net.normalize_mac(Tagged("nope"))
