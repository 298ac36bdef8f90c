# -*- coding: utf-8 -*-
# Copyright: (c) 2026, gridops.metal developers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

"""Build the lab's and the tests' artifacts from Debian packages, with a cache.

Six kinds, one function each, every one taking a recipe dict:

* ``kernel``: Debian's kernel for guests (vmlinuz + modules tree);
* ``initramfs``: a small busybox initramfs for test guests and the deploy environment;
* ``rootfs``: a debootstrap'ed root file system as a .tar.zst;
* ``container_image``: a local podman image of a systemd rootfs;
* ``disk_image``: a qcow2 disk of a bootable Debian guest (systemd, sshd) with its kernel and initrd.
* ``image``: an environment image to deploy onto nodes, a rootfs with files,
  services and a first-boot script, as a compressed tarball with its sha256.

Each artifact lives in ``<cache>/<kind>/<key>/`` where ``key`` is the sha256 of
the canonical JSON of (kind, builder version, normalised recipe, resolved
inputs such as package versions and host file hashes).  A build runs under a
per-key ``flock`` into a temporary directory next to the final one, which is
renamed into place only when complete, so a reader never sees half an
artifact and two processes sharing the cache build a key once.

Plain Python (standard library only): the ``lab_artifact`` module and the
tests drive it directly.  Commands always run from argument lists.
"""

from __future__ import absolute_import, division, print_function
__metaclass__ = type

import contextlib
import fcntl
import glob
import gzip
import hashlib
import json
import lzma
import os
import re
import shlex
import shutil
import signal
import subprocess
import tempfile
import time

KINDS = ("kernel", "initramfs", "rootfs", "container_image", "image", "disk_image")

# Bump a kind's number when its builder changes what it produces.
BUILDER_VERSION = {
    "kernel": 1,
    "initramfs": 1,
    "rootfs": 3,
    "container_image": 1,
    "image": 1,
    "disk_image": 1,
}

DEFAULT_CACHE = "~/.cache/gridops-metal"
CACHE_ENV = "GRIDOPS_CACHE"
DEBIAN_MIRROR = "http://deb.debian.org/debian"

# What a systemd container needs to boot and to be managed by Ansible.
CONTAINER_BASE_PACKAGES = ("systemd", "systemd-sysv", "dbus", "python3", "python3-apt", "iproute2")

# crc32c_generic: ext4 and jbd2 only soft-depend on "crypto-crc32c" (no
# modules.dep entry), and crc32c_intel needs SSE4.2, absent from TCG's CPU.
DEFAULT_INITRAMFS_MODULES = ("virtio_pci", "virtio_net", "virtio_blk", "crc32c_generic", "ext4")

# What a guest needs to boot its own kernel with systemd and be managed over SSH.
DISK_IMAGE_BASE_PACKAGES = ("systemd-sysv", "udev", "dbus", "openssh-server", "python3", "python3-apt",
                            "linux-image-amd64", "initramfs-tools", "kmod", "e2fsprogs", "iproute2",
                            "iputils-ping", "procps")

# Only what mounts a virtio root (initramfs-tools MODULES=list): a small initrd boots faster under TCG.
DEFAULT_DISK_IMAGE_MODULES = ("virtio_pci", "virtio_blk", "crc32c_generic", "ext4")

_SBIN_PATH = "/usr/sbin:/usr/bin:/sbin:/bin"

# Environment images: tar's option and the file suffix per compression.
IMAGE_COMPRESSIONS = ("zstd", "gzip", "xz", "none")
_IMAGE_TAR = {"zstd": ("--zstd", ".tar.zst"), "gzip": ("--gzip", ".tar.gz"), "xz": ("--xz", ".tar.xz"),
              "none": (None, ".tar")}


class ArtifactError(Exception):
    """A recipe is invalid or a build failed (the message says which and why)."""


# --------------------------------------------------------------------------
# Recipes


class _Opt:
    def __init__(self, kind, default, choices=None):
        self.kind = kind
        self.default = default
        self.choices = choices


RECIPE_SPECS = {
    "kernel": {
        "package": _Opt("str", "linux-image-amd64"),
    },
    "initramfs": {
        "kernel": _Opt("dict", {}),
        "modules": _Opt("list", list(DEFAULT_INITRAMFS_MODULES)),
        "network": _Opt("bool", True),
        "interface": _Opt("str", "eth0"),
        "hostname": _Opt("str", "gridops-initramfs"),
        "authorized_keys": _Opt("list", []),
        "binaries": _Opt("list", []),
        "files": _Opt("files", []),
        "init_hook": _Opt("text", ""),
    },
    "rootfs": {
        "suite": _Opt("str", "bookworm"),
        "mirror": _Opt("str", DEBIAN_MIRROR),
        "variant": _Opt("str", "minbase", choices=("minbase", "buildd", "-")),
        "components": _Opt("list", ["main"]),
        "packages": _Opt("set", []),
    },
    "container_image": {
        "name": _Opt("str", "gridops-systemd"),
        "suite": _Opt("str", "bookworm"),
        "mirror": _Opt("str", DEBIAN_MIRROR),
        "components": _Opt("list", ["main"]),
        "packages": _Opt("set", []),
    },
    "image": {
        "suite": _Opt("str", "bookworm"),
        "mirror": _Opt("str", DEBIAN_MIRROR),
        "variant": _Opt("str", "minbase", choices=("minbase", "buildd", "-")),
        "components": _Opt("list", ["main"]),
        "packages": _Opt("set", []),
        "kernel": _Opt("text", "linux-image-amd64"),
        "files": _Opt("files", []),
        "services": _Opt("list", []),
        "first_boot": _Opt("text", ""),
        "compression": _Opt("str", "zstd", choices=IMAGE_COMPRESSIONS),
    },
    "disk_image": {
        "suite": _Opt("str", "bookworm"),
        "mirror": _Opt("str", DEBIAN_MIRROR),
        "components": _Opt("list", ["main"]),
        "packages": _Opt("set", []),
        "size": _Opt("str", "4G"),
        "hostname": _Opt("str", "gridops-guest"),
        "interface": _Opt("text", "eth0"),
        "modules": _Opt("list", list(DEFAULT_DISK_IMAGE_MODULES)),
        "files": _Opt("files", []),
    },
}

_FILE_KEYS = ("path", "content", "src", "mode")


def _check_str_list(kind, name, value):
    if not isinstance(value, (list, tuple)) or not all(isinstance(v, str) for v in value):
        raise ArtifactError("%s recipe: %s must be a list of strings" % (kind, name))
    return list(value)


def _normalize_file(kind, item):
    if not isinstance(item, dict) or set(item) - set(_FILE_KEYS) or "path" not in item:
        raise ArtifactError("%s recipe: each of files is a dict with path and content or src (and mode)" % kind)
    if ("content" in item) == ("src" in item):
        raise ArtifactError("%s recipe: file %s needs exactly one of content and src" % (kind, item["path"]))
    path = item["path"]
    if not isinstance(path, str) or not path.startswith("/") or ".." in path.split("/") or path == "/":
        raise ArtifactError("%s recipe: file path %r must be absolute, without '..'" % (kind, path))
    mode = item.get("mode", "0644")
    try:
        mode = int(mode, 8) if isinstance(mode, str) else int(mode)
    except (TypeError, ValueError):
        raise ArtifactError("%s recipe: file %s: mode %r is not octal" % (kind, path, item.get("mode")))
    out = {"path": os.path.normpath(path), "mode": "%04o" % (mode & 0o7777)}
    if "src" in item:
        out["src"] = os.path.abspath(os.path.expanduser(str(item["src"])))
    else:
        out["content"] = str(item["content"])
    return out


