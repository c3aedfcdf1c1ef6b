"""Backups of the store: one file that holds the whole cluster state, and its way back.

A backup is a copy of the store's database taken while the server runs. SQLite is copied
with SQLite's online backup API in a single step, which reads one snapshot of the file (in
WAL mode a reader neither blocks the server's writers nor sees half of their transactions);
PostgreSQL is dumped by `pg_dump --format=custom`, which reads one snapshot as well. Either
way the backup is written beside its destination, 0600, and renamed into place when complete.

What a backup holds is everything the store holds: desired objects with their sources,
revisions, nodes (their tokens hashed), pods, service addresses, rollouts, events and
previews. Secret values are in it sealed with the cluster's key; the key file itself is not,
so a backup is useless without the key file it was made with, and the two must be kept
together (`docs/backup.md`).

A restore goes the other way, into a database no server is using: a SQLite backup into a
SQLite file (the backup API again), a PostgreSQL one into a PostgreSQL database
(`pg_restore --clean --if-exists --no-owner`, in one transaction). Before it writes
anything, it checks that the file is a backup of a store at this release's schema, made with
the key it was given, and that the target holds no store (unless forced). Afterwards it
opens the result read-only with that key, as the server will.

Every refusal is a `BackupError` whose message says in one line what is wrong.
"""

from __future__ import annotations

import contextlib
import hmac
import os
import re
import shutil
import sqlite3
import subprocess
import tempfile
import time
import urllib.parse
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from sqlalchemy import inspect, text
from sqlalchemy.engine import URL, make_url
from sqlalchemy.exc import ArgumentError, SQLAlchemyError

from gitops.store.keys import SecretKeyError, SecretKeys
from gitops.store.migrate import current as current_revision
from gitops.store.migrate import head as head_revision
from gitops.store.store import KEY_CHECK, Store, make_engine

Kind = Literal["sqlite", "postgresql"]

PG_LIB = Path("/usr/lib/postgresql")  # Debian's home of every installed PostgreSQL version
SQLITE_MAGIC = b"SQLite format 3\x00"
PG_DUMP_MAGIC = b"PGDMP"
# Tables only a gitops store has; a database with any of them holds a store (of some release).
STORE_TABLES = frozenset({"alembic_version", "objects", "pods", "revisions"})


class BackupError(Exception):
    """A backup or restore that cannot be done; the message says why, in one line."""


@dataclass(frozen=True)
class Written:
    path: Path
    size: int
    kind: Kind


@dataclass(frozen=True)
class Restored:
    target: str
    objects: int
    pods: int
    nodes: int
    set_aside: Path | None = None  # an unreadable database that was replaced, kept here


# --- backup ------------------------------------------------------------------------------


def backup(url: str, output: Path, *, keys: SecretKeys) -> Written:
    """Copy the store at `url` into `output` (0600). The store must be at this release's schema
    and sealed with `keys`; it is only read."""
    kind = _kind(url)
    if kind == "sqlite":
        database = _sqlite_path(url)
        if not database.is_file():
            raise BackupError(f"no database at {database}")
        if output.resolve() == database.resolve():
            raise BackupError(f"-o {output} is the database itself; write the backup to another file")
    _check_store(url, keys)
    with _partial(output) as partial:
        if kind == "sqlite":
            _copy_sqlite(_sqlite_path(url), partial)
        else:
            _pg_run("pg_dump", url, ["--format=custom", f"--file={partial}"])
    return Written(output, output.stat().st_size, kind)


def _check_store(url: str, keys: SecretKeys) -> None:
    """The database must hold a gitops store at this release's schema, sealed with `keys`."""
    schema, tables = _holdings(url)
    if not tables:
        raise BackupError(f"{shown(url)} is empty: there is no gitops store to back up")
    if not tables & STORE_TABLES:
        raise BackupError(f"{shown(url)} is not a gitops store (its tables: {_some(tables)})")
    if schema is None:
        raise BackupError(
            f"{shown(url)} holds a release 0.1 store: start this release's server on it once to "
            "upgrade it, then back it up"
        )
    try:
        Store(url, keys=keys, read_only=True).engine.dispose()
    except SecretKeyError as exc:
        raise BackupError(f"{shown(url)}: {exc}") from None
    except SQLAlchemyError as exc:
        raise BackupError(f"{shown(url)}: cannot read it: {_first_line(exc)}") from None


