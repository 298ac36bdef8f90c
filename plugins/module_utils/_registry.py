# -*- coding: utf-8 -*-
# Copyright: (c) 2026, gridops.metal developers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

"""The deploy server's registry: one embedded SQLite database.

It holds the environments (``_environments``), the deployment rights
(``_rights``) and the deployment history (``_deploy``).  Every public call of those
engines runs in one transaction (:meth:`Registry.transaction`): either all it
wrote is there, or nothing is.  In check mode the same transaction is rolled
back, so a prediction runs exactly the code of the real call.

The layout is versioned with ``PRAGMA user_version``: ``MIGRATIONS[n]`` takes
a database from version ``n`` to ``n + 1``, inside the transaction of the
first call that opens it.  A new table (the deployment history) is a new
entry at the end; an existing entry never changes.

Plain Python (standard library only).
"""

from __future__ import absolute_import, division, print_function
__metaclass__ = type

import contextlib
import datetime
import os
import re
import sqlite3

DEFAULT_PATH = "/var/lib/gridops-metal/registry.sqlite"

MIGRATIONS = (
    # 1: environments (Kadeploy's kaenv) and rights (karights).
    (
        """CREATE TABLE environments (
            id INTEGER PRIMARY KEY,
            owner TEXT NOT NULL,
            name TEXT NOT NULL,
            version INTEGER NOT NULL CHECK (version >= 1),
            visibility TEXT NOT NULL CHECK (visibility IN ('private', 'shared', 'public')),
            image_file TEXT NOT NULL,
            image_kind TEXT NOT NULL CHECK (image_kind IN ('tar', 'dd')),
            image_sha256 TEXT NOT NULL,
            image_size INTEGER NOT NULL,
            description TEXT NOT NULL,
            registered TEXT NOT NULL,
            UNIQUE (owner, name, version)
        )""",
        "CREATE INDEX environments_by_name ON environments (name, version)",
        """CREATE TABLE rights (
            id INTEGER PRIMARY KEY,
            user TEXT NOT NULL,
            node TEXT NOT NULL,
            partition TEXT NOT NULL,
            expires TEXT,
            origin TEXT,
            granted TEXT NOT NULL,
            UNIQUE (user, node, partition)
        )""",
        "CREATE INDEX rights_by_node ON rights (node)",
    ),
    # 2: the deployment history (Kadeploy's kastat): one row per deployment, one per node.
    (
        """CREATE TABLE deployments (
            id TEXT PRIMARY KEY,
            user TEXT NOT NULL,
            environment TEXT NOT NULL,
            environment_version INTEGER,
            environment_owner TEXT,
            image_sha256 TEXT NOT NULL,
            method TEXT NOT NULL,
            started TEXT NOT NULL,
            ended TEXT NOT NULL,
            seconds REAL NOT NULL,
            nodes INTEGER NOT NULL,
            deployed INTEGER NOT NULL,
            failed INTEGER NOT NULL,
            result TEXT NOT NULL
        )""",
        "CREATE INDEX deployments_by_started ON deployments (started)",
        """CREATE TABLE deployment_nodes (
            deployment TEXT NOT NULL REFERENCES deployments (id) ON DELETE CASCADE,
            node TEXT NOT NULL,
            state TEXT NOT NULL CHECK (state IN ('deployed', 'failed')),
            failed_step TEXT,
            failed_micro_step TEXT,
            error TEXT,
            seconds REAL NOT NULL,
            steps TEXT NOT NULL,
            PRIMARY KEY (deployment, node)
        )""",
        "CREATE INDEX deployment_nodes_by_node ON deployment_nodes (node)",
    ),
    # 3: rights kept per origin: one row per (user, node, partition, origin), so that the end of one job
    # (revoke by origin) leaves the right another job or the operator (origin NULL) gave on the same node.
    (
        """CREATE TABLE rights_by_origin (
            id INTEGER PRIMARY KEY,
            user TEXT NOT NULL,
            node TEXT NOT NULL,
            partition TEXT NOT NULL,
            expires TEXT,
            origin TEXT,
            granted TEXT NOT NULL
        )""",
        "INSERT INTO rights_by_origin (id, user, node, partition, expires, origin, granted) "
        "SELECT id, user, node, partition, expires, origin, granted FROM rights",
        "DROP TABLE rights",
        "ALTER TABLE rights_by_origin RENAME TO rights",
        "CREATE UNIQUE INDEX rights_unique ON rights (user, node, partition, ifnull(origin, ''))",
        "CREATE INDEX rights_by_node ON rights (node)",
    ),
)