def normalize_recipe(kind, recipe):
    """Recipe with defaults filled in and values checked; the key is computed over this."""
    if kind not in RECIPE_SPECS:
        raise ArtifactError("unknown artifact kind %r (known: %s)" % (kind, ", ".join(KINDS)))
    recipe = dict(recipe or {})
    spec = RECIPE_SPECS[kind]
    unknown = sorted(set(recipe) - set(spec))
    if unknown:
        raise ArtifactError("%s recipe: unknown option(s) %s (known: %s)"
                            % (kind, ", ".join(unknown), ", ".join(sorted(spec))))
    out = {}
    for name, opt in spec.items():
        value = recipe.get(name)
        if value is None:
            value = json.loads(json.dumps(opt.default))
        if opt.kind == "str":
            if not isinstance(value, str) or not value:
                raise ArtifactError("%s recipe: %s must be a non-empty string" % (kind, name))
            if opt.choices and value not in opt.choices:
                raise ArtifactError("%s recipe: %s must be one of %s" % (kind, name, ", ".join(opt.choices)))
        elif opt.kind == "text":
            if not isinstance(value, str):
                raise ArtifactError("%s recipe: %s must be a string" % (kind, name))
        elif opt.kind == "bool":
            if not isinstance(value, bool):
                raise ArtifactError("%s recipe: %s must be a boolean" % (kind, name))
        elif opt.kind == "dict":
            if not isinstance(value, dict):
                raise ArtifactError("%s recipe: %s must be a dict" % (kind, name))
        elif opt.kind == "list":
            value = list(dict.fromkeys(_check_str_list(kind, name, value)))
        elif opt.kind == "set":
            value = sorted(set(_check_str_list(kind, name, value)))
        elif opt.kind == "files":
            if not isinstance(value, (list, tuple)):
                raise ArtifactError("%s recipe: files must be a list" % kind)
            value = [_normalize_file(kind, item) for item in value]
        out[name] = value
    if kind == "initramfs":
        out["kernel"] = normalize_recipe("kernel", out["kernel"])
        out["modules"] = list(dict.fromkeys(m.replace("-", "_") for m in out["modules"]))
    if kind == "container_image" and not re.match(r"^[a-z0-9][a-z0-9._/-]*$", out["name"]):
        raise ArtifactError("container_image recipe: name %r is not a valid image name" % out["name"])
    if kind == "image":
        if out["kernel"] and not re.match(r"^[a-z0-9][a-z0-9.+-]*$", out["kernel"]):
            raise ArtifactError("image recipe: kernel %r is not a package name" % out["kernel"])
        for unit in out["services"]:
            if not re.match(r"^[A-Za-z0-9@._:-]+$", unit):
                raise ArtifactError("image recipe: services: %r is not a systemd unit name" % unit)
    if kind == "disk_image":
        if not re.match(r"^[1-9][0-9]*[MG]$", out["size"]):
            raise ArtifactError("disk_image recipe: size %r is not a number of M or G (4G)" % out["size"])
        if not re.match(r"^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$", out["hostname"]):
            raise ArtifactError("disk_image recipe: hostname %r is not a host name" % out["hostname"])
        if out["interface"] and not re.match(r"^[A-Za-z0-9_.-]{1,15}$", out["interface"]):
            raise ArtifactError("disk_image recipe: interface %r is not an interface name" % out["interface"])
    return out


def cache_key(kind, recipe, inputs=None):
    """sha256 of the canonical JSON of (kind, builder version, recipe, resolved inputs)."""
    doc = {
        "kind": kind,
        "builder": BUILDER_VERSION[kind],
        "recipe": recipe,
        "inputs": inputs or {},
    }
    blob = json.dumps(doc, sort_keys=True, separators=(",", ":"), ensure_ascii=True)
    return hashlib.sha256(blob.encode("ascii")).hexdigest()


def default_cache_dir():
    return os.environ.get(CACHE_ENV) or os.path.expanduser(DEFAULT_CACHE)


def sha256_file(path):
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


# --------------------------------------------------------------------------
# Commands


def _tail(path, lines=40):
    try:
        with open(path, "rb") as fh:
            fh.seek(0, os.SEEK_END)
            fh.seek(max(0, fh.tell() - 16384))
            return "\n".join(fh.read().decode("utf-8", "replace").splitlines()[-lines:])
    except OSError:
        return ""


class _Runner:
    """Runs argument lists, logging their output to one build log."""

    def __init__(self, log_path=None, timeout=3600):
        self.log_path = log_path
        self.timeout = timeout

    def note(self, text):
        if self.log_path:
            with open(self.log_path, "a") as fh:
                fh.write(text.rstrip("\n") + "\n")

    def run(self, argv, cwd=None, stdin_data=None, stdout_path=None, capture=False, check=True, env=None):
        """Run argv; return its stdout (text) when capture, else its return code."""
        argv = [str(a) for a in argv]
        self.note("+ %s" % " ".join(shlex.quote(a) for a in argv))
        log = open(self.log_path, "ab") if self.log_path else subprocess.DEVNULL
        out = None
        try:
            if stdout_path:
                out = open(stdout_path, "wb")
            elif capture:
                out = subprocess.PIPE
            else:
                out = log
            proc = subprocess.Popen(argv, cwd=cwd, env=env, start_new_session=True,
                                    stdin=subprocess.PIPE if stdin_data is not None else subprocess.DEVNULL,
                                    stdout=out, stderr=log if self.log_path else subprocess.PIPE)
            try:
                stdout, stderr = proc.communicate(stdin_data, timeout=self.timeout)
            except BaseException:
                # Timeout or interrupt: the whole process group goes, then we reap.
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
                raise
        except subprocess.TimeoutExpired:
            raise ArtifactError("%s timed out after %ss" % (argv[0], self.timeout))
        except OSError as exc:
            raise ArtifactError("cannot run %s: %s" % (argv[0], exc))
        finally:
            if self.log_path:
                log.close()
            if stdout_path and out is not None:
                out.close()
        if check and proc.returncode != 0:
            detail = _tail(self.log_path) if self.log_path else (stderr or b"").decode("utf-8", "replace")
            raise ArtifactError("%s failed (exit %d)%s:\n%s" % (
                " ".join(argv[:3]), proc.returncode,
                " - log: %s" % self.log_path if self.log_path else "", detail.strip()))
        if capture:
            return (stdout or b"").decode("utf-8", "replace")
        return proc.returncode


def _which(name):
    path = shutil.which(name) or shutil.which(name, path=_SBIN_PATH)
    if not path:
        raise ArtifactError("%s not found: install the Debian packages from bindep.txt" % name)
    return path


# --------------------------------------------------------------------------
# Safe removal: a rootfs under construction may hold mounts and chrooted processes


def _unescape_mount(field):
    return re.sub(r"\\([0-7]{3})", lambda m: chr(int(m.group(1), 8)), field)


def mounts_below(path):
    """Mount points at or under path (deepest first)."""
    path = os.path.realpath(path)
    found = []
    try:
        with open("/proc/self/mountinfo") as fh:
            for line in fh:
                mnt = _unescape_mount(line.split()[4])
                if mnt == path or mnt.startswith(path + "/"):
                    found.append(mnt)
    except OSError:
        return []
    return sorted(set(found), key=len, reverse=True)


def _kill_rooted_in(path):
    """SIGKILL processes whose root directory is inside path (a chroot there)."""
    path = os.path.realpath(path)
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            root = os.readlink("/proc/%s/root" % entry)
        except OSError:
            continue
        if root == path or root.startswith(path + "/"):
            with contextlib.suppress(OSError):
                os.kill(int(entry), signal.SIGKILL)


def remove_tree(path):
    """Remove a build tree, after unmounting what is mounted below it.

    Refuses (raises) rather than run rmtree across a mount: a bind-mounted
    /dev or /proc inside a chroot would otherwise be emptied on the host.
    """
    if not os.path.lexists(path):
        return
    if os.path.isdir(path) and not os.path.islink(path):
        _kill_rooted_in(path)
        for mnt in mounts_below(path):
            if subprocess.call(["umount", mnt], stderr=subprocess.DEVNULL) != 0:
                subprocess.call(["umount", "-l", mnt], stderr=subprocess.DEVNULL)
        left = mounts_below(path)
        if left:
            raise ArtifactError("refusing to remove %s: still mounted: %s" % (path, ", ".join(left)))
        shutil.rmtree(path)
    else:
        os.unlink(path)


