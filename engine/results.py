"""The results database: one SQLite file per sweep, one row per run.

Only the sweep driver writes (``engine.sweep``); workers return plain dicts.
Every finished run is committed at once in its own transaction (WAL
journal while a writer has it open), so a killed driver or worker loses at
most the runs in flight. Closing a writer checkpoints the WAL into the file
and switches the file back to a rollback journal, so no -wal/-shm files stay
beside a database after a clean exit, and the file can then be read from
read-only storage (a WAL-mode file needs a writable directory even to read).

Schema (``SCHEMA_VERSION`` = 2)

    meta(key, value)         schema_version, engine_version, created_utc
    runs(key PRIMARY KEY,    the run key: a hash of the config (``run_key``)
         experiment, config  (the first experiment that stored it; JSON config incl. seeds),
         init, depth, width, seed,
         status              "ok", "diverged" or "failed",
         excess0, final_excess, rel_excess, log10_rel_excess,
         steps_run, steps_to_tol, escape_steps, converged, rate, predicted, lr,
         wall_time, backend, engine_version, error, finished_utc,
         tol_excess)         the absolute stop threshold tol ||Y||_F^2 (l - OPT units; NULL: none)
    members(experiment, key) which experiments a run belongs to (many-to-many: a run
                             shared by two grids is stored once, listed in both)
    curves(key, t, excess)   the loss curve l(t) - OPT, subsampled (<= ~200 points)

Schema 1 (no ``members``, no ``tol_excess``) is read as it is and migrated
in place when opened for writing. A database written by another engine
version can be read (plots, export) with a warning, but a sweep refuses to
add runs to it: results of two versions would be mixed under the same run
keys. A database whose tables lack a column, or whose stored config is not
JSON, is refused with a one-line ``ResultsDBError`` naming the problem.
"""
from __future__ import annotations

import csv
import datetime as _dt
import hashlib
import json
import math
import os
import sqlite3
import urllib.request
import warnings

SCHEMA_VERSION = 2
# Schemas this engine reads; older ones are migrated to SCHEMA_VERSION when opened for writing.
READABLE_SCHEMAS = (1, 2)

__all__ = ["ResultsDB", "ResultsDBError", "DatabaseLocked", "DatabaseReadOnly",
           "VersionMismatch", "run_key", "canonical_config", "SCHEMA_VERSION", "METRICS"]


class ResultsDBError(RuntimeError):
    """The results database cannot be used; the message says why and what to do."""


class DatabaseLocked(ResultsDBError):
    """Another process holds a write lock on the database for longer than the timeout."""


class DatabaseReadOnly(ResultsDBError):
    """The database file (or its directory) cannot be written."""


class VersionMismatch(ResultsDBError):
    """The database was written by a different engine version (or schema)."""


# Result columns of ``runs`` (besides key, experiment, config), in order, with SQL types.
METRICS = [
    ("init", "TEXT"), ("depth", "INTEGER"), ("width", "INTEGER"), ("seed", "INTEGER"),
    ("status", "TEXT NOT NULL"), ("excess0", "REAL"), ("final_excess", "REAL"),
    ("rel_excess", "REAL"), ("log10_rel_excess", "REAL"), ("steps_run", "INTEGER"),
    ("steps_to_tol", "INTEGER"), ("escape_steps", "INTEGER"), ("converged", "INTEGER"),
    ("rate", "REAL"), ("predicted", "REAL"), ("lr", "REAL"), ("wall_time", "REAL"),
    ("backend", "TEXT"), ("engine_version", "TEXT"), ("error", "TEXT"), ("finished_utc", "TEXT"),
    ("tol_excess", "REAL"),
]
_METRIC_NAMES = [n for n, _ in METRICS]
# Columns added by schema 2 (absent from schema-1 databases opened read-only: read as NULL).
_ADDED_IN_2 = ("tol_excess",)


