#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: (c) 2026, gridops.metal developers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import absolute_import, division, print_function
__metaclass__ = type

DOCUMENTATION = r"""
---
module: environment
short_description: Add, update, remove, list and show deployment environments in the deploy server's registry
version_added: 0.1.0
description:
  - Manages the environments nodes can be deployed with (Kadeploy's C(kaenv)) in the registry of the deploy
    server, an embedded SQLite database (O(registry)) that also holds the deployment rights
    (M(gridops.metal.rights)) and the deployment history.
  - An environment description is a YAML mapping whose schema is published in the collection as
    C(docs/environment.schema.json) and explained in C(docs/environments.md) - name, version, description,
    author, visibility, image (file, kind, compression, sha256), boot (kernel, initrd, params),
    partition type, file system, os and postinstall hooks.
  - A description with a missing, unknown or mistyped field is refused with a message naming the field
    (C(image.sha256), C(postinstall[0].script)); so is an image whose checksum or compression is not the
    described one, a boot kernel or initrd that is not in a tar image, a postinstall script that is not on
    the deploy server, and a name and version that its owner already registered with another content.
  - Environments belong to the user who registers them (O(user)); they are unique by owner, name and version.
    Visibility, enforced when listing and showing for a user, is V(private) (its owner only), V(shared)
    (every user who names its owner with O(owner)) or V(public) (every user).
  - Every call is one transaction; after a refused call the registry is unchanged.
  - Runs on the deploy server, where the images are.
author:
  - gridops.metal developers (@gridops)
options:
  operation:
    description:
      - V(add) registers O(description) (version 1 when it has none). The same description again changes
        nothing; the same name and version with another content is refused.
      - V(update) registers O(description) as a new version of an existing environment of O(user) (the next
        version when it has none, and nothing when it is the same as the latest version).
      - V(remove) removes version O(version) of O(user)'s environment O(name), or all its versions.
      - V(list) returns the environments visible to O(user), the latest version of each unless O(all_versions).
      - V(show) returns one environment visible to O(user) (the latest version unless O(version)).
    type: str
    choices: [add, update, remove, list, show]
    default: add
  description:
    description:
      - The environment description, for O(operation=add) and O(operation=update).
      - Read one from a YAML file on the controller with C(lookup('ansible.builtin.file', 'x.yml') | from_yaml).
    type: dict
  src:
    description:
      - A YAML (or JSON) file on the deploy server holding the description, instead of O(description).
      - YAML needs PyYAML on the deploy server (Debian's C(python3-yaml)).
    type: path
  name:
    description:
      - The environment, for O(operation=remove) and O(operation=show); for O(operation=list), only this one.
    type: str
  version:
    description:
      - The version, for O(operation=remove) (default all versions) and O(operation=show) (default the latest).
    type: int
  owner:
    description:
      - For O(operation=list) and O(operation=show), the environments of this user (their V(shared) and
        V(public) ones, or all of them when it is O(user)).
    type: str
  all_versions:
    description: For O(operation=list), every version rather than the latest one of each environment.
    type: bool
    default: false
  user:
    description:
      - The user on whose behalf the call is made, who owns what is added, updated or removed.
      - Defaults to the user the module runs as.
    type: str
  registry:
    description: The registry database; created (with its directory) when missing.
    type: path
    default: /var/lib/gridops-metal/registry.sqlite
attributes:
  check_mode:
    support: full
    description: Runs the whole call, checks and verification of the image included, then rolls the transaction back.
  diff_mode:
    support: full
    description: Shows the environment before and after (V(add), V(update), V(remove)).
notes:
  - Call it by its full name, C(gridops.metal.environment); a bare C(environment) key in a task is Ansible's
    keyword for environment variables.
  - The image checksum is computed on every V(add) and V(update) that registers something, which reads the
    whole image; a tar image is also read through to find the boot kernel and initrd.
requirements:
  - zstd on the deploy server, to look into zstd-compressed tar images
seealso:
  - module: gridops.metal.rights
  - name: Environment descriptions
    description: The fields, the published schema and the registry (docs/environments.md in the collection).
    link: https://example.invalid/gridops/metal/docs/environments.md
"""