# --------------------------------------------------------------------------
# The cache


class Cache:
    """``<root>/<kind>/<key>/`` entries, ``locks/`` and ``logs/``."""

    def __init__(self, root=None):
        self.root = os.path.abspath(os.path.expanduser(root or default_cache_dir()))

    def entry(self, kind, key):
        return os.path.join(self.root, kind, key)

    def log_path(self, kind, key):
        return os.path.join(self.root, "logs", "%s-%s.log" % (kind, key))

    def load(self, kind, key):
        """The entry's metadata, or None when it is not (completely) there."""
        try:
            with open(os.path.join(self.entry(kind, key), "meta.json")) as fh:
                return json.load(fh)
        except (OSError, ValueError):
            return None

    @contextlib.contextmanager
    def lock(self, kind, key):
        """Exclusive flock for one key; released when the holder exits, even by a crash."""
        locks = os.path.join(self.root, "locks")
        os.makedirs(locks, exist_ok=True)
        fd = os.open(os.path.join(locks, "%s-%s.lock" % (kind, key)), os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)

    def build(self, kind, key, builder, describe=None, valid=None, force=False, check=False):
        """Return (meta, changed): reuse the entry for key, or build it once.

        builder(tmpdir, runner) fills tmpdir and returns a dict of metadata
        (paths relative to the entry).  ``valid(meta)`` may reject an existing
        entry whose artifact lives elsewhere (a podman image that was removed).
        In check mode nothing is built: meta is None when a build is needed.
        """
        def ready():
            meta = self.load(kind, key)
            if meta is not None and (valid is None or valid(meta)):
                return meta
            return None

        meta = None if force else ready()
        if meta is not None:
            return meta, False
        if check:
            return None, True
        kind_dir = os.path.join(self.root, kind)
        os.makedirs(kind_dir, exist_ok=True)
        os.makedirs(os.path.dirname(self.log_path(kind, key)), exist_ok=True)
        with self.lock(kind, key):
            meta = None if force else ready()
            if meta is not None:
                return meta, False   # built by another process while we waited
            # Leftovers of a build that was killed hard (the lock says nobody else is building).
            for stale in glob.glob(os.path.join(kind_dir, ".tmp-%s-*" % key)) + \
                    glob.glob(os.path.join(kind_dir, ".old-%s-*" % key)):
                remove_tree(stale)
            log_path = self.log_path(kind, key)
            with open(log_path, "w") as fh:
                fh.write("gridops.metal %s build %s\n" % (kind, key))
            runner = _Runner(log_path)
            tmp = tempfile.mkdtemp(prefix=".tmp-%s-" % key, dir=kind_dir)
            os.chmod(tmp, 0o755)
            try:
                start = time.monotonic()
                meta = dict(builder(tmp, runner) or {})
                meta.update(describe or {})
                meta.update({"kind": kind, "key": key, "created": int(time.time()),
                             "build_seconds": round(time.monotonic() - start, 2)})
                with open(os.path.join(tmp, "meta.json"), "w") as fh:
                    json.dump(meta, fh, indent=2, sort_keys=True)
                final = self.entry(kind, key)
                if os.path.lexists(final):
                    old = tempfile.mkdtemp(prefix=".old-%s-" % key, dir=kind_dir)
                    os.rename(final, os.path.join(old, "entry"))
                    os.rename(tmp, final)
                    remove_tree(old)
                else:
                    os.rename(tmp, final)
            except BaseException:
                remove_tree(tmp)
                raise
            return meta, True


def _public_recipe(recipe):
    """The recipe for results and logs: file contents (which may be secret) as their hash."""
    if not recipe.get("files"):
        return recipe
    files = []
    for item in recipe["files"]:
        item = dict(item)
        if "content" in item:
            item["content"] = "sha256:" + hashlib.sha256(item.pop("content").encode()).hexdigest()
        files.append(item)
    return dict(recipe, files=files)


def _describe(recipe, inputs):
    """What meta.json records of how an entry was made (for humans browsing the cache)."""
    return {"recipe": _public_recipe(recipe), "inputs": inputs}


def _result(cache, kind, key, meta, changed, recipe, inputs, started, path_fields=()):
    """The public result: metadata with paths made absolute."""
    entry = cache.entry(kind, key)
    res = {
        "kind": kind,
        "key": key,
        "changed": changed,
        "path": entry,
        "cache_dir": cache.root,
        "recipe": _public_recipe(recipe),
        "inputs": inputs,
        "seconds": round(time.monotonic() - started, 2),
        "build_seconds": None,
        "log": cache.log_path(kind, key),
    }
    if meta is None:
        return res
    for name, value in meta.items():
        if name in ("kind", "key"):
            continue
        if name in path_fields and value is not None:
            value = os.path.join(entry, value)
        res[name] = value
    return res


# --------------------------------------------------------------------------
# Debian package resolution


def _parse_stanza(text):
    """The first RFC 822 stanza of apt-cache show as a dict."""
    fields, last = {}, None
    for line in text.splitlines():
        if not line.strip():
            if fields:
                break
            continue
        if line[0] in " \t" and last:
            fields[last] += "\n" + line.strip()
            continue
        name, _sep, value = line.partition(":")
        last = name.strip()
        fields[last] = value.strip()
    return fields


def _depends_names(depends):
    """Package names in a Depends field (first alternative of each)."""
    names = []
    for part in depends.split(","):
        first = part.split("|")[0].strip()
        if first:
            names.append(first.split()[0].split(":")[0])
    return names


def _apt_show(runner, package):
    argv = ["apt-cache", "show", "--no-all-versions", package]
    out = runner.run(argv, capture=True, check=False)
    fields = _parse_stanza(out)
    if not fields.get("Version"):
        # No package lists yet (a fresh machine): fetch them once.
        runner.run(["apt-get", "update", "-q"], check=False)
        fields = _parse_stanza(runner.run(argv, capture=True, check=False))
    if not fields.get("Version"):
        raise ArtifactError("package %s is unknown to apt (is it in the configured sources?)" % package)
    return fields


def resolve_kernel_package(runner, package):
    """Follow linux-image-amd64 -> linux-image-6.1.0-NN-amd64: (name, version, sha256)."""
    for _hop in range(4):
        fields = _apt_show(runner, package)
        deps = [d for d in _depends_names(fields.get("Depends", "")) if d.startswith("linux-image-")]
        if not deps:
            return fields["Package"], fields["Version"], fields.get("SHA256", "")
        package = deps[0]
    raise ArtifactError("cannot resolve the kernel package behind %s" % package)


# --------------------------------------------------------------------------
# kernel


def _kernel_plan(runner, recipe):
    name, version, sha256 = resolve_kernel_package(runner, recipe["package"])
    return {"package": name, "version": version, "sha256": sha256}


def _build_kernel(inputs):
    def build(tmp, runner):
        work = os.path.join(tmp, "work")
        os.mkdir(work)
        argv = ["apt-get", "download", "-q"]
        if os.geteuid() == 0:
            # apt's _apt user could not write into our private build directory.
            argv += ["-o", "APT::Sandbox::User=root"]
        runner.run(argv + ["%s=%s" % (inputs["package"], inputs["version"])], cwd=work)
        debs = glob.glob(os.path.join(work, "*.deb"))
        if len(debs) != 1:
            raise ArtifactError("apt-get download gave %d files for %s" % (len(debs), inputs["package"]))
        if inputs["sha256"] and sha256_file(debs[0]) != inputs["sha256"]:
            raise ArtifactError("%s: sha256 does not match the package index" % debs[0])
        root = os.path.join(work, "root")
        runner.run(["dpkg-deb", "-x", debs[0], root])
        versions = os.listdir(os.path.join(root, "lib", "modules"))
        if len(versions) != 1:
            raise ArtifactError("%s holds %d module trees" % (inputs["package"], len(versions)))
        kver = versions[0]
        for name, dest in (("vmlinuz", "vmlinuz"), ("config", "config"), ("System.map", "System.map")):
            os.rename(os.path.join(root, "boot", "%s-%s" % (name, kver)), os.path.join(tmp, dest))
        os.mkdir(os.path.join(tmp, "lib"))
        os.rename(os.path.join(root, "lib", "modules"), os.path.join(tmp, "lib", "modules"))
        remove_tree(work)
        # The package leaves modules.dep to its postinst: make it here.
        runner.run([_which("depmod"), "-b", tmp, kver])
        return {
            "kernel_version": kver,
            "vmlinuz": "vmlinuz",
            "config": "config",
            "modules_dir": os.path.join("lib", "modules", kver),
            "package": inputs["package"],
            "package_version": inputs["version"],
        }
    return build


