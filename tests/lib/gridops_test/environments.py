"""Helpers for the environment registry tests, and the published schema's generator.

    tests/lib/gridops_test/environments.py schema > docs/environment.schema.json

``tiny_image`` makes small tar (or raw) images with a kernel and an initrd
inside, in every compression, so that registry tests need no real image.
``module`` runs a gridops.metal module ad hoc (on localhost, or on a host of
an inventory) and returns its JSON result.
"""
import io
import json
import os
import pathlib
import subprocess
import sys
import tarfile

REPO = pathlib.Path(__file__).resolve().parents[3]

if __name__ == "__main__" and sys.path and pathlib.Path(sys.path[0]).resolve() == pathlib.Path(__file__).resolve().parent:
    sys.path[0] = str(REPO / "tests" / "lib")


# What the deploy server needs besides the lab's packages to verify zstd images and hold rights
# (until roles/lab's lab_server_packages has them; then this is the lab's image exactly).
SERVER_EXTRA_PACKAGES = ("zstd", "python3-clustershell", "python3-yaml")


def server_image(cache_dir=None):
    """The lab deploy server's container image, with SERVER_EXTRA_PACKAGES."""
    from gridops_test import artifacts

    packages = sorted(set(artifacts.DEPLOY_SERVER_PACKAGES) | set(SERVER_EXTRA_PACKAGES))
    return artifacts.container_image(artifacts.DEPLOY_SERVER_IMAGE_NAME, packages, cache_dir=cache_dir)


def engines():
    """(_environments, _rights, _registry), with the collection loader installed."""
    from gridops_test import artifacts

    artifacts.engine()
    from ansible_collections.gridops.metal.plugins.module_utils import _environments, _registry, _rights
    return _environments, _rights, _registry


def schema_json():
    """The published schema's text: docs/environment.schema.json must be exactly this."""
    return json.dumps(engines()[0].SCHEMA, indent=2) + "\n"


_COMPRESS = {"none": None, "gzip": ["gzip", "-n", "-c"], "xz": ["xz", "-c"], "zstd": ["zstd", "-q", "-c"]}
_SUFFIX = {"none": ".tar", "gzip": ".tar.gz", "xz": ".tar.xz", "zstd": ".tar.zst"}


def tiny_image(directory, name="tiny", compression="zstd", kernel_version="6.1.0-99-amd64", links=True):
    """A small tar image with /boot/vmlinuz-<v>, /boot/initrd.img-<v> (and /vmlinuz, /initrd.img links).

    Returns (path, sha256).
    """
    directory = pathlib.Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w") as tf:
        def add(path, data=None, link=None, kind=tarfile.REGTYPE):
            info = tarfile.TarInfo("./" + path)
            info.mtime = 0
            if kind == tarfile.DIRTYPE:
                info.type, info.mode = kind, 0o755
                tf.addfile(info)
            elif link is not None:
                info.type, info.linkname = tarfile.SYMTYPE, link
                tf.addfile(info)
            else:
                info.size, info.mode = len(data), 0o644
                tf.addfile(info, io.BytesIO(data))
        add("boot", kind=tarfile.DIRTYPE)
        add("boot/vmlinuz-%s" % kernel_version, b"kernel " * 100)
        add("boot/initrd.img-%s" % kernel_version, b"initrd " * 100)
        add("etc/os-release", b'PRETTY_NAME="tiny"\n')
        if links:
            add("vmlinuz", link="boot/vmlinuz-%s" % kernel_version)
            add("initrd.img", link="/boot/initrd.img-%s" % kernel_version)
            add("dangling", link="boot/vmlinuz-0.0")
    path = directory / (name + _SUFFIX[compression])
    data = raw.getvalue()
    if _COMPRESS[compression]:
        data = subprocess.run(_COMPRESS[compression], input=data, capture_output=True, check=True).stdout
    path.write_bytes(data)
    return str(path), engines()[0].sha256_file(str(path))


def description(image_path, sha256, name="tiny", compression="zstd", **extra):
    desc = {
        "name": name,
        "author": "tests@gridops.invalid",
        "os": "debian12",
        "image": {"file": str(image_path), "kind": "tar", "compression": compression, "sha256": sha256},
        "boot": {"kernel": "/vmlinuz", "initrd": "/initrd.img"},
        "filesystem": "ext4",
    }
    desc.update(extra)
    return desc


def module(name, args, inventory=None, host="localhost", check=False, diff=False, ok=True, timeout=300):
    """Run gridops.metal.<name> ad hoc; return its result (dict)."""
    from gridops_test import ansible_run

    bindir = os.path.dirname(sys.executable)
    argv = [os.path.join(bindir, "ansible"), host, "-m", "gridops.metal.%s" % name, "-a", json.dumps(args)]
    extra = {}
    if inventory is None:
        argv += ["-i", "localhost,", "-c", "local"]
        extra["ANSIBLE_PYTHON_INTERPRETER"] = sys.executable
    else:
        argv += ["-i", str(inventory)]
    if check:
        argv.append("--check")
    if diff:
        argv.append("--diff")
    env = ansible_run.env(ANSIBLE_LOAD_CALLBACK_PLUGINS="1", ANSIBLE_STDOUT_CALLBACK="json", **extra)
    res = subprocess.run(argv, cwd=REPO, env=env, capture_output=True, text=True, timeout=timeout, check=False)
    try:
        out = json.loads(res.stdout)["plays"][0]["tasks"][0]["hosts"][host]
    except (ValueError, KeyError, IndexError):
        raise AssertionError("%s: no result\n%s\n%s" % (name, res.stdout[-3000:], res.stderr[-3000:]))
    if ok is not None and bool(out.get("failed")) == ok:
        raise AssertionError("%s %s: %s" % (name, "failed" if ok else "did not fail", json.dumps(out)[:3000]))
    return out


if __name__ == "__main__":
    if sys.argv[1:] != ["schema"]:
        sys.exit("usage: %s schema > docs/environment.schema.json" % sys.argv[0])
    sys.stdout.write(schema_json())
