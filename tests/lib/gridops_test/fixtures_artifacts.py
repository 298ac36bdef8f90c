"""Session fixtures for the built artifacts (registered from tests/conftest.py).

Each returns the engine's result dict (see ``plugins/module_utils/_artifacts.py``
and ``ansible-doc gridops.metal.lab_artifact``).  The cache is shared with the
lab and kept between runs: only the first run on a machine builds.

    artifact_cache_dir     str: the cache directory ($GRIDOPS_CACHE or ~/.cache/gridops-metal)
    guest_kernel           kernel: vmlinuz, modules_dir, kernel_version, package, package_version
    guest_initramfs        initramfs without ssh: initramfs, vmlinuz, kernel_version, modules
    guest_ssh_key          dict(private=path, public=str): a test-only ed25519 key kept in the cache
    guest_initramfs_ssh    initramfs whose dropbear lets guest_ssh_key in as root
    systemd_image          container_image: image (localhost/gridops-test-systemd:TAG), image_id, rootfs
    deploy_server_image    container_image with the lab deploy server's packages (needs root)
"""
import fcntl
import os
import subprocess

import pytest

from gridops_test import artifacts


def _need_root(what):
    if os.geteuid() != 0:
        pytest.skip("building %s needs root" % what)


@pytest.fixture(scope="session")
def artifact_cache_dir():
    return artifacts.engine().Cache().root


@pytest.fixture(scope="session")
def guest_kernel(artifact_cache_dir):
    return artifacts.kernel(cache_dir=artifact_cache_dir)


@pytest.fixture(scope="session")
def guest_initramfs(artifact_cache_dir, guest_kernel):
    return artifacts.initramfs(cache_dir=artifact_cache_dir)


@pytest.fixture(scope="session")
def guest_ssh_key(artifact_cache_dir):
    """One key per cache, so the initramfs that trusts it is built once, not per run."""
    keydir = os.path.join(artifact_cache_dir, "test-ssh")
    os.makedirs(keydir, mode=0o700, exist_ok=True)
    private = os.path.join(keydir, "id_ed25519")
    with open(os.path.join(keydir, ".lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not os.path.exists(private + ".pub"):
            for path in (private, private + ".pub"):
                if os.path.exists(path):
                    os.unlink(path)
            subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "gridops-metal-test",
                            "-f", private], check=True, capture_output=True)
    with open(private + ".pub") as fh:
        return {"private": private, "public": fh.read().strip()}


@pytest.fixture(scope="session")
def guest_initramfs_ssh(artifact_cache_dir, guest_kernel, guest_ssh_key):
    return artifacts.initramfs(authorized_keys=[guest_ssh_key["public"]], cache_dir=artifact_cache_dir)


@pytest.fixture(scope="session")
def systemd_image(artifact_cache_dir):
    _need_root("a container image")
    return artifacts.container_image(cache_dir=artifact_cache_dir)


@pytest.fixture(scope="session")
def deploy_server_image(artifact_cache_dir):
    _need_root("a container image")
    return artifacts.deploy_server_image(cache_dir=artifact_cache_dir)