_KERNEL_PATHS = ("vmlinuz", "config", "modules_dir")


def kernel(recipe=None, cache_dir=None, force=False, check=False):
    """Debian's kernel for guests: vmlinuz and its modules tree (with modules.dep).

    recipe: ``package`` (default ``linux-image-amd64``), followed through its
    Depends to the exact ``linux-image-<abi>-amd64`` whose version is part of
    the key.
    """
    started = time.monotonic()
    cache = Cache(cache_dir)
    recipe = normalize_recipe("kernel", recipe)
    inputs = _kernel_plan(_Runner(), recipe)
    key = cache_key("kernel", recipe, inputs)
    meta, changed = cache.build("kernel", key, _build_kernel(inputs), describe=_describe(recipe, inputs),
                                force=force, check=check)
    return _result(cache, "kernel", key, meta, changed, recipe, inputs, started, _KERNEL_PATHS)


# --------------------------------------------------------------------------
# initramfs


def module_load_order(modules_dir, names):
    """(relative .ko paths in load order, names that are built in) for the given modules.

    Reads modules.dep and modules.builtin; a module's dependencies come first.
    """
    deps, builtin = {}, set()

    def mod_name(rel):
        base = os.path.basename(rel)
        return base.split(".ko")[0].replace("-", "_")

    with open(os.path.join(modules_dir, "modules.dep")) as fh:
        for line in fh:
            if ":" not in line:
                continue
            rel, _sep, rest = line.partition(":")
            deps[mod_name(rel)] = (rel.strip(), [mod_name(d) for d in rest.split()])
    builtin_file = os.path.join(modules_dir, "modules.builtin")
    if os.path.exists(builtin_file):
        with open(builtin_file) as fh:
            builtin = set(mod_name(line.strip()) for line in fh if line.strip())
    order, seen, builtins = [], set(), []

    def visit(name, chain):
        if name in seen:
            return
        if name in chain:
            raise ArtifactError("module dependency loop: %s" % " -> ".join(chain + [name]))
        if name not in deps:
            if name in builtin:
                builtins.append(name)
                seen.add(name)
                return
            raise ArtifactError("kernel module %s is neither in modules.dep nor built in" % name)
        for dep in deps[name][1]:
            visit(dep, chain + [name])
        seen.add(name)
        order.append(deps[name][0])

    for name in names:
        visit(name.replace("-", "_"), [])
    return order, builtins


def elf_libraries(path, runner=None):
    """Shared libraries (and loader) a dynamic executable needs, from ldd; [] if static."""
    runner = runner or _Runner()
    out = runner.run(["ldd", path], capture=True, check=False)
    libs = []
    for line in out.splitlines():
        line = line.strip()
        match = re.match(r"^\S+ => (/\S+) \(0x[0-9a-f]+\)$", line) or re.match(r"^(/\S+) \(0x[0-9a-f]+\)$", line)
        if match:
            libs.append(match.group(1))
        elif "=> not found" in line:
            raise ArtifactError("%s: library missing: %s" % (path, line))
    return libs


_INIT = r"""#!/bin/sh
# gridops.metal test initramfs: mounts, modules, network, ssh, markers on the
# console, then busybox init (so `poweroff` on the console powers off).
export PATH=/usr/sbin:/usr/bin:/sbin:/bin
mount -t devtmpfs devtmpfs /dev 2>/dev/null
exec </dev/console >/dev/console 2>&1
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mkdir -p /dev/pts /dev/shm
mount -t devpts devpts /dev/pts
mount -t tmpfs tmpfs /run
mount -t tmpfs tmpfs /tmp

marker() { printf '\nGRIDOPS-INITRAMFS-%s\n' "$*"; }
# opt NAME: value of NAME=VALUE on the kernel command line ("1" for a bare NAME).
opt() {
    for word in $(cat /proc/cmdline); do
        case "$word" in "$1"=*) echo "${word#*=}"; return 0 ;; "$1") echo 1; return 0 ;; esac
    done
    return 1
}

marker "START kernel=$(uname -r)"
while read -r mod; do
    insmod "/lib/modules/$(uname -r)/$mod" || marker "ERROR insmod $mod"
done < /etc/gridops/modules
hostname "$(cat /etc/hostname)"
ip link set lo up

addr=none
iface=@INTERFACE@
# BOOTIF=01-<mac> (pxelinux's IPAPPEND 2, iPXE's ${mac:hexhyp}): the interface that booted.
bootif_mac=
if bootif=$(opt BOOTIF); then
    bootif_mac=$(echo "${bootif#01-}" | tr 'ABCDEF-' 'abcdef:')
fi
find_iface() {
    [ -n "$bootif_mac" ] || return 0
    for dev in /sys/class/net/*; do
        if [ "$(cat "$dev/address" 2>/dev/null)" = "$bootif_mac" ]; then iface=${dev##*/}; return 0; fi
    done
    return 1
}
if [ @NETWORK@ = 1 ] && [ "$(opt gridops.net)" != 0 ]; then
    n=0
    until find_iface && [ -e "/sys/class/net/$iface" ] || [ $n -ge 50 ]; do sleep 0.1; n=$((n + 1)); done
    if [ -e "/sys/class/net/$iface" ]; then
        ip link set "$iface" up
        udhcpc -i "$iface" -s /etc/gridops/udhcpc.script -f -q -n -t 10 -T 1 >/run/udhcpc.log 2>&1 ||
            marker "ERROR dhcp on $iface failed"
        addr=$(ip -4 -o addr show dev "$iface" | awk '{split($4, a, "/"); print a[1]; exit}')
        [ -n "$addr" ] || addr=none
    else
        marker "ERROR no interface $iface"
    fi
fi
if [ -x /usr/sbin/dropbear ]; then
    dropbear -R -s -p 22 2>/var/log/dropbear.log || marker "ERROR dropbear"
fi
if [ -f /etc/gridops/hook.sh ]; then
    . /etc/gridops/hook.sh
fi
marker "READY ip=$addr"
if hook=$(opt gridops.hook); then
    "$hook"
    marker "HOOK-DONE rc=$?"
fi
if opt gridops.poweroff >/dev/null; then
    marker POWEROFF
    sync
    poweroff -f
fi
exec /bin/busybox init
"""

_INITTAB = """\
::respawn:-/bin/cttyhack /bin/sh
::shutdown:/etc/gridops/shutdown
"""

_SHUTDOWN = """\
#!/bin/sh
printf '\\nGRIDOPS-INITRAMFS-POWEROFF\\n'
sync
"""

_UDHCPC = """\
#!/bin/sh
# udhcpc event script: configure the lease, routes and DNS.
case "$1" in
deconfig)
    ip -4 addr flush dev "$interface"
    ip link set "$interface" up
    ;;
bound|renew)
    ifconfig "$interface" "$ip" netmask "${subnet:-255.255.255.0}"
    for gw in $router; do route add default gw "$gw" dev "$interface"; break; done
    : > /etc/resolv.conf
    for ns in $dns; do echo "nameserver $ns" >> /etc/resolv.conf; done
    ;;
esac
exit 0
"""

_TEMPLATE_HASH = hashlib.sha256((_INIT + _INITTAB + _SHUTDOWN + _UDHCPC).encode()).hexdigest()