def _jsonable(v):
    if isinstance(v, (list, tuple)):
        return [_jsonable(x) for x in v]
    if isinstance(v, dict):
        return {str(k): _jsonable(x) for k, x in v.items()}
    if hasattr(v, "item") and callable(v.item):   # numpy scalars
        v = v.item()
    if isinstance(v, float) and v.is_integer() and abs(v) < 2 ** 53:
        return v   # keep floats as floats: 1.0 and 1 are different configs on purpose
    return v


def canonical_config(config: dict) -> str:
    """The config as canonical JSON (sorted keys, no whitespace): what ``run_key`` hashes."""
    if not isinstance(config, dict):
        raise TypeError(f"config: must be a dict, got {type(config).__name__}")
    return json.dumps(_jsonable(config), sort_keys=True, separators=(",", ":"), allow_nan=False)


def run_key(config: dict) -> str:
    """Stable key of a run: the first 20 hex digits of SHA-256 of its canonical JSON.

    The same config (same numbers, any key order) gives the same key in any
    process or session, which is what lets a re-run sweep skip finished runs.
    """
    return key_of_canonical(canonical_config(config))


def key_of_canonical(text: str) -> str:
    """``run_key`` of the config whose canonical JSON is ``text`` (``canonical_config``)."""
    return hashlib.sha256(text.encode()).hexdigest()[:20]


def utcnow() -> str:
    return _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def _engine_version() -> str:
    from . import __version__
    return __version__


def _explain(exc: sqlite3.Error, path: str, what: str) -> ResultsDBError:
    """Turn an sqlite3 error into a one-line ResultsDBError saying what to do."""
    msg = str(exc).lower()
    if "locked" in msg or "busy" in msg:
        return DatabaseLocked(
            f"results database {path!r} is locked by another process (another sweep writing to it?) "
            f"while {what}; wait for it to finish, or use another --db")
    if "readonly" in msg or "read-only" in msg or "read only" in msg:
        return DatabaseReadOnly(
            f"results database {path!r} is read-only (file or directory not writable) while {what}; "
            "make it writable, or copy it and sweep into the copy")
    if "unable to open" in msg:
        d = os.path.dirname(os.path.abspath(path))
        if not os.path.isdir(d):
            return ResultsDBError(f"results database {path!r}: directory {d!r} does not exist")
        if os.path.exists(path) and not os.access(d, os.W_OK):
            return DatabaseReadOnly(
                f"results database {path!r}: its directory is not writable (SQLite needs to create "
                f"-wal/-shm files next to it) while {what}")
        return ResultsDBError(f"results database {path!r} cannot be opened ({exc}) while {what}")
    if "not a database" in msg or "malformed" in msg or "encrypted" in msg:
        return ResultsDBError(f"{path!r} is not an engine results database (or it is corrupt): {exc}")
    return ResultsDBError(f"results database {path!r}: {exc} (while {what})")


