# Copyright: (c) 2026, gridops.metal developers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The pxe_server_config filter: the engine's check, with Ansible's error type (cases in test__pxe.yaml)."""
import pytest

from ansible.errors import AnsibleFilterError
from ansible_collections.gridops.metal.plugins.filter.pxe_server import FilterModule

FILTER = FilterModule().filters()["pxe_server_config"]
CONFIG = {"interface": "eth0", "address": "10.0.0.1", "subnet": "10.0.0.0/24", "mode": "dhcp",
          "nodes": [{"name": "node-1", "mac": "52-54-00-00-00-01", "ip": "10.0.0.11"}]}


def test_returns_the_normalised_configuration():
    out = FILTER(CONFIG)
    assert out["nodes"][0]["mac"] == "52:54:00:00:00:01" and out["netmask"] == "255.255.255.0"


@pytest.mark.parametrize("value, reason", [
    (dict(CONFIG, subnet="10.0.0.0/33"), "pxe_server_config: subnet: '10.0.0.0/33' is not an IPv4 network"),
    ("eth0", "pxe_server_config: expected a dict, got str"),
])
def test_errors_are_filter_errors(value, reason):
    with pytest.raises(AnsibleFilterError, match="^" + reason.replace("(", r"\(").replace(")", r"\)")):
        FILTER(value)