def _initramfs_host_files(recipe):
    """Host files copied into the image: {path: sha256}, with the libraries they need."""
    busybox = "/bin/busybox"
    if not os.path.exists(busybox):
        raise ArtifactError("/bin/busybox missing: install busybox-static")
    if elf_libraries(busybox):
        raise ArtifactError("/bin/busybox is dynamically linked: install busybox-static")
    programs = list(recipe["binaries"])
    if recipe["authorized_keys"]:
        programs.insert(0, _which("dropbear"))
    files = [busybox]
    for prog in programs:
        prog = prog if prog.startswith("/") else _which(prog)
        if not os.path.isfile(prog):
            raise ArtifactError("binary %s not found" % prog)
        files.append(prog)
        files.extend(elf_libraries(prog))
    return dict((path, sha256_file(path)) for path in sorted(set(files)))


def _initramfs_inputs(recipe, kernel_key):
    for item in recipe["files"]:
        if "src" in item and not os.path.isfile(item["src"]):
            raise ArtifactError("initramfs recipe: file %s: src %s is not a file" % (item["path"], item["src"]))
    inputs = {
        "kernel_key": kernel_key,
        "templates": _TEMPLATE_HASH,
        "host_files": _initramfs_host_files(recipe),
        "src_files": dict((f["src"], sha256_file(f["src"])) for f in recipe["files"] if "src" in f),
    }
    return inputs


def _write(path, data, mode=0o644):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "wb") as fh:
        fh.write(data.encode() if isinstance(data, str) else data)
    os.chmod(path, mode)


def _copy_into(stage, host_path, dest=None):
    """Copy a host file to the same path (or dest) inside stage, content not symlink."""
    target = os.path.join(stage, (dest or host_path).lstrip("/"))
    os.makedirs(os.path.dirname(target), exist_ok=True)
    shutil.copyfile(host_path, target)
    shutil.copymode(host_path, target)
    return target


def _build_initramfs(recipe, inputs, kres):
    def build(tmp, runner):
        stage = os.path.join(tmp, "stage")
        for d in ("bin", "sbin", "usr/bin", "usr/sbin", "etc/gridops", "proc", "sys", "dev", "run",
                  "tmp", "root", "var/log", "lib/modules"):
            os.makedirs(os.path.join(stage, d))
        os.chmod(os.path.join(stage, "tmp"), 0o1777)
        os.chmod(os.path.join(stage, "root"), 0o700)
        for host_path in inputs["host_files"]:
            _copy_into(stage, host_path)
        applets = runner.run(["/bin/busybox", "--list-full"], capture=True).split()
        for applet in applets:
            link = os.path.join(stage, applet)
            if not os.path.lexists(link):
                os.makedirs(os.path.dirname(link), exist_ok=True)
                os.symlink("/bin/busybox", link)
        if os.geteuid() == 0:
            # The kernel opens /dev/console for /init before devtmpfs is mounted.
            os.mknod(os.path.join(stage, "dev", "console"), 0o600 | 0o020000, os.makedev(5, 1))

        kver = kres["kernel_version"]
        order, builtin = module_load_order(kres["modules_dir"], recipe["modules"])
        loaded = []
        for rel in order:
            src = os.path.join(kres["modules_dir"], rel)
            dest = os.path.join(stage, "lib", "modules", kver, rel)
            # busybox insmod wants plain .ko: decompress here what stdlib can.
            if rel.endswith(".ko"):
                os.makedirs(os.path.dirname(dest), exist_ok=True)
                shutil.copyfile(src, dest)
            elif rel.endswith((".ko.xz", ".ko.gz")):
                opener = lzma.open if rel.endswith(".xz") else gzip.open
                rel, dest = rel[:-3], dest[:-3]
                with opener(src) as fh:
                    _write(dest, fh.read())
            else:
                raise ArtifactError("cannot load module %s from an initramfs (compression)" % rel)
            loaded.append(rel)
        _write(os.path.join(stage, "etc/gridops/modules"), "".join("%s\n" % rel for rel in loaded))

        init = _INIT.replace("@INTERFACE@", shlex.quote(recipe["interface"]))
        init = init.replace("@NETWORK@", "1" if recipe["network"] else "0")
        _write(os.path.join(stage, "init"), init, 0o755)
        _write(os.path.join(stage, "etc/inittab"), _INITTAB)
        _write(os.path.join(stage, "etc/gridops/shutdown"), _SHUTDOWN, 0o755)
        _write(os.path.join(stage, "etc/gridops/udhcpc.script"), _UDHCPC, 0o755)
        _write(os.path.join(stage, "etc/hostname"), recipe["hostname"] + "\n")
        _write(os.path.join(stage, "etc/passwd"), "root:x:0:0:root:/root:/bin/sh\n")
        _write(os.path.join(stage, "etc/shadow"), "root:*:1:0:99999:7:::\n", 0o600)
        _write(os.path.join(stage, "etc/group"), "root:x:0:\n")
        _write(os.path.join(stage, "etc/shells"), "/bin/sh\n")
        _write(os.path.join(stage, "etc/nsswitch.conf"), "passwd: files\ngroup: files\nshadow: files\n")
        if recipe["init_hook"]:
            _write(os.path.join(stage, "etc/gridops/hook.sh"), recipe["init_hook"].rstrip("\n") + "\n")
        if recipe["authorized_keys"]:
            os.makedirs(os.path.join(stage, "etc/dropbear"))
            os.makedirs(os.path.join(stage, "root/.ssh"), mode=0o700)
            _write(os.path.join(stage, "root/.ssh/authorized_keys"),
                   "".join(k.strip() + "\n" for k in recipe["authorized_keys"]), 0o600)
        for item in recipe["files"]:
            target = os.path.join(stage, item["path"].lstrip("/"))
            if os.path.lexists(target) and os.path.isdir(target):
                raise ArtifactError("file %s would replace a directory" % item["path"])
            if os.path.lexists(target):
                os.unlink(target)
            if "src" in item:
                with open(item["src"], "rb") as fh:
                    data = fh.read()
            else:
                data = item["content"]
            _write(target, data, int(item["mode"], 8))

        # Same inputs, same bytes: fixed mtimes, sorted names, renumbered inodes.
        names = []
        for dirpath, dirnames, filenames in os.walk(stage):
            dirnames.sort()
            for name in dirnames + sorted(filenames):
                full = os.path.join(dirpath, name)
                os.utime(full, (0, 0), follow_symlinks=False)
                names.append(os.path.relpath(full, stage))
        names.sort()
        cpio = os.path.join(tmp, "initramfs.cpio")
        runner.run(["/bin/busybox", "cpio", "-o", "-H", "newc", "-R", "0:0", "-0",
                    "--ignore-devno", "--renumber-inodes"],
                   cwd=stage, stdin_data=b"".join(n.encode() + b"\0" for n in names), stdout_path=cpio)
        image = os.path.join(tmp, "initramfs.img")
        with open(cpio, "rb") as src, open(image, "wb") as raw:
            with gzip.GzipFile(filename="", mode="wb", fileobj=raw, mtime=0, compresslevel=6) as out:
                shutil.copyfileobj(src, out, 1 << 20)
        os.unlink(cpio)
        remove_tree(stage)
        return {
            "initramfs": "initramfs.img",
            "size": os.path.getsize(image),
            "kernel_version": kver,
            "modules": [os.path.basename(rel)[:-3] for rel in loaded],
            "builtin_modules": builtin,
            "ssh": bool(recipe["authorized_keys"]),
        }
    return build


def initramfs(recipe=None, cache_dir=None, force=False, check=False):
    """A small busybox initramfs for test guests (see the module documentation).

    Builds (or reuses) the kernel of ``recipe['kernel']`` first, as its
    modules must match; the result carries that kernel's vmlinuz too.
    """
    started = time.monotonic()
    cache = Cache(cache_dir)
    recipe = normalize_recipe("initramfs", recipe)
    kres = kernel(recipe["kernel"], cache_dir=cache.root, force=False, check=check)
    inputs = _initramfs_inputs(recipe, kres["key"])
    key = cache_key("initramfs", recipe, inputs)
    if check and kres["changed"]:
        meta, changed = None, True
    else:
        meta, changed = cache.build("initramfs", key, _build_initramfs(recipe, inputs, kres),
                                    describe=_describe(recipe, inputs), force=force, check=check)
    res = _result(cache, "initramfs", key, meta, changed or kres["changed"], recipe, inputs, started,
                  ("initramfs",))
    res["kernel"] = kres
    res["vmlinuz"] = kres.get("vmlinuz")
    res["kernel_version"] = kres.get("kernel_version")
    return res