class ResultsDB:
    """An engine results database (SQLite).

    ResultsDB(path)                       open for writing, creating it if absent
    ResultsDB(path, readonly=True)        open an existing database for reading

    Raises ResultsDBError subclasses with a one-line message: DatabaseLocked,
    DatabaseReadOnly, VersionMismatch (writing into a database of another
    engine version or schema; pass ``allow_version_mismatch=True`` to
    override), or ResultsDBError (missing file, not a database, a damaged
    table). A read-only open works on read-only storage too: when SQLite
    cannot create its shared-memory file next to a WAL-mode database there,
    the file is opened immutable (``.immutable`` is then True; results still
    in a -wal file beside it, left by a writer that was killed, are not
    visible and a warning says so).
    """

    def __init__(self, path, *, readonly: bool = False, lock_timeout: float = 10.0,
                 allow_version_mismatch: bool = False):
        self.path = os.fspath(path)
        self.readonly = bool(readonly)
        self.immutable = False
        self.version_warning = None
        self.schema = SCHEMA_VERSION
        if self.readonly and not os.path.exists(self.path):
            raise ResultsDBError(f"results database {self.path!r} does not exist")
        try:
            if self.readonly:
                self.con = self._connect_readonly(lock_timeout)
            else:
                self.con = sqlite3.connect(self.path, timeout=lock_timeout)
        except sqlite3.Error as exc:
            raise _explain(exc, self.path, "opening it") from None
        self.con.row_factory = sqlite3.Row
        try:
            self._setup(allow_version_mismatch)
        except sqlite3.Error as exc:
            self.con.close()
            raise _explain(exc, self.path, "opening it" if self.readonly else "opening it for writing") from None
        except ResultsDBError:
            self.con.close()
            raise

    def _uri(self, **params) -> str:
        query = "&".join(f"{k}={v}" for k, v in params.items())
        return "file:" + urllib.request.pathname2url(os.path.abspath(self.path)) + "?" + query

    def _connect_readonly(self, lock_timeout):
        """mode=ro; on read-only storage (no -shm can be created for a WAL-mode file) immutable=1."""
        con = sqlite3.connect(self._uri(mode="ro"), uri=True, timeout=lock_timeout)
        try:
            con.execute("SELECT count(*) FROM sqlite_master").fetchone()   # opens the file (and WAL index)
            return con
        except sqlite3.OperationalError as exc:
            con.close()
            msg = str(exc).lower()
            if "unable to open" not in msg and "readonly" not in msg and "read-only" not in msg:
                raise
        wal = self.path + "-wal"
        if os.path.exists(wal) and os.path.getsize(wal) > 0:
            warnings.warn(f"results database {self.path!r} is on read-only storage and has a -wal file "
                          "beside it (a writer was killed): the runs committed only there are not visible; "
                          "copy the database with its -wal file to writable storage to read them", stacklevel=4)
        con = sqlite3.connect(self._uri(mode="ro", immutable=1), uri=True, timeout=lock_timeout)
        self.immutable = True
        return con

    # -- setup and version checks -------------------------------------------------
    def _setup(self, allow_version_mismatch):
        con = self.con
        have = {r[0] for r in con.execute("SELECT name FROM sqlite_master WHERE type='table'")}
        if self.readonly:
            if "meta" not in have or "runs" not in have:
                raise ResultsDBError(f"{self.path!r} is not an engine results database (no runs/meta tables)")
            self._check_version(allow=True)
            self._check_tables(have)
            return
        # take the write lock now, so a locked or read-only database fails at once
        con.execute("BEGIN IMMEDIATE")
        try:
            if not have:
                con.execute("PRAGMA user_version = %d" % SCHEMA_VERSION)
                con.execute("CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT)")
                cols = ", ".join(f"{n} {t}" for n, t in METRICS)
                con.execute(f"CREATE TABLE runs (key TEXT PRIMARY KEY, experiment TEXT, "
                            f"config TEXT NOT NULL, {cols})")
                con.execute("CREATE TABLE curves (key TEXT NOT NULL, t INTEGER NOT NULL, excess REAL, "
                            "PRIMARY KEY (key, t))")
                con.execute(_MEMBERS_DDL)
                con.executemany("INSERT INTO meta VALUES (?, ?)", [
                    ("schema_version", str(SCHEMA_VERSION)), ("engine_version", _engine_version()),
                    ("created_utc", utcnow())])
            elif "meta" not in have or "runs" not in have:
                raise ResultsDBError(f"{self.path!r} is an SQLite database but not an engine results "
                                     "database (no runs/meta tables); use another --db")
            else:
                self._check_version(allow=allow_version_mismatch)
                self._check_tables(have)
                if self.schema < SCHEMA_VERSION:
                    self._migrate()
                # a real write now, so a read-only file fails at open, not at the first result
                con.execute("INSERT OR REPLACE INTO meta VALUES ('last_opened_utc', ?)", (utcnow(),))
            con.execute("COMMIT")
        except BaseException:
            if con.in_transaction:
                con.execute("ROLLBACK")
            raise
        mode = con.execute("PRAGMA journal_mode=WAL").fetchone()[0]
        if str(mode).lower() not in ("wal", "memory"):  # pragma: no cover - e.g. a filesystem without shared memory
            warnings.warn(f"results database {self.path!r}: WAL journal unavailable, using {mode}")
        con.execute("PRAGMA synchronous=FULL")

    def _migrate(self):
        """Schema 1 -> 2, inside the open write transaction: the members table (filled from
        runs.experiment, the only label schema 1 kept) and the tol_excess column."""
        con = self.con
        for name in _ADDED_IN_2:
            con.execute(f"ALTER TABLE runs ADD COLUMN {name} {dict(METRICS)[name]}")
        con.execute(_MEMBERS_DDL)
        con.execute("INSERT OR IGNORE INTO members (experiment, key) "
                    "SELECT experiment, key FROM runs WHERE experiment IS NOT NULL")
        con.execute("UPDATE meta SET value = ? WHERE key = 'schema_version'", (str(SCHEMA_VERSION),))
        con.execute("PRAGMA user_version = %d" % SCHEMA_VERSION)
        self.schema = SCHEMA_VERSION

    def _check_tables(self, have):
        """Every column this engine reads is there (else one line naming it, never a raw
        IndexError later); a schema-1 database lacks only what schema 2 added."""
        def columns(table):
            return {r[1] for r in self.con.execute(f"PRAGMA table_info({table})")}

        want = {"runs": {"key", "experiment", "config"} | set(_METRIC_NAMES),
                "curves": {"key", "t", "excess"}}
        if self.schema >= 2:
            want["members"] = {"experiment", "key"}
        else:
            want["runs"] -= set(_ADDED_IN_2)
        for table, cols in want.items():
            if table not in have:
                raise ResultsDBError(f"results database {self.path!r} is damaged: table {table!r} is missing "
                                     f"(schema version {self.schema}); it was edited or not written by engine")
            missing = sorted(cols - columns(table))
            if missing:
                raise ResultsDBError(
                    f"results database {self.path!r} is damaged: table {table!r} has no column"
                    f"{'s' if len(missing) > 1 else ''} {', '.join(missing)} (schema version {self.schema}); "
                    "it was edited or not written by engine")

    def meta(self) -> dict:
        return {r["key"]: r["value"] for r in self.con.execute("SELECT key, value FROM meta")}

    def _check_version(self, allow):
        meta = self.meta()
        schema = meta.get("schema_version")
        try:
            readable = int(schema) in READABLE_SCHEMAS
        except (TypeError, ValueError):
            readable = False
        if not readable:
            raise VersionMismatch(
                f"results database {self.path!r} has schema version {schema}, this engine reads "
                f"versions {', '.join(map(str, READABLE_SCHEMAS))}; export it with the engine that wrote it, "
                "or use another --db")
        self.schema = int(schema)
        theirs, ours = meta.get("engine_version"), _engine_version()
        if theirs != ours:
            msg = (f"results database {self.path!r} was written by engine {theirs}, this is engine {ours}")
            if not allow:
                raise VersionMismatch(
                    msg + "; a sweep will not mix results of two versions under the same run keys. "
                    "Use another --db (or --allow-version-mismatch to add to it anyway)")
            self.version_warning = msg
            if self.readonly:
                warnings.warn(msg, stacklevel=3)

    # -- writing ------------------------------------------------------------------
    def put(self, key: str, config: dict, result: dict, curve=None, experiment=None) -> None:
        """Insert (or replace) one run and its curve, committed at once; the run joins
        ``experiment`` (a run keeps every experiment it was stored or found under)."""
        if self.readonly:
            raise DatabaseReadOnly(f"results database {self.path!r} was opened read-only")
        vals = [_sql_value(result.get(n)) for n in _METRIC_NAMES]
        ph = ", ".join("?" * (len(vals) + 3))
        try:
            with self.con:
                first = self.con.execute("SELECT experiment FROM runs WHERE key = ?", (key,)).fetchone()
                label = experiment if first is None or first[0] is None else first[0]
                row = [key, label, canonical_config(config)] + vals
                self.con.execute(f"INSERT OR REPLACE INTO runs (key, experiment, config, "
                                 f"{', '.join(_METRIC_NAMES)}) VALUES ({ph})", row)
                if experiment is not None:
                    self.con.execute("INSERT OR IGNORE INTO members (experiment, key) VALUES (?, ?)",
                                     (experiment, key))
                self.con.execute("DELETE FROM curves WHERE key = ?", (key,))
                if curve is not None:
                    t, ex = curve
                    self.con.executemany("INSERT INTO curves VALUES (?, ?, ?)",
                                         [(key, int(a), _sql_value(float(b))) for a, b in zip(t, ex)])
        except sqlite3.Error as exc:
            raise _explain(exc, self.path, f"writing run {key}") from None

    def add_members(self, experiment, keys) -> None:
        """Record that the runs ``keys`` belong to ``experiment`` (one transaction; runs
        not stored yet join it when they are). A sweep calls this for its whole grid, so
        a run another experiment already stored is listed in this one too."""
        if experiment is None:
            return
        if self.readonly:
            raise DatabaseReadOnly(f"results database {self.path!r} was opened read-only")
        try:
            with self.con:
                self.con.executemany("INSERT OR IGNORE INTO members (experiment, key) VALUES (?, ?)",
                                     ((experiment, k) for k in keys))
        except sqlite3.Error as exc:
            raise _explain(exc, self.path, f"recording the runs of experiment {experiment!r}") from None

    # -- reading ------------------------------------------------------------------
    def statuses(self) -> dict:
        """{key: status} of every stored run."""
        return {r[0]: r[1] for r in self.con.execute("SELECT key, status FROM runs")}

    def _memberships(self) -> dict:
        """{key: [experiment, ...]} (sorted) of every run that belongs to one."""
        out = {}
        if self.schema >= 2:
            q = "SELECT key, experiment FROM members ORDER BY experiment"
        else:
            q = "SELECT key, experiment FROM runs WHERE experiment IS NOT NULL"
        for k, e in self.con.execute(q):
            out.setdefault(k, []).append(e)
        return out

    def _select(self, experiment, status):
        cols = ", ".join(f"r.{c}" for c in ["key", "experiment", "config"] + self._stored_metrics())
        q, args, cond = f"SELECT {cols} FROM runs r", [], []
        if experiment is not None:
            if self.schema >= 2:
                q += " JOIN members m ON m.key = r.key"
                cond.append("m.experiment = ?")
            else:
                cond.append("r.experiment = ?")
            args.append(experiment)
        if status is not None:
            cond.append("r.status = ?")
            args.append(status)
        if cond:
            q += " WHERE " + " AND ".join(cond)
        return q + " ORDER BY r.key", args

    def _stored_metrics(self):
        return [n for n in _METRIC_NAMES if self.schema >= 2 or n not in _ADDED_IN_2]

    def _config(self, key, text) -> dict:
        try:
            cfg = json.loads(text)
        except (TypeError, ValueError) as exc:
            raise ResultsDBError(f"results database {self.path!r} is damaged: run {key} has a config that is "
                                 f"not valid JSON ({exc}); it was edited or not written by engine") from None
        if not isinstance(cfg, dict):
            raise ResultsDBError(f"results database {self.path!r} is damaged: run {key} has a config that is "
                                 f"not a JSON object (got {type(cfg).__name__})")
        return cfg

    def rows(self, experiment=None, keys=None, status=None) -> list[dict]:
        """Tidy rows: the config's fields merged with the result columns (plus key, experiment).

        ``experiment``: only the runs that belong to it (each row's "experiment" is then
        that name); without it every run, its "experiment" the names of all the experiments
        it belongs to, joined by ";" (None when it belongs to none).
        """
        q, args = self._select(experiment, status)
        want = None if keys is None else set(keys)
        member = self._memberships() if experiment is None else None
        metrics = self._stored_metrics()
        out = []
        try:
            for r in self.con.execute(q, args):
                if want is not None and r["key"] not in want:
                    continue
                d = dict(self._config(r["key"], r["config"]))
                d["lr_rule"] = d.get("lr")   # the config's lr ("theory" or a number); "lr" becomes the one used
                for n in _METRIC_NAMES:
                    d[n] = r[n] if n in metrics else None
                d["key"] = r["key"]
                if experiment is not None:
                    d["experiment"] = experiment
                else:
                    names = member.get(r["key"])
                    d["experiment"] = ";".join(names) if names else r["experiment"]
                out.append(d)
        except sqlite3.Error as exc:
            raise _explain(exc, self.path, "reading its runs") from None
        return out

    def curve(self, key: str):
        """(t, excess) of one run, as lists (empty when none was stored)."""
        rs = self.con.execute("SELECT t, excess FROM curves WHERE key = ? ORDER BY t", (key,)).fetchall()
        return [r[0] for r in rs], [r[1] for r in rs]

    def experiments(self) -> list:
        """Names of the experiments with at least one stored run (sorted)."""
        if self.schema >= 2:
            q = ("SELECT DISTINCT m.experiment FROM members m JOIN runs r ON r.key = m.key "
                 "ORDER BY 1")
        else:
            q = "SELECT DISTINCT experiment FROM runs WHERE experiment IS NOT NULL ORDER BY 1"
        return [r[0] for r in self.con.execute(q)]

    def _export_rows(self, experiment):
        rows = self.rows(experiment)
        raw = {r[0]: r[1] for r in self.con.execute("SELECT key, config FROM runs")}
        for r in rows:
            r["config"] = raw[r["key"]]   # the full config as JSON (its lr may be "theory")
        return rows

    def export_csv(self, path, experiment=None) -> int:
        """Write the tidy rows (plus the config as JSON) to CSV; returns the number of rows."""
        rows = self._export_rows(experiment)
        cols = _columns(rows)
        with open(path, "w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=cols)
            w.writeheader()
            for r in rows:
                w.writerow({c: _csv_value(r.get(c)) for c in cols})
        return len(rows)

    def export_parquet(self, path, experiment=None) -> int:
        """Write the tidy rows to Parquet (needs pyarrow); returns the number of rows."""
        try:
            import pyarrow as pa
            import pyarrow.parquet as pq
        except ImportError:
            raise ResultsDBError("Parquet export needs pyarrow (pip install pyarrow); CSV export works without it") from None
        rows = self._export_rows(experiment)
        cols = _columns(rows)
        table = pa.table({c: [_csv_value(r.get(c)) if isinstance(r.get(c), (list, dict)) else r.get(c)
                              for r in rows] for c in cols})
        pq.write_table(table, path)
        return len(rows)

    def close(self):
        """Close; a writer first folds the WAL into the file and returns it to a rollback
        journal, so no -wal/-shm files stay beside it. While another process still has the
        database open this is skipped (without waiting): the last one to close cleans up."""
        con = getattr(self, "con", None)
        if con is None:
            return
        self.con = None
        try:
            if not self.readonly and self.path != ":memory:":
                try:
                    if con.in_transaction:
                        con.rollback()
                    con.execute("PRAGMA busy_timeout = 0")
                    con.execute("PRAGMA wal_checkpoint(TRUNCATE)")
                    con.execute("PRAGMA journal_mode=DELETE")
                except sqlite3.Error:
                    pass
        finally:
            con.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


_MEMBERS_DDL = ("CREATE TABLE IF NOT EXISTS members (experiment TEXT NOT NULL, key TEXT NOT NULL, "
                "PRIMARY KEY (experiment, key))")


def _columns(rows):
    cols = ["key", "experiment"]
    seen = set(cols) | set(_METRIC_NAMES)
    for r in rows:
        for c in r:
            if c not in seen:
                seen.add(c)
                cols.append(c)
    return cols + _METRIC_NAMES


def _sql_value(v):
    if v is None:
        return None
    if hasattr(v, "item") and callable(v.item):
        v = v.item()
    if isinstance(v, bool):
        return int(v)
    if isinstance(v, float) and math.isnan(v):
        return None   # SQLite stores NaN as NULL anyway; +-inf are kept
    return v


def _csv_value(v):
    if isinstance(v, (list, dict)):
        return json.dumps(v)
    return "" if v is None else v
