# -*- coding: utf-8 -*-
# Copyright: (c) 2026, gridops.metal developers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

"""Environment descriptions (their schema and its validation) and the environment registry.

An environment (Kadeploy's kaenv) is what a node can be deployed with: an image
(a tar archive or a raw disk image, possibly compressed) and how to boot and
finish it.  :data:`SCHEMA` is the published JSON Schema of a description
(``docs/environment.schema.json`` is generated from it); :func:`validate`
checks a description against it with every problem named by its field
(``image.sha256``, ``postinstall[0].script``), and :func:`verify_image` checks
it against the deploy server's files: the image exists, its checksum and
compression are the described ones, and the kernel and initrd to boot are in it.

The registry (``_registry``) keeps environments per owner, unique by
(owner, name, version), with a visibility:

* ``private``: only its owner sees it;
* ``shared``: every user sees it when naming its owner (``owner=alice``);
* ``public``: every user sees it in their list.

Every call is one transaction; a refused call (:class:`Refused`) leaves the
registry as it was.
"""

from __future__ import absolute_import, division, print_function
__metaclass__ = type

import contextlib
import difflib
import hashlib
import json
import os
import re
import shutil
import subprocess
import tarfile

from ansible_collections.gridops.metal.plugins.module_utils._registry import (
    Refused, check_name, isotime, short, utcnow,
)

VISIBILITIES = ("private", "shared", "public")
IMAGE_KINDS = ("tar", "dd")
COMPRESSIONS = ("none", "gzip", "xz", "zstd")
FILESYSTEMS = ("ext2", "ext3", "ext4", "xfs")
NAME_PATTERN = "^[a-z0-9][a-z0-9._-]{0,63}$"
ABSOLUTE_PATH_PATTERN = "^/[^\\x00]*$"

SCHEMA_ID = "https://example.invalid/gridops/metal/environment.schema.json"

SCHEMA = {
    "$schema": "https://json-schema.org/draft/2020-12/schema",
    "$id": SCHEMA_ID,
    "title": "gridops.metal environment description",
    "description": "What a node can be deployed with: an image, how to boot it, and how to finish it "
                   "(Kadeploy's environment). Registered on the deploy server by the gridops.metal.environment module.",
    "type": "object",
    "additionalProperties": False,
    "required": ["name", "author", "os", "image"],
    "properties": {
        "name": {
            "title": "a name of lower-case letters, digits, '.', '_' and '-'",
            "description": "The environment's name, unique with its version among its owner's environments.",
            "type": "string", "pattern": NAME_PATTERN,
        },
        "version": {
            "title": "a version number",
            "description": "Omitted: 1 when added, the next version when updated.",
            "type": "integer", "minimum": 1,
        },
        "description": {"title": "a text", "description": "What the environment is.", "type": "string",
                        "maxLength": 4096},
        "author": {"title": "a name or an e-mail address", "description": "Who made the environment.",
                   "type": "string", "minLength": 1, "maxLength": 256},
        "visibility": {
            "title": "a visibility",
            "description": "Who sees the environment. private: its owner only; shared: every user naming its owner; "
                           "public: every user.",
            "enum": list(VISIBILITIES), "default": "private",
        },
        "os": {
            "title": "a name such as debian12",
            "description": "The operating system, for example debian12, linux, other.",
            "type": "string", "pattern": "^[a-z0-9][a-z0-9._-]{0,63}$",
        },
        "image": {
            "title": "an image",
            "description": "The file deployed onto the nodes.",
            "type": "object",
            "additionalProperties": False,
            "required": ["file", "kind", "compression", "sha256"],
            "properties": {
                "file": {"title": "an absolute path on the deploy server",
                         "description": "The image file on the deploy server.",
                         "type": "string", "pattern": ABSOLUTE_PATH_PATTERN},
                "kind": {"title": "an image kind",
                         "description": "tar: a file system tree, extracted into a new file system; "
                                        "dd: a raw disk or partition image, written as it is.",
                         "enum": list(IMAGE_KINDS)},
                "compression": {"title": "a compression", "description": "The compression of the file.",
                                "enum": list(COMPRESSIONS)},
                "sha256": {"title": "64 lower-case hexadecimal digits", "description": "The sha256 of the file.",
                           "type": "string", "pattern": "^[0-9a-f]{64}$"},
                "size": {"title": "a size in bytes",
                         "description": "The size of the file (recorded on registration, checked when given).",
                         "type": "integer", "minimum": 0},
            },
        },
        "boot": {
            "title": "a boot description",
            "description": "How the deployed system boots (tar images).",
            "type": "object",
            "additionalProperties": False,
            "required": ["kernel"],
            "properties": {
                "kernel": {"title": "an absolute path inside the image",
                           "description": "The kernel (symbolic links such as /vmlinuz are followed).",
                           "type": "string", "pattern": ABSOLUTE_PATH_PATTERN},
                "initrd": {"title": "an absolute path inside the image", "description": "The initrd.",
                           "type": "string", "pattern": ABSOLUTE_PATH_PATTERN},
                "params": {"title": "a kernel command line", "description": "Kernel parameters.",
                           "type": "string", "default": ""},
            },
        },
        "partition_type": {
            "title": "a partition type",
            "description": "MBR partition type of the deployed partition (131 = 0x83, Linux).",
            "type": "integer", "minimum": 1, "maximum": 255, "default": 131,
        },
        "filesystem": {"title": "a file system", "description": "The file system a tar image is extracted into.",
                       "enum": list(FILESYSTEMS)},
        "postinstall": {
            "title": "a list of hooks",
            "description": "Scripts run in the deploy environment after the image is written, with the new "
                           "system mounted at $GRIDOPS_ROOT.",
            "type": "array",
            "default": [],
            "items": {
                "type": "object",
                "additionalProperties": False,
                "required": ["script"],
                "properties": {
                    "name": {"title": "a name", "description": "The hook's name (default: the script's).",
                             "type": "string", "minLength": 1},
                    "script": {"title": "an absolute path on the deploy server",
                               "description": "The script, copied to the node and run there.",
                               "type": "string", "pattern": ABSOLUTE_PATH_PATTERN},
                    "args": {"title": "a text", "description": "Its arguments.", "type": "string", "default": ""},
                },
            },
        },
    },
    "allOf": [
        {
            "if": {"properties": {"image": {"properties": {"kind": {"const": "tar"}}, "required": ["kind"]}},
                   "required": ["image"]},
            "then": {"required": ["boot", "filesystem"]},
        },
    ],
}