EXAMPLES = r"""
- name: Register an environment from a description kept with the playbook
  gridops.metal.environment:
    description: "{{ lookup('ansible.builtin.file', 'environments/debian12.yml') | from_yaml }}"
    user: alice

- name: Register an image written on the deploy server
  gridops.metal.environment:
    user: alice
    description:
      name: debian12-hpc
      version: 3
      description: Debian 12 with the site's MPI stack
      author: alice@example.org
      visibility: shared
      os: debian12
      image:
        file: /var/lib/gridops-metal/images/debian12-hpc-3.tar.zst
        kind: tar
        compression: zstd
        sha256: 4b0c9e5d1b1e7e8f6f6e0f2f1d5e3c0a9b8c7d6e5f4a3b2c1d0e9f8a7b6c5d4e
      boot:
        kernel: /vmlinuz
        initrd: /initrd.img
        params: console=ttyS0,115200
      filesystem: ext4
      partition_type: 0x83
      postinstall:
        - script: /etc/gridops-metal/postinstall/site.sh

- name: A new version of it, whose number comes after the latest
  gridops.metal.environment:
    operation: update
    user: alice
    src: /var/lib/gridops-metal/images/debian12-hpc.yml

- name: What bob may deploy (his own environments and the public ones)
  gridops.metal.environment:
    operation: list
    user: bob
  register: bob_envs

- name: Alice's shared environment, as bob sees it
  gridops.metal.environment:
    operation: show
    name: debian12-hpc
    owner: alice
    user: bob

- name: Remove version 1
  gridops.metal.environment:
    operation: remove
    name: debian12-hpc
    version: 1
    user: alice
"""

RETURN = r"""
environment:
  description: The environment added, updated (or left as it was) or shown, its description with C(owner) and C(registered).
  returned: when O(operation) is V(add), V(update) or V(show)
  type: dict
  sample:
    name: debian12
    version: 1
    owner: root
    registered: "2026-05-01T12:00:00Z"
    visibility: public
    image: {file: /var/lib/gridops-metal/images/debian12-1.tar.zst, kind: tar, compression: zstd, sha256: "4b0c...", size: 211812352}
environments:
  description: The environments visible to O(user), sorted by name and owner.
  returned: when O(operation=list)
  type: list
  elements: dict
removed:
  description: The environments removed.
  returned: when O(operation=remove)
  type: list
  elements: dict
field:
  description: The field at fault when the call is refused (for example C(image.sha256)).
  returned: failure
  type: str
  sample: image.sha256
errors:
  description: Every problem found in a refused description, as C(field) and C(message).
  returned: failure
  type: list
  elements: dict
"""

import json
import os
import pwd

from ansible.module_utils.basic import AnsibleModule, missing_required_lib
from ansible_collections.gridops.metal.plugins.module_utils import _environments, _registry

try:
    import yaml
except ImportError:
    HAS_YAML = False
else:
    HAS_YAML = True


def read_src(module, path):
    try:
        with open(path) as fh:
            text = fh.read()
    except (IOError, OSError) as exc:
        module.fail_json(msg="src: cannot read %s: %s" % (path, exc), field="src")
    try:
        return json.loads(text)
    except ValueError:
        pass
    if not HAS_YAML:
        module.fail_json(msg=missing_required_lib("PyYAML (python3-yaml) to read %s" % path), field="src")
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as exc:
        module.fail_json(msg="src: %s is not YAML: %s" % (path, exc), field="src")


def run(module, reg, user):
    params = module.params
    operation = params["operation"]
    if operation in ("add", "update"):
        description = params["description"]
        if params["src"]:
            description = read_src(module, params["src"])
        if description is None:
            module.fail_json(msg="description: required for operation=%s (or src)" % operation, field="description")
        return _environments.add(reg, description, user, update=operation == "update")
    if operation == "remove":
        if not params["name"]:
            module.fail_json(msg="name: required for operation=remove", field="name")
        return _environments.remove(reg, params["name"], user, version=params["version"])
    if operation == "list":
        return {"changed": False, "environments": _environments.list_environments(
            reg, user, owner=params["owner"], name=params["name"], all_versions=params["all_versions"])}
    if not params["name"]:
        module.fail_json(msg="name: required for operation=show", field="name")
    return {"changed": False, "environment": _environments.show(
        reg, params["name"], user, owner=params["owner"], version=params["version"])}


def main():
    module = AnsibleModule(
        argument_spec=dict(
            operation=dict(type="str", choices=["add", "update", "remove", "list", "show"], default="add"),
            description=dict(type="dict"),
            src=dict(type="path"),
            name=dict(type="str"),
            version=dict(type="int"),
            owner=dict(type="str"),
            all_versions=dict(type="bool", default=False),
            user=dict(type="str"),
            registry=dict(type="path", default=_registry.DEFAULT_PATH),
        ),
        mutually_exclusive=[("description", "src")],
        supports_check_mode=True,
    )
    user = module.params["user"] or pwd.getpwuid(os.getuid()).pw_name
    try:
        with _registry.Registry(module.params["registry"], check=module.check_mode) as reg:
            result = run(module, reg, user)
    except _registry.Refused as exc:
        module.fail_json(msg=str(exc), field=exc.field,
                         errors=[{"field": f, "message": m} for f, m in exc.errors])
    except _registry.RegistryError as exc:
        module.fail_json(msg=str(exc))
    diff = result.pop("diff", None)
    if module._diff and diff:
        result["diff"] = diff
    module.exit_json(**result)


if __name__ == "__main__":
    main()
