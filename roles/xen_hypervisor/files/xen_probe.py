# Copyright: (c) 2026, gridops.metal developers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""What the xen_hypervisor role checks before any change, as JSON: the host's bridges, and whether
it runs as a Xen dom0 now, whether GRUB keeps its configuration in /boot/grub (read-only)."""
import json
import os


def read(path):
    try:
        with open(path) as fh:
            return fh.read().strip()
    except OSError:
        return ""


print(json.dumps({
    "bridges": sorted(n for n in os.listdir("/sys/class/net") if os.path.isdir("/sys/class/net/%s/bridge" % n)),
    "hypervisor": read("/sys/hypervisor/type"),
    "dom0": "control_d" in read("/proc/xen/capabilities"),
    "grub": os.path.isdir("/boot/grub"),
}))