# --------------------------------------------------------------------------
# Schema validation (the subset of JSON Schema that SCHEMA uses)


def _type_name(value):
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int):
        return "integer"
    if isinstance(value, float):
        return "number"
    if isinstance(value, str):
        return "string"
    if isinstance(value, (list, tuple)):
        return "array"
    if isinstance(value, dict):
        return "object"
    return type(value).__name__


_ARTICLES = {"integer": "an integer", "object": "a mapping", "array": "a list", "string": "a string",
             "boolean": "a boolean", "number": "a number"}


def _join(path, key):
    if isinstance(key, int):
        return "%s[%d]" % (path, key)
    return "%s.%s" % (path, key) if path else key


def _check(schema, value, path, errors):
    """Append (field, message) for every way value breaks schema."""
    if "type" in schema:
        wanted = schema["type"]
        actual = _type_name(value)
        if actual != wanted and not (wanted == "number" and actual == "integer"):
            shown = actual if value is None else "%s %s" % (actual, short(value))
            errors.append((path, "must be %s, not %s" % (_ARTICLES.get(wanted, wanted), shown)))
            return
    if "const" in schema and value != schema["const"]:
        errors.append((path, "must be %s, not %s" % (short(schema["const"]), short(value))))
    if "enum" in schema and (isinstance(value, (dict, list)) or value not in schema["enum"]):
        errors.append((path, "must be one of %s, not %s" % (", ".join(schema["enum"]), short(value))))
    if isinstance(value, str):
        if "minLength" in schema and len(value) < schema["minLength"]:
            errors.append((path, "must not be empty" if schema["minLength"] == 1 else
                           "must have at least %d characters" % schema["minLength"]))
        if "maxLength" in schema and len(value) > schema["maxLength"]:
            errors.append((path, "must have at most %d characters" % schema["maxLength"]))
        if "pattern" in schema and not re.search(schema["pattern"], value):
            title = schema.get("title", "a valid value")
            errors.append((path, "expected %s (pattern %s), not %s" % (title, schema["pattern"], short(value))))
    if isinstance(value, int) and not isinstance(value, bool):
        if "minimum" in schema and value < schema["minimum"]:
            errors.append((path, "must be at least %d, not %d" % (schema["minimum"], value)))
        if "maximum" in schema and value > schema["maximum"]:
            errors.append((path, "must be at most %d, not %d" % (schema["maximum"], value)))
    if isinstance(value, dict):
        props = schema.get("properties", {})
        for name in schema.get("required", ()):
            if name not in value:
                errors.append((_join(path, name), "required field missing"))
        for name in sorted(value, key=str):
            if name in props:
                _check(props[name], value[name], _join(path, str(name)), errors)
            elif schema.get("additionalProperties") is False:
                close = difflib.get_close_matches(str(name), list(props), n=1)
                hint = " (did you mean %s?)" % close[0] if close else " (known: %s)" % ", ".join(sorted(props))
                errors.append((_join(path, str(name)), "unknown field%s" % hint))
    if isinstance(value, (list, tuple)) and "items" in schema:
        for index, item in enumerate(value):
            _check(schema["items"], item, _join(path, index), errors)
    for sub in schema.get("allOf", ()):
        if "if" in sub:
            probe = []
            _check(sub["if"], value, path, probe)
            if not probe and "then" in sub:
                _check(sub["then"], value, path, errors)
        else:
            _check(sub, value, path, errors)