def _copy_sqlite(database: Path, output: Path) -> None:
    try:
        with (
            contextlib.closing(_sqlite_read_only(database)) as source,
            contextlib.closing(sqlite3.connect(output)) as copy,
        ):
            # All pages in one step, so one read transaction: a consistent snapshot while the
            # server keeps writing. (Step by step, every write of another connection would
            # restart the copy, which might then never finish on a busy server.)
            source.backup(copy, pages=-1)
            # The copy comes out in WAL mode like its source; one self-contained file is better.
            copy.execute("PRAGMA journal_mode=DELETE")
    except sqlite3.Error as exc:
        raise BackupError(f"{database}: the copy failed: {exc}") from None


@contextlib.contextmanager
def _partial(output: Path) -> Iterator[Path]:
    """A 0600 file beside `output` that becomes `output` when the block succeeds."""
    try:
        fd, name = tempfile.mkstemp(dir=output.parent, prefix=f".{output.name}.", suffix=".partial")
    except OSError as exc:
        raise BackupError(f"cannot write {output}: {exc.strerror}") from None
    os.close(fd)
    partial = Path(name)
    try:
        yield partial
        os.chmod(partial, 0o600)
        try:
            os.replace(partial, output)
        except OSError as exc:
            raise BackupError(f"cannot write {output}: {exc.strerror}") from None
    finally:
        partial.unlink(missing_ok=True)


# --- restore -----------------------------------------------------------------------------


def restore(archive: Path, url: str, *, keys: SecretKeys, force: bool = False) -> Restored:
    """Replace the database at `url` with the backup `archive`, made with `keys`. Refuses a
    target that holds a store unless `force`, and a SQLite file that another connection
    (a running server) has open."""
    kind = archive_kind(archive)
    target = _kind(url)
    if kind != target:
        into = (
            "a SQLite file (--state-dir, or --db sqlite:///PATH)" if kind == "sqlite" else "PostgreSQL (--db)"
        )
        raise BackupError(f"{archive} is a {KIND_NAMES[kind]} backup: it restores into {into} only")
    schema, key_check = _sqlite_facts(archive) if kind == "sqlite" else _pg_archive_facts(archive)
    set_aside: Path | None = None
    _check_facts(archive, schema, key_check, keys)
    if kind == "sqlite":
        database = _sqlite_path(url)
        if database.resolve() == archive.resolve():
            raise BackupError(f"{archive} is the target database itself")
        unreadable = _sqlite_unreadable(database)
        if unreadable is not None:
            if not force:
                raise BackupError(
                    f"{database} is not a readable SQLite database ({unreadable}): give --force to set "
                    "it aside (kept beside it, renamed) and restore the backup"
                )
            set_aside = _set_aside(database)
        elif database.is_file() and database.stat().st_size:
            _refuse_overwrite(url, force)
        _restore_sqlite(archive, database)
    else:
        _refuse_overwrite(url, force)
        _refuse_connected(url)
        # One transaction: a restore that fails leaves the target as it was.
        _pg_run(
            "pg_restore", url, ["--clean", "--if-exists", "--no-owner", "--single-transaction", str(archive)]
        )
    try:
        store = Store(url, keys=keys, read_only=True)
    except SecretKeyError as exc:
        raise BackupError(f"restored {archive} into {shown(url)}, but it does not open: {exc}") from None
    except SQLAlchemyError as exc:
        raise BackupError(
            f"restored {archive} into {shown(url)}, but cannot read it: {_first_line(exc)}"
        ) from None
    try:
        return Restored(
            shown(url),
            len(store.owners()),
            sum(store.pod_phase_counts().values()),
            len(store.nodes()),
            set_aside,
        )
    finally:
        store.engine.dispose()