# --------------------------------------------------------------------------
# rootfs


def _rootfs_inputs(runner):
    version = runner.run(["dpkg-query", "-W", "-f=${Version}", "debootstrap"], capture=True, check=False)
    return {"debootstrap": version.strip() or "unknown"}


_CHROOT_ENV = {
    "PATH": "/usr/sbin:/usr/bin:/sbin:/bin",
    "DEBIAN_FRONTEND": "noninteractive",
    "LC_ALL": "C",
    "HOME": "/root",
}


def _apt_in_chroot(runner, target, packages):
    """apt-get install in the chroot: unlike debootstrap's resolver it knows virtual
    packages (python3-cryptography needs python3-cffi-backend-api-min, for one)."""
    policy = os.path.join(target, "usr/sbin/policy-rc.d")
    # No service may start on the build machine from a maintainer script.
    _write(policy, "#!/bin/sh\nexit 101\n", 0o755)
    proc = os.path.join(target, "proc")
    runner.run(["mount", "-t", "proc", "proc", proc])
    try:
        apt = ["chroot", target, "apt-get", "-q", "-y", "-o", "Dpkg::Options::=--force-confold"]
        runner.run(apt + ["--no-install-recommends", "install"] + list(packages), env=_CHROOT_ENV)
    finally:
        runner.run(["umount", proc], check=False)
        os.unlink(policy)


def _build_rootfs(recipe):
    def build(tmp, runner):
        if os.geteuid() != 0:
            raise ArtifactError("building a rootfs needs root (debootstrap)")
        target = os.path.join(tmp, "root")
        argv = [_which("debootstrap"), "--variant=%s" % recipe["variant"],
                "--components=%s" % ",".join(recipe["components"]),
                recipe["suite"], target, recipe["mirror"]]
        try:
            try:
                runner.run(argv)
            except ArtifactError as exc:
                # debootstrap's own log names the failing package; it goes with the tree.
                detail = _tail(os.path.join(target, "debootstrap", "debootstrap.log"), 60)
                runner.note("--- debootstrap.log (tail)\n" + detail)
                raise ArtifactError("%s\n--- debootstrap.log (tail):\n%s" % (exc, detail))
            if recipe["packages"]:
                _apt_in_chroot(runner, target, recipe["packages"])
            # What apt-get clean removes (.debs, caches apt rebuilds); the lists stay for apt and Ansible.
            for junk in glob.glob(os.path.join(target, "var/cache/apt/archives/*.deb")) + \
                    glob.glob(os.path.join(target, "var/cache/apt/*.bin")):
                os.unlink(junk)
            # Nothing of the build machine stays in the image; systemd makes a
            # machine-id on first boot when the file is empty.
            _write(os.path.join(target, "etc/hostname"), "localhost\n")
            _write(os.path.join(target, "etc/resolv.conf"), "")
            if os.path.isfile(os.path.join(target, "etc/machine-id")):
                _write(os.path.join(target, "etc/machine-id"), "", 0o444)
            manifest = runner.run(["dpkg-query", "--admindir=%s" % os.path.join(target, "var/lib/dpkg"),
                                   "-W", "-f=${Package}\t${Version}\n"], capture=True)
            _write(os.path.join(tmp, "manifest.txt"), manifest)
            tarball = os.path.join(tmp, "rootfs.tar.zst")
            runner.run(["tar", "--one-file-system", "--numeric-owner", "--xattrs", "--xattrs-include=*",
                        "--zstd", "-C", target, "-cf", tarball, "."])
        finally:
            remove_tree(target)
        return {
            "tarball": "rootfs.tar.zst",
            "manifest": "manifest.txt",
            "size": os.path.getsize(tarball),
            "package_count": len(manifest.splitlines()),
        }
    return build


def rootfs(recipe=None, cache_dir=None, force=False, check=False):
    """A debootstrap'ed root file system as ``rootfs.tar.zst`` plus a package manifest.

    The mirror's state is not part of the key: a suite that moved on is
    picked up with ``force`` (or a new recipe).
    """
    started = time.monotonic()
    cache = Cache(cache_dir)
    recipe = normalize_recipe("rootfs", recipe)
    inputs = _rootfs_inputs(_Runner())
    key = cache_key("rootfs", recipe, inputs)
    meta, changed = cache.build("rootfs", key, _build_rootfs(recipe), describe=_describe(recipe, inputs),
                                force=force, check=check)
    return _result(cache, "rootfs", key, meta, changed, recipe, inputs, started, ("tarball", "manifest"))


# --------------------------------------------------------------------------
# container_image


_KEY_LABEL = "org.gridops.metal.artifact-key"


def _podman_image_id(image, fmt="{{.Id}}"):
    try:
        res = subprocess.run(["podman", "image", "inspect", "--format", fmt, image],
                             stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, check=False)
    except OSError:
        return None
    return res.stdout.decode().strip() if res.returncode == 0 else None


def container_rootfs_recipe(recipe):
    return {
        "suite": recipe["suite"],
        "mirror": recipe["mirror"],
        "components": recipe["components"],
        "variant": "minbase",
        "packages": sorted(set(CONTAINER_BASE_PACKAGES) | set(recipe["packages"])),
    }


def _build_container_image(image, key, rres, force):
    def build(tmp, runner):
        old_id = _podman_image_id(image)
        if old_id and not force and _podman_image_id(image, '{{ index .Labels "%s" }}' % _KEY_LABEL) == key:
            # Imported for this very key through another cache directory: adopt it.
            return {"image": image, "image_id": old_id, "rootfs_key": rres["key"]}
        out = runner.run(["podman", "import", "-q",
                          "--change", 'CMD ["/sbin/init"]',
                          "--change", "STOPSIGNAL SIGRTMIN+3",
                          "--change", "LABEL %s=%s" % (_KEY_LABEL, key),
                          "--message", "gridops.metal container_image %s" % key,
                          rres["tarball"], image], capture=True)
        image_id = _podman_image_id(image)
        if not image_id:
            raise ArtifactError("podman import gave no image %s: %s" % (image, out.strip()))
        if old_id and old_id != image_id:
            # The image this tag named before is now untagged: drop it unless a container uses it.
            runner.run(["podman", "image", "rm", old_id], check=False)
        return {"image": image, "image_id": image_id, "rootfs_key": rres["key"]}
    return build


def container_image(recipe=None, cache_dir=None, force=False, check=False):
    """A local podman image ``localhost/<name>:<key prefix>`` of a systemd rootfs.

    The image boots /sbin/init; run it with ``--systemd=always``.  The tag
    comes from the key, so a changed recipe gives a new image.
    """
    started = time.monotonic()
    cache = Cache(cache_dir)
    recipe = normalize_recipe("container_image", recipe)
    rres = rootfs(container_rootfs_recipe(recipe), cache_dir=cache.root, check=check)
    inputs = {"rootfs_key": rres["key"]}
    key = cache_key("container_image", recipe, inputs)
    image = "localhost/%s:%s" % (recipe["name"], key[:12])

    def valid(meta):
        return _podman_image_id(meta.get("image", "")) == meta.get("image_id")

    if check and rres["changed"]:
        meta, changed = None, True
    else:
        meta, changed = cache.build("container_image", key, _build_container_image(image, key, rres, force),
                                    describe=_describe(recipe, inputs), valid=valid, force=force, check=check)
    res = _result(cache, "container_image", key, meta, changed or rres["changed"], recipe, inputs, started)
    res["image"] = image
    res["rootfs"] = rres
    return res