def validate(description, schema=None):
    """Every problem of description as a list of (field, message); empty when valid."""
    errors = []
    _check(schema or SCHEMA, description, "", errors)
    # A field missing because its parent is mistyped is one problem, not two.
    return [(field or "(description)", message) for field, message in errors]


def _tar_kind_fields(description):
    """Refinements that JSON Schema's allOf states but whose message should name the field."""
    return [(f, m.replace("required field missing", "required for tar images"))
            for f, m in validate(description, {"allOf": SCHEMA["allOf"]})]


def normalize(description):
    """The description checked and with its defaults filled in; raises Refused naming every bad field."""
    if not isinstance(description, dict):
        raise Refused("(description)", "must be a mapping, not %s" % _type_name(description))
    errors = validate(description, dict(SCHEMA, allOf=[]))
    if not errors:
        errors = _tar_kind_fields(description)
    if errors:
        raise Refused(errors[0][0], errors[0][1], errors)
    out = json.loads(json.dumps(description))
    out.setdefault("visibility", "private")
    out.setdefault("partition_type", 131)
    out.setdefault("postinstall", [])
    out.setdefault("description", "")
    if "boot" in out:
        out["boot"].setdefault("params", "")
    for hook in out["postinstall"]:
        hook.setdefault("args", "")
        hook.setdefault("name", os.path.basename(hook["script"]))
    return out


# --------------------------------------------------------------------------
# The image on the deploy server


_MAGIC = (("gzip", b"\x1f\x8b"), ("xz", b"\xfd7zXZ\x00"), ("zstd", b"\x28\xb5\x2f\xfd"), ("bzip2", b"BZh"))
_TARFILE_MODES = {"none": "r|", "gzip": "r|gz", "xz": "r|xz"}
_DECOMPRESS = {"zstd": ["zstd", "-dc"]}


def detect_compression(path):
    """gzip, xz, zstd, bzip2 by magic number; none for a plain tar archive; None when unknown (a raw image)."""
    with open(path, "rb") as fh:
        head = fh.read(512)
    for name, magic in _MAGIC:
        if head.startswith(magic):
            return name
    if head[257:262] == b"ustar":
        return "none"
    return None


def sha256_file(path):
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _clean(name):
    parts = [p for p in name.split("/") if p and p != "."]
    return "/".join(parts)


