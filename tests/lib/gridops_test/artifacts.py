"""Test artifacts (kernel, initramfs, rootfs, container image) through the engine.

The functions call ``plugins/module_utils/_artifacts.py`` with recipes suited
to tests; the session fixtures in ``fixtures_artifacts.py`` use them.  It also
runs as a script, for humans (``python -m`` is awkward with the collection
loader)::

    tests/lib/gridops_test/artifacts.py kernel
    tests/lib/gridops_test/artifacts.py initramfs --recipe '{"authorized_keys": ["ssh-ed25519 ..."]}'
    tests/lib/gridops_test/artifacts.py container_image --check
    tests/lib/gridops_test/artifacts.py container_image --deploy-server

Each prints the engine's result as JSON.  The cache is ``$GRIDOPS_CACHE`` or
``~/.cache/gridops-metal`` unless ``--cache-dir`` says otherwise.
"""
import argparse
import json
import pathlib
import sys

REPO = pathlib.Path(__file__).resolve().parents[3]

if __name__ == "__main__" and sys.path and pathlib.Path(sys.path[0]).resolve() == pathlib.Path(__file__).resolve().parent:
    # Run as a script, this directory comes first on sys.path: put tests/lib there instead.
    sys.path[0] = str(REPO / "tests" / "lib")


def _lab_defaults():
    import yaml

    path = pathlib.Path(__file__).resolve().parents[3] / "roles" / "lab" / "defaults" / "main.yml"
    return yaml.safe_load(path.read_text())


# The lab deploy server's packages: one list, the lab role's, so tests and the
# lab share one cached image.
DEPLOY_SERVER_PACKAGES = tuple(_lab_defaults()["lab_server_packages"])

TEST_IMAGE_NAME = "gridops-test-systemd"
DEPLOY_SERVER_IMAGE_NAME = _lab_defaults()["lab_server_image_name"]


def engine():
    """The engine module (installs the collection loader unless pytest's conftest did)."""
    from ansible.utils.collection_loader._collection_finder import _AnsibleCollectionFinder

    if not any(isinstance(f, _AnsibleCollectionFinder) for f in sys.meta_path):
        _AnsibleCollectionFinder(paths=[str(REPO / "build" / "collections")])._install()
    from ansible_collections.gridops.metal.plugins.module_utils import _artifacts
    return _artifacts


def kernel(cache_dir=None, force=False, check=False, **recipe):
    """Debian's guest kernel: result with vmlinuz, modules_dir, kernel_version."""
    return engine().kernel(recipe, cache_dir=cache_dir, force=force, check=check)


def initramfs(authorized_keys=(), files=(), modules=None, init_hook="", binaries=(), network=True,
              cache_dir=None, force=False, check=False, **recipe):
    """A test initramfs: result with initramfs, vmlinuz, kernel_version (and kernel)."""
    recipe.update(authorized_keys=list(authorized_keys), files=list(files), init_hook=init_hook,
                  binaries=list(binaries), network=network)
    if modules is not None:
        recipe["modules"] = list(modules)
    return engine().initramfs(recipe, cache_dir=cache_dir, force=force, check=check)


def rootfs(packages=(), suite="bookworm", cache_dir=None, force=False, check=False, **recipe):
    """A debootstrap minbase rootfs: result with tarball and manifest."""
    recipe.update(packages=list(packages), suite=suite)
    return engine().rootfs(recipe, cache_dir=cache_dir, force=force, check=check)


def container_image(name=TEST_IMAGE_NAME, packages=(), cache_dir=None, force=False, check=False, **recipe):
    """A systemd podman image: result with image (localhost/NAME:TAG), image_id, rootfs."""
    recipe.update(name=name, packages=list(packages))
    return engine().container_image(recipe, cache_dir=cache_dir, force=force, check=check)


def deploy_server_image(cache_dir=None, force=False, check=False):
    """The systemd image with the lab deploy server's packages."""
    return container_image(DEPLOY_SERVER_IMAGE_NAME, DEPLOY_SERVER_PACKAGES,
                           cache_dir=cache_dir, force=force, check=check)


def main(argv=None):
    parser = argparse.ArgumentParser(description="Build (or reuse) a gridops.metal artifact.")
    parser.add_argument("kind", choices=("kernel", "initramfs", "rootfs", "container_image"))
    parser.add_argument("--recipe", default="{}", help="recipe as JSON (merged over the test defaults)")
    parser.add_argument("--cache-dir", help="cache directory (default $GRIDOPS_CACHE or ~/.cache/gridops-metal)")
    parser.add_argument("--force", action="store_true", help="rebuild even when cached")
    parser.add_argument("--check", action="store_true", help="only say whether a build is needed")
    parser.add_argument("--deploy-server", action="store_true",
                        help="container_image with the lab deploy server's packages")
    args = parser.parse_args(argv)
    recipe = json.loads(args.recipe)
    opts = dict(cache_dir=args.cache_dir, force=args.force, check=args.check)
    if args.kind == "container_image" and args.deploy_server:
        recipe.setdefault("name", DEPLOY_SERVER_IMAGE_NAME)
        recipe.setdefault("packages", list(DEPLOY_SERVER_PACKAGES))
    try:
        result = globals()[args.kind](**dict(recipe, **opts))
    except engine().ArtifactError as exc:
        print("error: %s" % exc, file=sys.stderr)
        return 1
    json.dump(result, sys.stdout, indent=2, sort_keys=True)
    print()
    return 0


if __name__ == "__main__":
    sys.exit(main())
