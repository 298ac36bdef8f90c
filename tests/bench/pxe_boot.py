#!/usr/bin/env python
"""Time power-on to ramdisk userspace of a QEMU (TCG) node booting from the pxe_server role.

    tests/bench/pxe_boot.py [--runs 3] [--loaders pxelinux,ipxe] [--no-ra]

Builds the PXE test bed of tests/lib/gridops_test/pxe.py (the lab's deploy
server image in a namespace of its own, a bridge, a tap), converges the role
with the test initramfs as the node's profile, then boots the node RUNS times
per loader, alternating.  Per boot it prints the seconds from power-on to: the
DHCP request, the boot program (nbp: pxelinux.0 running or boot.ipxe fetched), the
ramdisk's /init (userspace) and its address (ready); then the median per
loader.  --no-ra turns the IPv6 router advertisements off (iPXE then waits for
one).  Needs root; removes everything it made.
"""
import argparse
import json
import pathlib
import statistics
import sys
import tempfile
import time

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1] / "lib"))

MAC = "52:54:00:21:38:01"
SUBNET = "10.213.8"


def run(runs=3, loaders=("pxelinux", "ipxe"), ra=True, workdir=None, out=print):
    from gridops_test import artifacts, procs, pxe

    procs.become_subreaper()
    image = artifacts.deploy_server_image()
    ramdisk = artifacts.initramfs()
    results = dict((loader, []) for loader in loaders)
    with tempfile.TemporaryDirectory(prefix="gridops-pxe-boot-", dir=workdir) as tmp:
        bed = pxe.PxeBed(tmp, image["image"], subnet=SUBNET, nodes={"node-1": {"mac": MAC, "ip": SUBNET + ".11"}})
        guest = None
        try:
            tap = bed.add_tap()
            start = time.monotonic()
            bed.converge({
                "pxe_server_ipv6_ra": ra,
                "pxe_server_files": [{"dest": "images/test/vmlinuz", "src": ramdisk["vmlinuz"]},
                                     {"dest": "images/test/initramfs.img", "src": ramdisk["initramfs"]}],
                "pxe_server_initial_profile": {"kind": "kernel", "kernel": "images/test/vmlinuz",
                                               "initrd": "images/test/initramfs.img",
                                               "params": "console=ttyS0 loglevel=4 panic=-1"}})
            out("FIGURES pxe-bench-converge %s" % json.dumps({"seconds": round(time.monotonic() - start, 1)}))
            guest = pxe.Guest(bed, tap, MAC)
            for index in range(runs):
                for loader in loaders:
                    bed.netboot(nodes=[{"mac": MAC, "loader": loader}])
                    phases, _address = guest.boot_phases()
                    guest.power_off()
                    results[loader].append(phases)
                    figures = dict(phases, loader=loader, run=index + 1, ra=ra)
                    out("FIGURES pxe-bench-boot %s" % json.dumps(figures, sort_keys=True))
        finally:
            if guest is not None:
                guest.power_off()
            bed.close()
    summary = {}
    for loader, boots in results.items():
        summary[loader] = dict((phase, {"median": round(statistics.median(b[phase] for b in boots), 2),
                                        "min": min(b[phase] for b in boots), "max": max(b[phase] for b in boots)})
                               for phase in boots[0])
        figures = dict(loader=loader, runs=len(boots), ra=ra, **summary[loader])
        out("FIGURES pxe-bench-boot-summary %s" % json.dumps(figures, sort_keys=True))
    return summary


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--loaders", default="pxelinux,ipxe")
    parser.add_argument("--no-ra", action="store_true", help="no IPv6 router advertisements")
    args = parser.parse_args(argv)
    loaders = tuple(name for name in args.loaders.split(",") if name)
    run(args.runs, loaders, ra=not args.no_ra, out=lambda line: print(line, flush=True))
    return 0


if __name__ == "__main__":
    sys.exit(main())