@contextlib.contextmanager
def _tar_stream(path, compression):
    """A tarfile reading path in stream mode (zstd through the zstd program, the others in Python)."""
    if compression in _TARFILE_MODES:
        with tarfile.open(path, _TARFILE_MODES[compression]) as tf:
            yield tf
        return
    argv = _DECOMPRESS[compression]
    if not shutil.which(argv[0]):
        raise Refused("image.compression", "%s is needed on the deploy server to read %s images"
                      % (argv[0], compression))
    proc = subprocess.Popen(argv + [path], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        with tarfile.open(fileobj=proc.stdout, mode="r|") as tf:
            yield tf
    finally:
        proc.stdout.close()
        proc.kill()
        proc.wait()
        proc.stderr.close()


def tar_entries(path, compression):
    """{clean name: (type, linkname)} of every member of a tar archive, and the set of its directories."""
    entries, dirs = {}, set()
    try:
        with _tar_stream(path, compression) as tf:
            for member in tf:
                name = _clean(member.name)
                if not name:
                    continue
                kind = "dir" if member.isdir() else "symlink" if member.issym() else "file"
                entries[name] = (kind, member.linkname)
                parts = name.split("/")
                for n in range(1, len(parts)):
                    dirs.add("/".join(parts[:n]))
                if kind == "dir":
                    dirs.add(name)
    except (tarfile.TarError, EOFError, OSError) as exc:
        raise Refused("image.file", "%s is not a readable %s tar archive: %s"
                      % (path, "uncompressed" if compression == "none" else compression, exc))
    return entries, dirs


def resolve_in_tar(entries, dirs, path):
    """The archive name a path inside the image leads to, following symbolic links; None when absent."""
    parts = [p for p in path.split("/") if p and p != "."]
    resolved, hops = [], 0
    while parts:
        part = parts.pop(0)
        if part == "..":
            resolved = resolved[:-1]
            continue
        current = "/".join(resolved + [part])
        kind, link = entries.get(current, ("dir" if current in dirs else None, ""))
        if kind is None:
            return None
        if kind == "symlink":
            hops += 1
            if hops > 40:
                return None
            if link.startswith("/"):
                resolved = []
            parts = [p for p in link.split("/") if p and p != "."] + parts
            continue
        resolved.append(part)
    name = "/".join(resolved)
    return name if entries.get(name, (None,))[0] == "file" else None


def verify_image(description):
    """Check a normalized description against the deploy server's files; return the image's size.

    The file exists, its sha256 and compression are the described ones, the
    boot kernel and initrd are in a tar image, and the postinstall scripts exist.
    """
    image = description["image"]
    path = image["file"]
    if not os.path.isfile(path):
        raise Refused("image.file", "%s: no such file on the deploy server" % path)
    size = os.path.getsize(path)
    if image.get("size") is not None and image["size"] != size:
        raise Refused("image.size", "the image has %d bytes, the description says %d" % (size, image["size"]))
    actual = sha256_file(path)
    if actual != image["sha256"]:
        raise Refused("image.sha256", "checksum mismatch: %s has sha256 %s, the description says %s"
                      % (path, actual, image["sha256"]))
    found = detect_compression(path)
    declared = image["compression"]
    if declared != "none" and found != declared:
        raise Refused("image.compression", "%s is not %s-compressed (%s)"
                      % (path, declared, "it looks %s-compressed" % found if found not in (None, "none")
                         else "it looks uncompressed"))
    if declared == "none" and found not in (None, "none"):
        raise Refused("image.compression", "%s is %s-compressed, the description says none" % (path, found))
    if image["kind"] == "tar":
        if declared == "none" and found is None:
            raise Refused("image.kind", "%s is not a tar archive" % path)
        entries, dirs = tar_entries(path, declared)
        for field in ("kernel", "initrd"):
            inside = description.get("boot", {}).get(field)
            if inside and resolve_in_tar(entries, dirs, inside) is None:
                raise Refused("boot.%s" % field, "%s is not in the image %s" % (inside, path))
    for index, hook in enumerate(description.get("postinstall", [])):
        if not os.path.isfile(hook["script"]):
            raise Refused("postinstall[%d].script" % index, "%s: no such file on the deploy server" % hook["script"])
    return size


# --------------------------------------------------------------------------
# The registry


def _identity(description):
    """What makes two versions the same environment: everything but the version and the recorded size."""
    desc = dict(description)
    desc.pop("version", None)
    desc["image"] = dict((k, v) for k, v in desc["image"].items() if k != "size")
    return json.dumps(desc, sort_keys=True)


def _record(row):
    env = json.loads(row["description"])
    env["owner"] = row["owner"]
    env["registered"] = row["registered"]
    return env


def _rows(conn, owner, name):
    return conn.execute("SELECT * FROM environments WHERE owner = ? AND name = ? ORDER BY version",
                        (owner, name)).fetchall()


def _insert(conn, owner, desc):
    conn.execute(
        "INSERT INTO environments (owner, name, version, visibility, image_file, image_kind, image_sha256, "
        "image_size, description, registered) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
        (owner, desc["name"], desc["version"], desc["visibility"], desc["image"]["file"], desc["image"]["kind"],
         desc["image"]["sha256"], desc["image"]["size"], json.dumps(desc, sort_keys=True), isotime(utcnow())))


def _dump(env):
    return json.dumps(env, indent=2, sort_keys=True) + "\n" if env else ""


def _diff(before, after, name):
    return {"before": _dump(before), "after": _dump(after),
            "before_header": "%s (registry)" % name, "after_header": "%s (registry)" % name}


def _plan(reg, description, user, update):
    """(normalized description with its version, existing row of that version or None, latest row or None)."""
    check_name("user", user)
    desc = normalize(description)
    with reg.transaction() as conn:
        rows = _rows(conn, user, desc["name"])
    latest = rows[-1] if rows else None
    if update:
        if latest is None:
            raise Refused("name", "%s has no environment %r to update (add it first)" % (user, desc["name"]))
        if "version" not in desc:
            if _identity(json.loads(latest["description"])) == _identity(desc):
                return dict(desc, version=latest["version"]), latest, latest
            desc["version"] = latest["version"] + 1
    else:
        desc.setdefault("version", 1)
    same = [r for r in rows if r["version"] == desc["version"]]
    existing = same[0] if same else None
    if update and existing is None and desc["version"] <= latest["version"]:
        raise Refused("version", "%d is not newer than %s's latest version of %s (%d)"
                      % (desc["version"], user, desc["name"], latest["version"]))
    return desc, existing, latest


def add(reg, description, user, update=False):
    """Register a description (``update``: as a new version of an existing environment).

    Identical to the registered version: unchanged.  Same owner, name and
    version with another content: refused (``version``).  The image is
    verified before anything is written.
    """
    desc, existing, latest = _plan(reg, description, user, update)
    if existing is not None:
        if _identity(json.loads(existing["description"])) == _identity(desc):
            env = _record(existing)
            return {"changed": False, "environment": env, "diff": _diff(env, env, desc["name"])}
        raise Refused("version", "%s version %d of %s is already registered with another content "
                      "(duplicate name/version; %s)" % (desc["name"], desc["version"], user,
                                                        "give a new version" if update else "use update"))
    desc["image"]["size"] = verify_image(desc)
    with reg.transaction() as conn:
        # Checked again under the write lock: another call may have added it meanwhile.
        if conn.execute("SELECT 1 FROM environments WHERE owner = ? AND name = ? AND version = ?",
                        (user, desc["name"], desc["version"])).fetchone():
            raise Refused("version", "%s version %d of %s is already registered" % (desc["name"], desc["version"], user))
        _insert(conn, user, desc)
        row = conn.execute("SELECT * FROM environments WHERE owner = ? AND name = ? AND version = ?",
                           (user, desc["name"], desc["version"])).fetchone()
        env = _record(row)
    before = _record(latest) if latest is not None else None
    return {"changed": True, "environment": env, "diff": _diff(before, env, desc["name"])}


def remove(reg, name, user, version=None):
    """Remove user's environment name (one version, or all); returns the removed ones."""
    check_name("user", user)
    check_name("name", name, NAME_PATTERN, "an environment name")
    with reg.transaction() as conn:
        rows = [r for r in _rows(conn, user, name) if version is None or r["version"] == version]
        for row in rows:
            conn.execute("DELETE FROM environments WHERE id = ?", (row["id"],))
    removed = [_record(r) for r in rows]
    diff = _diff(removed[-1] if removed else None, None, name)
    return {"changed": bool(rows), "removed": removed, "diff": diff}


def _visible(row, user, owner):
    if row["owner"] == user:
        return owner in (None, user)
    if owner is None:
        return row["visibility"] == "public"
    return row["owner"] == owner and row["visibility"] in ("shared", "public")


def list_environments(reg, user, owner=None, name=None, all_versions=False):
    """Environments visible to user: their own and the public ones; with owner, that owner's shared and public ones."""
    check_name("user", user)
    if owner is not None:
        check_name("owner", owner)
    query, args = "SELECT * FROM environments", []
    if name is not None:
        query, args = query + " WHERE name = ?", [name]
    with reg.transaction() as conn:
        rows = [r for r in conn.execute(query + " ORDER BY name, owner, version", args) if _visible(r, user, owner)]
    if not all_versions:
        latest = {}
        for row in rows:
            latest[(row["name"], row["owner"])] = row
        rows = [latest[k] for k in sorted(latest)]
    return [_record(r) for r in rows]


def show(reg, name, user, owner=None, version=None):
    """One environment visible to user: their own first, else a public one (or owner's shared one)."""
    check_name("name", name, NAME_PATTERN, "an environment name")
    found = [e for e in list_environments(reg, user, owner=owner, name=name, all_versions=True)
             if version is None or e["version"] == version]
    if owner is None and any(e["owner"] == user for e in found):
        found = [e for e in found if e["owner"] == user]
    owners = sorted(set(e["owner"] for e in found))
    if not found:
        what = "%s version %d" % (name, version) if version is not None else name
        whose = " of %s" % owner if owner else ""
        raise Refused("name", "no environment %s%s visible to %s" % (what, whose, user))
    if len(owners) > 1:
        raise Refused("owner", "%s is public from several owners (%s): name one" % (name, ", ".join(owners)))
    return found[-1]