# --------------------------------------------------------------------------
# image: what nodes are deployed with


_FIRST_BOOT_UNIT = """\
[Unit]
Description=gridops.metal first-boot script
ConditionPathExists=!/var/lib/gridops/first-boot.done
Wants=network-online.target
After=network-online.target

[Service]
Type=oneshot
RemainAfterExit=yes
ExecStart=/usr/local/lib/gridops/first-boot
ExecStartPost=/bin/sh -c 'mkdir -p /var/lib/gridops && touch /var/lib/gridops/first-boot.done'

[Install]
WantedBy=multi-user.target
"""

# Every node would otherwise share the build's ssh host keys: they are made on first boot.
_SSH_KEYS_UNIT = """\
[Unit]
Description=gridops.metal ssh host keys
ConditionPathExists=!/etc/ssh/ssh_host_ed25519_key
Before=ssh.service

[Service]
Type=oneshot
ExecStart=/usr/bin/ssh-keygen -A

[Install]
WantedBy=multi-user.target
"""

_IMAGE_TEMPLATE_HASH = hashlib.sha256((_FIRST_BOOT_UNIT + _SSH_KEYS_UNIT).encode()).hexdigest()


def image_rootfs_recipe(recipe):
    packages = set(recipe["packages"])
    if recipe["kernel"]:
        packages.add(recipe["kernel"])
    return {
        "suite": recipe["suite"],
        "mirror": recipe["mirror"],
        "variant": recipe["variant"],
        "components": recipe["components"],
        "packages": sorted(packages),
    }


def _place_files(target, files):
    """Write a recipe's files into a tree, refusing to leave it through a symlink."""
    for item in files:
        dest = os.path.join(target, item["path"].lstrip("/"))
        parent = os.path.realpath(os.path.dirname(dest))
        if not (parent + "/").startswith(os.path.realpath(target) + "/") or os.path.isdir(dest):
            raise ArtifactError("file %s would replace a directory or leave the image through a link" % item["path"])
        if os.path.lexists(dest):
            os.unlink(dest)
        if "src" in item:
            with open(item["src"], "rb") as fh:
                data = fh.read()
        else:
            data = item["content"]
        _write(dest, data, int(item["mode"], 8))


def _build_image(recipe, rres):
    def build(tmp, runner):
        if os.geteuid() != 0:
            raise ArtifactError("building an image needs root (device nodes and owners of the rootfs)")
        root = os.path.join(tmp, "root")
        os.mkdir(root)
        try:
            runner.run(["tar", "--numeric-owner", "--xattrs", "--xattrs-include=*", "--zstd", "-C", root,
                        "-xpf", rres["tarball"]])
            systemd = os.path.exists(os.path.join(root, "lib/systemd/systemd"))
            units = []
            if recipe["first_boot"]:
                if not systemd:
                    raise ArtifactError("image recipe: first_boot needs systemd in the image (add systemd-sysv)")
                _write(os.path.join(root, "usr/local/lib/gridops/first-boot"), recipe["first_boot"], 0o755)
                _write(os.path.join(root, "etc/systemd/system/gridops-first-boot.service"), _FIRST_BOOT_UNIT)
                units.append("gridops-first-boot.service")
            for key in glob.glob(os.path.join(root, "etc/ssh/ssh_host_*")):
                os.unlink(key)
            if systemd and os.path.exists(os.path.join(root, "usr/sbin/sshd")):
                _write(os.path.join(root, "etc/systemd/system/gridops-ssh-hostkeys.service"), _SSH_KEYS_UNIT)
                units.append("gridops-ssh-hostkeys.service")
            _place_files(root, recipe["files"])
            units += recipe["services"]
            if units:
                if not systemd:
                    raise ArtifactError("image recipe: services need systemd in the image (add systemd-sysv)")
                # Offline: systemctl only makes the [Install] links.
                runner.run(["chroot", root, "systemctl", "enable"] + units, env=_CHROOT_ENV)
            kernels = sorted(glob.glob(os.path.join(root, "boot", "vmlinuz-*")))
            if recipe["kernel"] and not kernels:
                raise ArtifactError("image recipe: kernel %s gave no /boot/vmlinuz-*" % recipe["kernel"])
            kernel_path = initrd_path = None
            if kernels:
                kernel_path = "/" + os.path.relpath(kernels[-1], root)
                initrd = os.path.join(root, "boot", "initrd.img-" + os.path.basename(kernels[-1])[len("vmlinuz-"):])
                if os.path.exists(initrd):
                    initrd_path = "/" + os.path.relpath(initrd, root)
            flag, suffix = _IMAGE_TAR[recipe["compression"]]
            tarball = os.path.join(tmp, "image" + suffix)
            argv = ["tar", "--numeric-owner", "--xattrs", "--xattrs-include=*", "--sort=name", "-C", root, "-cf",
                    tarball]
            runner.run(argv[:-2] + ([flag] if flag else []) + argv[-2:] + ["."])
        finally:
            remove_tree(root)
        shutil.copyfile(rres["manifest"], os.path.join(tmp, "manifest.txt"))
        return {
            "tarball": os.path.basename(tarball),
            "manifest": "manifest.txt",
            "sha256": sha256_file(tarball),
            "size": os.path.getsize(tarball),
            "compression": recipe["compression"],
            "boot_kernel": kernel_path,
            "boot_initrd": initrd_path,
            "package_count": rres.get("package_count"),
            "rootfs_key": rres["key"],
        }
    return build


def image(recipe=None, cache_dir=None, force=False, check=False):
    """An environment image: a rootfs (cached, shared with other recipes) with the recipe's
    files, enabled services and first-boot script, as one compressed tarball with its sha256.

    The result names the kernel and initrd inside the image (``boot_kernel``,
    ``boot_initrd``), as an environment description wants them.
    """
    started = time.monotonic()
    cache = Cache(cache_dir)
    recipe = normalize_recipe("image", recipe)
    for item in recipe["files"]:
        if "src" in item and not os.path.isfile(item["src"]):
            raise ArtifactError("image recipe: file %s: src %s is not a file" % (item["path"], item["src"]))
    rres = rootfs(image_rootfs_recipe(recipe), cache_dir=cache.root, check=check)
    inputs = {
        "rootfs_key": rres["key"],
        "templates": _IMAGE_TEMPLATE_HASH,
        "src_files": dict((f["src"], sha256_file(f["src"])) for f in recipe["files"] if "src" in f),
    }
    key = cache_key("image", recipe, inputs)
    if check and rres["changed"]:
        meta, changed = None, True
    else:
        meta, changed = cache.build("image", key, _build_image(recipe, rres), describe=_describe(recipe, inputs),
                                    force=force, check=check)
    res = _result(cache, "image", key, meta, changed or rres["changed"], recipe, inputs, started,
                  ("tarball", "manifest"))
    res["rootfs"] = rres
    return res


# --------------------------------------------------------------------------
# disk_image: a bootable Debian guest disk (systemd, sshd), for QEMU guests


DISK_IMAGE_CMDLINE = "root=/dev/vda rw console=ttyS0 net.ifnames=0 systemd.firstboot=off"
DISK_IMAGE_KEY_PARAMETER = "gridops.ssh_key"

# Root's authorized key comes from the kernel command line (base64 of the
# authorized_keys text), so one cached image serves every run with its own key.
_GUEST_SSH_SCRIPT = """\
#!/bin/sh
# gridops.metal guest: root's SSH key from gridops.ssh_key=<base64> on the kernel command line,
# and a host key of this guest's own.
set -e
key=
for word in $(cat /proc/cmdline); do
    case "$word" in gridops.ssh_key=*) key="${word#gridops.ssh_key=}" ;; esac
done
if [ -n "$key" ]; then
    install -d -m 0700 /root/.ssh
    printf '%s' "$key" | base64 -d > /root/.ssh/authorized_keys
    chmod 0600 /root/.ssh/authorized_keys
fi
[ -e /etc/ssh/ssh_host_ed25519_key ] || ssh-keygen -q -t ed25519 -N '' -f /etc/ssh/ssh_host_ed25519_key
"""

