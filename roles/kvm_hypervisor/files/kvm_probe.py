# Copyright: (c) 2026, gridops.metal developers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""What the kvm_hypervisor role checks before any change, as JSON: CPU virtualization, /dev/kvm,
volume groups and bridges (read-only)."""
import json
import os
import subprocess

flags = set()
with open("/proc/cpuinfo") as fh:
    for line in fh:
        if line.startswith("flags"):
            flags.update(line.split(":", 1)[1].split())
            break
try:
    vgs = subprocess.run(["vgs", "--noheadings", "-o", "vg_name"], capture_output=True, text=True,
                         check=False).stdout.split()
except OSError:
    vgs = []
print(json.dumps({
    "virt": sorted(flags & {"vmx", "svm"}),
    "kvm_device": os.path.exists("/dev/kvm"),
    "volume_groups": vgs,
    "bridges": sorted(n for n in os.listdir("/sys/class/net") if os.path.isdir("/sys/class/net/%s/bridge" % n)),
}))