SCHEMA_VERSION = len(MIGRATIONS)


USER_PATTERN = "^[A-Za-z0-9_][A-Za-z0-9_.@-]{0,63}$"


class RegistryError(Exception):
    """The registry cannot be opened or a request is refused."""


class Refused(RegistryError):
    """A refused request; ``field`` names the field at fault (``image.sha256``), ``errors`` every problem."""

    def __init__(self, field, message, errors=None):
        self.field = field
        self.errors = errors or [(field, message)]
        RegistryError.__init__(self, "; ".join("%s: %s" % e for e in self.errors))


def short(value):
    """repr of a value, cut for messages."""
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def check_name(field, value, pattern=USER_PATTERN, what="a user name"):
    """value if it matches pattern, else Refused naming field."""
    if not isinstance(value, str) or not re.match(pattern, value):
        raise Refused(field, "%s is not %s (pattern %s)" % (short(value), what, pattern))
    return value


def utcnow():
    return datetime.datetime.now(datetime.timezone.utc).replace(microsecond=0)


def isotime(value):
    """A UTC datetime as ISO 8601 text (``2026-05-01T12:00:00Z``), the registry's time format."""
    return value.astimezone(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


class Registry:
    """A registry database; ``path=None`` (or a path that does not exist, in check mode) is empty, in memory."""

    def __init__(self, path=DEFAULT_PATH, check=False, timeout=30):
        self.path = path
        self.check = check
        self.memory = path is None or (check and not os.path.exists(path))
        if not self.memory:
            parent = os.path.dirname(os.path.abspath(path))
            try:
                if not os.path.isdir(parent):
                    os.makedirs(parent, 0o755)
                self.conn = sqlite3.connect(path, timeout=timeout, isolation_level=None)
                self.conn.execute("PRAGMA foreign_keys = ON")
            except (OSError, sqlite3.Error) as exc:
                raise RegistryError("registry: cannot open %s: %s" % (path, exc))
        else:
            self.conn = sqlite3.connect(":memory:", isolation_level=None)
        self.conn.row_factory = sqlite3.Row
        self.in_transaction = False

    def close(self):
        self.conn.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def _migrate(self):
        version = self.conn.execute("PRAGMA user_version").fetchone()[0]
        if version > SCHEMA_VERSION:
            raise RegistryError("registry: %s has layout version %d, newer than this collection's (%d)"
                                % (self.path, version, SCHEMA_VERSION))
        for number in range(version, SCHEMA_VERSION):
            for statement in MIGRATIONS[number]:
                self.conn.execute(statement)
            # PRAGMA takes no parameters; the value is our own integer.
            self.conn.execute("PRAGMA user_version = %d" % (number + 1))

    @contextlib.contextmanager
    def transaction(self):
        """One write transaction (migrations first); committed unless check mode or an exception."""
        if self.in_transaction:
            yield self.conn
            return
        try:
            self.conn.execute("BEGIN IMMEDIATE")
        except sqlite3.Error as exc:
            raise RegistryError("registry: cannot use %s: %s" % (self.path, exc))
        self.in_transaction = True
        try:
            self._migrate()
            yield self.conn
        except sqlite3.Error as exc:
            self.conn.execute("ROLLBACK")
            raise RegistryError("registry: %s: %s" % (self.path or "(memory)", exc))
        except BaseException:
            self.conn.execute("ROLLBACK")
            raise
        else:
            self.conn.execute("ROLLBACK" if self.check else "COMMIT")
        finally:
            self.in_transaction = False