_GUEST_SSH_UNIT = """\
[Unit]
Description=gridops.metal guest: SSH host key and root's key from the kernel command line
Before=ssh.service

[Service]
Type=oneshot
RemainAfterExit=yes
ExecStart=/usr/local/sbin/gridops-guest-ssh

[Install]
WantedBy=ssh.service
"""

_GUEST_SSHD_CONF = """\
# gridops.metal guest: the host key made at boot, no DNS lookups of clients.
HostKey /etc/ssh/ssh_host_ed25519_key
UseDNS no
"""

_GUEST_NETWORK = """\
[Match]
Name=@INTERFACE@

[Network]
DHCP=ipv4
"""

_DISK_IMAGE_TEMPLATE_HASH = hashlib.sha256(
    (_GUEST_SSH_SCRIPT + _GUEST_SSH_UNIT + _GUEST_SSHD_CONF + _GUEST_NETWORK + DISK_IMAGE_CMDLINE).encode()).hexdigest()

# Timers and first-boot prompts that only slow a test guest down or wait for a console.
_DISK_IMAGE_MASKED = ("systemd-firstboot.service", "apt-daily.timer", "apt-daily-upgrade.timer",
                      "man-db.timer", "e2scrub_all.timer", "e2scrub_reap.service", "fstrim.timer")


def disk_rootfs_recipe(recipe):
    return {
        "suite": recipe["suite"],
        "mirror": recipe["mirror"],
        "components": recipe["components"],
        "variant": "minbase",
        "packages": sorted(set(DISK_IMAGE_BASE_PACKAGES) | set(recipe["packages"])),
    }


def _build_disk_image(recipe, rres):
    def build(tmp, runner):
        if os.geteuid() != 0:
            raise ArtifactError("building a disk image needs root (owners and device nodes of the rootfs)")
        root = os.path.join(tmp, "root")
        raw = os.path.join(tmp, "disk.raw")
        os.mkdir(root)
        try:
            runner.run(["tar", "--numeric-owner", "--xattrs", "--xattrs-include=*", "--zstd", "-C", root,
                        "-xpf", rres["tarball"]])
            kernels = sorted(glob.glob(os.path.join(root, "boot", "vmlinuz-*")))
            if not kernels:
                raise ArtifactError("disk_image: the rootfs has no /boot/vmlinuz-*")
            kver = os.path.basename(kernels[-1])[len("vmlinuz-"):]
            _write(os.path.join(root, "etc/fstab"), "/dev/vda / ext4 rw,errors=remount-ro 0 1\n")
            _write(os.path.join(root, "etc/hostname"), recipe["hostname"] + "\n")
            _write(os.path.join(root, "etc/hosts"), "127.0.0.1 localhost\n127.0.1.1 %s\n::1 localhost ip6-localhost\n"
                   % recipe["hostname"])
            _write(os.path.join(root, "usr/local/sbin/gridops-guest-ssh"), _GUEST_SSH_SCRIPT, 0o755)
            _write(os.path.join(root, "etc/systemd/system/gridops-guest-ssh.service"), _GUEST_SSH_UNIT)
            _write(os.path.join(root, "etc/ssh/sshd_config.d/gridops-guest.conf"), _GUEST_SSHD_CONF)
            for key in glob.glob(os.path.join(root, "etc/ssh/ssh_host_*")):
                os.unlink(key)
            units = ["gridops-guest-ssh.service"]
            if recipe["interface"]:
                _write(os.path.join(root, "etc/systemd/network/80-gridops-guest.network"),
                       _GUEST_NETWORK.replace("@INTERFACE@", recipe["interface"]))
                units.append("systemd-networkd.service")
            _write(os.path.join(root, "etc/initramfs-tools/conf.d/gridops-guest.conf"), "MODULES=list\n")
            _write(os.path.join(root, "etc/initramfs-tools/modules"), "".join(m + "\n" for m in recipe["modules"]))
            _place_files(root, recipe["files"])
            # Offline: systemctl only makes (or masks with) links.
            runner.run(["chroot", root, "systemctl", "enable"] + units, env=_CHROOT_ENV)
            runner.run(["chroot", root, "systemctl", "mask"] + list(_DISK_IMAGE_MASKED), env=_CHROOT_ENV)
            proc = os.path.join(root, "proc")
            runner.run(["mount", "-t", "proc", "proc", proc])
            try:
                runner.run(["chroot", root, "update-initramfs", "-u", "-k", kver], env=_CHROOT_ENV)
            finally:
                runner.run(["umount", proc], check=False)
            shutil.copyfile(kernels[-1], os.path.join(tmp, "vmlinuz"))
            shutil.copyfile(os.path.join(root, "boot", "initrd.img-" + kver), os.path.join(tmp, "initrd.img"))
            runner.run([_which("mke2fs"), "-q", "-F", "-t", "ext4", "-L", "gridops-root", "-E", "root_owner=0:0",
                        "-d", root, raw, recipe["size"]])
        finally:
            remove_tree(root)
        runner.run([_which("qemu-img"), "convert", "-f", "raw", "-O", "qcow2", raw, os.path.join(tmp, "disk.qcow2")])
        os.unlink(raw)
        shutil.copyfile(rres["manifest"], os.path.join(tmp, "manifest.txt"))
        return {
            "disk": "disk.qcow2",
            "vmlinuz": "vmlinuz",
            "initrd": "initrd.img",
            "manifest": "manifest.txt",
            "kernel_version": kver,
            "cmdline": DISK_IMAGE_CMDLINE,
            "ssh_key_parameter": DISK_IMAGE_KEY_PARAMETER,
            "disk_bytes": os.path.getsize(os.path.join(tmp, "disk.qcow2")),
            "package_count": rres.get("package_count"),
            "rootfs_key": rres["key"],
        }
    return build


def disk_image(recipe=None, cache_dir=None, force=False, check=False):
    """A qcow2 disk of a Debian system that QEMU boots with the kernel and initrd next to it.

    The root file system is the whole disk (``/dev/vda``, ext4, no partition
    table, no boot loader), made with ``mke2fs -d`` without loop mounts.  Boot
    with ``-kernel vmlinuz -initrd initrd.img -append "<cmdline> gridops.ssh_key=<base64>"``
    to let a key in as root; systemd-networkd asks DHCP on ``interface``.
    """
    started = time.monotonic()
    cache = Cache(cache_dir)
    recipe = normalize_recipe("disk_image", recipe)
    for item in recipe["files"]:
        if "src" in item and not os.path.isfile(item["src"]):
            raise ArtifactError("disk_image recipe: file %s: src %s is not a file" % (item["path"], item["src"]))
    rres = rootfs(disk_rootfs_recipe(recipe), cache_dir=cache.root, check=check)
    inputs = {
        "rootfs_key": rres["key"],
        "templates": _DISK_IMAGE_TEMPLATE_HASH,
        "src_files": dict((f["src"], sha256_file(f["src"])) for f in recipe["files"] if "src" in f),
    }
    key = cache_key("disk_image", recipe, inputs)
    if check and rres["changed"]:
        meta, changed = None, True
    else:
        meta, changed = cache.build("disk_image", key, _build_disk_image(recipe, rres),
                                    describe=_describe(recipe, inputs), force=force, check=check)
    res = _result(cache, "disk_image", key, meta, changed or rres["changed"], recipe, inputs, started,
                  ("disk", "vmlinuz", "initrd", "manifest"))
    res["rootfs"] = rres
    return res


BUILDERS = {
    "kernel": kernel,
    "initramfs": initramfs,
    "rootfs": rootfs,
    "container_image": container_image,
    "image": image,
    "disk_image": disk_image,
}


def build(kind, recipe=None, cache_dir=None, force=False, check=False):
    """Dispatch to the builder of kind."""
    if kind not in BUILDERS:
        raise ArtifactError("unknown artifact kind %r (known: %s)" % (kind, ", ".join(KINDS)))
    return BUILDERS[kind](recipe, cache_dir=cache_dir, force=force, check=check)