def archive_kind(archive: Path) -> Kind:
    """Which kind of backup `archive` is, by its first bytes."""
    try:
        with archive.open("rb") as f:
            start = f.read(len(SQLITE_MAGIC))
    except FileNotFoundError:
        raise BackupError(f"{archive}: no such file") from None
    except OSError as exc:
        raise BackupError(f"{archive}: cannot read it: {exc.strerror}") from None
    if start.startswith(SQLITE_MAGIC):
        return "sqlite"
    if start.startswith(PG_DUMP_MAGIC):
        return "postgresql"
    raise BackupError(f"{archive} is not a gitops backup (neither a SQLite database nor a pg_dump archive)")


def _sqlite_facts(archive: Path) -> tuple[str | None, str | None]:
    """The schema revision and key check a SQLite backup records."""
    try:
        with contextlib.closing(_sqlite_read_only(archive)) as db:
            tables = {name for (name,) in db.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
            if "alembic_version" not in tables:
                return None, None
            row = db.execute("SELECT version_num FROM alembic_version").fetchone()
            check = None
            if "meta" in tables:
                found = db.execute("SELECT value FROM meta WHERE key = ?", (KEY_CHECK,)).fetchone()
                check = found[0] if found else None
            return (row[0] if row else None), check
    except sqlite3.Error as exc:
        raise BackupError(f"{archive} is not a gitops backup: {exc}") from None


def _pg_archive_facts(archive: Path) -> tuple[str | None, str | None]:
    """The schema revision and key check a pg_dump archive records, read without restoring it."""
    listing = _pg_tool_run(
        "pg_restore",
        ["--data-only", "--table=alembic_version", "--table=meta", "--file=-", str(archive)],
        env=dict(os.environ),
        what=str(archive),
    )
    rows: dict[str, list[str]] = {}
    table = ""
    for line in listing.splitlines():
        copy = re.match(r"COPY public\.(\w+) ", line)
        if copy:
            table = copy.group(1)
            rows[table] = []
        elif line == "\\.":
            table = ""
        elif table:
            rows[table].append(line)
    if "alembic_version" not in rows:
        return None, None
    schema = rows["alembic_version"][0] if rows["alembic_version"] else None
    meta = dict(line.split("\t", 1) for line in rows.get("meta", []) if "\t" in line)
    return schema, meta.get(KEY_CHECK)


def _check_facts(archive: Path, schema: str | None, key_check: str | None, keys: SecretKeys) -> None:
    if schema is None:
        raise BackupError(f"{archive} is not a gitops backup (it holds no gitops schema)")
    if schema != head_revision():
        raise BackupError(
            f"{archive} holds a store at schema {schema}, this release restores {head_revision()}: "
            "restore it with the release that made it"
        )
    if key_check is not None and not hmac.compare_digest(key_check, keys.check_value()):
        raise BackupError(
            f"{archive} was made with another secret key: give the key file kept with the backup "
            "(--secret-key-file)"
        )


def _refuse_overwrite(url: str, force: bool) -> None:
    if force:
        return
    _, tables = _holdings(url)
    if tables & STORE_TABLES:
        raise BackupError(
            f"{shown(url)} already holds a gitops store: give --force to replace it with the backup"
        )
    if tables:
        raise BackupError(
            f"{shown(url)} holds tables of something else ({_some(tables)}): restore into an empty "
            "database, or give --force"
        )


def _refuse_connected(url: str) -> None:
    """PostgreSQL: nobody else may be connected to the target (a server would keep writing)."""
    engine = make_engine(url)
    try:
        with engine.connect() as connection:
            others = connection.scalar(
                text(
                    "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() "
                    "AND pid <> pg_backend_pid() AND backend_type = 'client backend'"
                )
            )
    except SQLAlchemyError as exc:
        raise BackupError(f"{shown(url)}: {_first_line(exc)}") from None
    finally:
        engine.dispose()
    if others:
        raise BackupError(
            f"{shown(url)} has {others} other connection(s) (a gitops server?): stop every server "
            "using it, then restore"
        )


def _sqlite_unreadable(database: Path) -> str | None:
    """Why the non-empty file `database` is not a SQLite database one can read (None if it is,
    or if there is no such file or it is empty)."""
    if not database.is_file() or not database.stat().st_size:
        return None
    try:
        with contextlib.closing(_sqlite_read_only(database)) as connection:
            connection.execute("PRAGMA schema_version").fetchone()
    except sqlite3.OperationalError as exc:
        if "locked" in str(exc) or "busy" in str(exc):
            return None  # readable, in use: the in-use check below says so
        return str(exc)
    except sqlite3.DatabaseError as exc:  # "file is not a database", "database disk image is malformed"
        return str(exc)
    return None


def _set_aside(database: Path) -> Path:
    """Rename the unreadable `database` (and its -wal and -shm files, whose pages must never be
    replayed into the restored one) to `<name>.unreadable-<UTC time>`; nothing is deleted."""
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    aside = database.with_name(f"{database.name}.unreadable-{stamp}")
    for suffix in ("-wal", "-shm", ""):
        path = database.with_name(database.name + suffix)
        if path.exists():
            try:
                path.rename(aside.with_name(aside.name + suffix))
            except OSError as exc:
                raise BackupError(f"cannot set {path} aside: {exc.strerror}") from None
    return aside


def _restore_sqlite(archive: Path, database: Path) -> None:
    database.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    try:
        fd = os.open(database, os.O_RDWR | os.O_CREAT, 0o600)
    except OSError as exc:
        raise BackupError(f"cannot write {database}: {exc.strerror}") from None
    os.fchmod(fd, 0o600)
    os.close(fd)
    try:
        target = sqlite3.connect(database, timeout=0, isolation_level=None)
    except sqlite3.Error as exc:
        raise BackupError(f"{database}: {exc}") from None
    with contextlib.closing(target):
        try:
            # Leaving WAL mode needs every other connection closed, and a server keeps its open:
            # this is how a running server is told apart. Then hold the file until we are done.
            target.execute("PRAGMA journal_mode=DELETE")
            target.execute("PRAGMA locking_mode=EXCLUSIVE")
            target.execute("BEGIN EXCLUSIVE")
            target.execute("COMMIT")
        except sqlite3.OperationalError as exc:
            if "locked" in str(exc) or "busy" in str(exc):
                raise BackupError(
                    f"{database} is in use (is a gitops server running on it?): stop it, then restore"
                ) from None
            raise BackupError(f"{database}: {exc}") from None
        except sqlite3.Error as exc:
            raise BackupError(f"{database}: {exc}") from None
        try:
            with contextlib.closing(_sqlite_read_only(archive)) as source:
                source.backup(target, pages=-1)
        except sqlite3.Error as exc:
            raise BackupError(f"restoring {archive} into {database} failed: {exc}") from None


# --- databases and tools -----------------------------------------------------------------

KIND_NAMES: dict[Kind, str] = {"sqlite": "SQLite", "postgresql": "PostgreSQL"}
FORMATS: dict[Kind, str] = {"sqlite": "a SQLite database", "postgresql": "a pg_dump archive"}


def _url(url: str) -> URL:
    try:
        return make_url(url)
    except ArgumentError:
        raise BackupError(
            "the database URL (GITOPS_DB or --db) is not a SQLAlchemy URL (expected sqlite:///PATH "
            "or postgresql+psycopg2://USER@HOST/DB)"
        ) from None


def _kind(url: str) -> Kind:
    backend = _url(url).get_backend_name()
    if backend == "sqlite":
        return "sqlite"
    if backend == "postgresql":
        return "postgresql"
    raise BackupError(f"{shown(url)}: only SQLite and PostgreSQL stores can be backed up and restored")


def shown(url: str) -> str:
    """`url` as it may be printed: without its password."""
    return _url(url).render_as_string(hide_password=True)


def _sqlite_path(url: str) -> Path:
    database = _url(url).database
    if not database or database == ":memory:" or database.startswith("file:"):
        raise BackupError(f"{url}: only a SQLite database in a file can be backed up and restored")
    return Path(database)


def _sqlite_read_only(path: Path) -> sqlite3.Connection:
    uri = f"file:{urllib.parse.quote(str(path.resolve()))}?mode=ro"
    return sqlite3.connect(uri, uri=True, timeout=30, isolation_level=None)


def _holdings(url: str) -> tuple[str | None, frozenset[str]]:
    """The schema revision (None without Alembic's table) and the tables of the database."""
    if _kind(url) == "sqlite" and not _sqlite_path(url).is_file():
        return None, frozenset()
    engine = make_engine(url, read_only=True)
    try:
        with engine.connect() as connection:
            tables = frozenset(inspect(connection).get_table_names())
            schema = current_revision(connection) if "alembic_version" in tables else None
    except SQLAlchemyError as exc:
        raise BackupError(f"{shown(url)}: cannot read it: {_first_line(exc)}") from None
    finally:
        engine.dispose()
    return schema, tables


def pg_tool(name: str) -> str:
    """The PostgreSQL client program `name`: on PATH, else the newest under /usr/lib/postgresql."""
    found = shutil.which(name)
    if found:
        return found
    installed = sorted(PG_LIB.glob(f"*/bin/{name}"), key=lambda p: _version(p.parent.parent.name))
    if installed:
        return str(installed[-1])
    raise BackupError(
        f"{name} is not installed (not on PATH nor under {PG_LIB}/*/bin): install PostgreSQL's "
        "client programs (Debian: apt-get install postgresql-client)"
    )


def _version(name: str) -> tuple[int, ...]:
    return tuple(int(part) for part in name.split(".") if part.isdigit())


def _pg_run(tool: str, url: str, arguments: list[str]) -> None:
    """Run pg_dump or pg_restore on the database at `url`. The password goes to the program in
    its environment (PGPASSWORD), never on its command line, where every user can read it."""
    parsed = _url(url)
    env = dict(os.environ)
    if parsed.password is not None:
        env["PGPASSWORD"] = str(parsed.password)
    # (`URL.set` leaves a field alone when given None, so the URL is built again without it.)
    conninfo = URL.create(
        "postgresql",
        username=parsed.username,
        host=parsed.host,
        port=parsed.port,
        database=parsed.database,
        query=parsed.query,
    ).render_as_string(hide_password=False)
    _pg_tool_run(tool, ["--no-password", f"--dbname={conninfo}", *arguments], env=env, what=shown(url))


def _pg_tool_run(tool: str, arguments: list[str], *, env: dict[str, str], what: str) -> str:
    try:
        done = subprocess.run(
            [pg_tool(tool), *arguments], capture_output=True, text=True, env=env, check=False
        )
    except OSError as exc:
        raise BackupError(f"{tool}: cannot run it: {exc.strerror}") from None
    if done.returncode != 0:
        raise BackupError(f"{tool} failed on {what}: {_tool_error(tool, done.stderr)}")
    return done.stdout


def _tool_error(tool: str, stderr: str) -> str:
    """The lines of a PostgreSQL program's complaint that say what is wrong, as one line."""
    lines = [line.strip() for line in stderr.splitlines() if line.strip()]
    said = [
        line.split(":", 2)[2].strip()
        for line in lines
        if line.startswith((f"{tool}: error:", f"{tool}: detail:"))
    ]
    return " ".join("; ".join(said or lines[-1:] or ["no message"]).split())


def _first_line(exc: SQLAlchemyError) -> str:
    original = getattr(exc, "orig", None) or exc
    lines = [line.strip() for line in str(original).splitlines() if line.strip()]
    return " ".join(lines[0].split()) if lines else type(original).__name__


def _some(names: frozenset[str]) -> str:
    listed = sorted(names)
    return ", ".join(listed[:5]) + (f" and {len(listed) - 5} more" if len(listed) > 5 else "")


def size_text(size: int) -> str:
    """`size` bytes for people: 812 bytes, 4.2 KiB, 31.0 MiB."""
    if size < 1024:
        return f"{size} bytes"
    scaled = float(size)
    for unit in ("KiB", "MiB", "GiB"):
        scaled /= 1024
        if scaled < 1024 or unit == "GiB":
            break
    return f"{scaled:.1f} {unit}"
