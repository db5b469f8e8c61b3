"""Settings shared by every command: flags override PAGESYNC_* environment variables,
which override the embedded defaults (one SQLite file holding the records and the queue)."""
from __future__ import annotations

import math
import os
import re
from dataclasses import dataclass, fields, replace
from pathlib import Path
from urllib.parse import parse_qs, urlsplit
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

ENV_PREFIX = "PAGESYNC_"


@dataclass(frozen=True)
class Settings:
    db: str = "pagesync.db"
    # "sqlite" (the queue's tables inside the database file), "sqlite:///path/queue.db"
    # (a separate file), or "redis://host:port/db".
    queue: str = "sqlite"
    timezone: str = "UTC"
    # Limits on what a client may send (README "Limits and security").
    max_body_bytes: int = 10 * 1024 * 1024          # request body as sent (413)
    max_decompressed_bytes: int = 10 * 1024 * 1024  # gzip body after decompression (413)
    max_records: int = 1000                         # records per request (400)
    max_json_depth: int = 32                        # nesting of the JSON body (400)
    max_json_containers: int = 200_000              # arrays + objects in one body (413)
    max_metadata_bytes: int = 50 * 1024             # one record's metadata as JSON (record rejected)
    max_metadata_string: int = 2000                 # metadata strings are cut to this
    rate_limit_per_minute: int = 600                # per token; 0 turns the limit off (429)
    rate_limit_burst: int = 0                       # requests at once per token; 0: per minute
    retries: int = 10
    retry_base_delay: float = 2.0
    reconcile_interval: float = 30.0
    lost_after: float = 120.0
    worker_heartbeat: float = 2.0
    shutdown_timeout: float = 30.0
    worker_batch: int = 100  # most jobs a worker takes off the queue at once
    failed_keep: int = 10000  # failed jobs kept; the oldest beyond are discarded
    events_keep: float = 3600.0  # seconds of job events (throughput history) kept
    workers_keep: float = 3600.0  # seconds a worker that stopped beating stays listed
    syncs_keep: float = 30 * 86400.0  # seconds the log of sync requests (table syncs) is kept
    dashboard_user: str = ""
    dashboard_password: str = ""
    secret: str = ""
    metrics_token: str = ""  # when set, GET /metrics needs "Authorization: Bearer <it>"
    dev: bool = False
    fault: str = ""  # test-only fault switch, e.g. "exit-after-commit"
    # bench-only: "naive" enqueues the jobs of a batch one by one (one queue commit each),
    # the baseline `make bench` compares the bulk enqueue with.
    enqueue_mode: str = "bulk"

    @classmethod
    def from_env(cls, env: dict | None = None, **overrides) -> "Settings":
        env = os.environ if env is None else env
        values = {}
        for f in fields(cls):
            raw = env.get(ENV_PREFIX + f.name.upper())
            if raw is not None and raw != "":
                values[f.name] = _coerce(f, raw)
        values.update({k: v for k, v in overrides.items() if v is not None})
        return cls(**values)

    def with_(self, **changes) -> "Settings":
        return replace(self, **{k: v for k, v in changes.items() if v is not None})

    def to_env(self) -> dict:
        """The environment that hands these settings to a child process."""
        return {ENV_PREFIX + f.name.upper(): str(getattr(self, f.name)) for f in fields(self)}

    @property
    def queue_kind(self) -> str:
        return "redis" if self.queue.startswith(("redis://", "rediss://", "unix://")) else "sqlite"

    @property
    def queue_path(self) -> str:
        """File of the SQLite queue: explicit, or the database file itself."""
        if self.queue.startswith("sqlite:///"):
            return self.queue[len("sqlite:///"):]
        return self.db

    @property
    def queue_in_db(self) -> bool:
        """The SQLite queue lives in the database file: a batch's job messages are
        written in the batch's own transaction (committed together or not at all)."""
        if self.queue_kind != "sqlite" or self.db == ":memory:":
            return False
        return Path(self.queue_path).resolve() == Path(self.db).resolve()

    def payload_limits(self):
        from .body import Limits
        return Limits(max_records=self.max_records, max_depth=self.max_json_depth,
                      max_containers=self.max_json_containers,
                      max_metadata_bytes=self.max_metadata_bytes,
                      max_meta_string=self.max_metadata_string)

    def problems(self) -> list[str]:
        """What is wrong with these settings, in words a user can act on (empty: fine)."""
        out = []
        if not self.db.strip():  # `--db "$UNSET"`: SQLite would make a temporary database
            out.append("the database file is empty: pass --db FILE or set PAGESYNC_DB")
        q = self.queue
        if q.startswith("sqlite:///") and not self.queue_path.strip():
            out.append("queue 'sqlite:///' names no file: use sqlite:///FILE, or 'sqlite' for "
                       "the queue inside the database file")
        elif q != "sqlite" and not q.startswith("sqlite:///"):
            out.extend(redis_url_problems(q))
        try:
            if self.timezone.upper() != "UTC":
                ZoneInfo(self.timezone)
        except (ZoneInfoNotFoundError, ValueError):
            out.append(f"timezone {self.timezone!r} is unknown (use an IANA name like Europe/Paris)")
        for name in ("max_body_bytes", "max_decompressed_bytes", "max_records", "max_json_depth",
                     "max_json_containers", "max_metadata_bytes", "max_metadata_string",
                     "worker_heartbeat", "reconcile_interval", "lost_after", "worker_batch"):
            if not 0 < getattr(self, name) < math.inf:  # nan fails this too
                out.append(f"{env_name(name)} must be a positive finite number, "
                           f"got {getattr(self, name)}")
        for name in ("rate_limit_per_minute", "rate_limit_burst", "retries", "retry_base_delay",
                     "shutdown_timeout", "failed_keep", "events_keep", "workers_keep",
                     "syncs_keep"):
            if not getattr(self, name) >= 0:  # nan fails this too
                out.append(f"{env_name(name)} must not be negative, got {getattr(self, name)}")
        return out

    def describe_queue(self) -> str:
        """The queue as logs and pages show it: a Redis password is never shown."""
        return hide_password(self.queue) if self.queue_kind == "redis" \
            else f"sqlite:///{self.queue_path}"


SECRET_PARAMETER = re.compile(r"(?i)([?&](?:password|pass|pwd)=)[^&#]*")


def hide_password(url: str | None) -> str:
    """A queue url as it may be shown (pure): redis://user:secret@host:6379/0 ->
    redis://user:***@host:6379/0, and ?password=secret -> ?password=***. A password
    holding '@' is hidden whole; a url too broken to parse still loses its password."""
    url = SECRET_PARAMETER.sub(r"\1***", url or "")
    scheme, sep, rest = url.partition("://")
    if not sep:
        return url
    end = min((i for i in map(rest.find, "/?#") if i >= 0), default=len(rest))
    userinfo, at, host = rest[:end].rpartition("@")
    if not at or ":" not in userinfo:
        return url
    return f"{scheme}://{userinfo.partition(':')[0]}:***@{host}{rest[end:]}"


def redis_url_problems(url: str) -> list[str]:
    """What makes a Redis URL unusable whether or not Redis is up (a config error is not
    an outage: it is refused at start, not retried for ever)."""
    shown = hide_password(url)
    try:
        parts = urlsplit(url)
        understood = parts.scheme in ("redis", "rediss", "unix") and \
            (parts.scheme == "unix" or bool(parts.hostname))
    except ValueError:  # e.g. an unclosed [ of an IPv6 address
        understood = False
    if not understood:
        return [f"queue {shown!r} is not understood: use 'sqlite', sqlite:///FILE or "
                "redis://HOST:PORT/DB"]
    try:
        parts.port
    except ValueError:
        return [f"queue {shown!r} has an invalid port"]
    number = parts.path.strip("/")
    if parts.scheme != "unix" and number and not number.isdigit():
        return [f"queue {shown!r}: the part after HOST:PORT/ must be a database number "
                f"(redis://HOST:PORT/0), got {number!r}"]
    if number and "db" in parse_qs(parts.query):
        return [f"queue {shown!r} gives the database number twice (/{number} and ?db=)"]
    from redis import ConnectionPool
    try:  # redis-py passes unknown ?parameters on to the connection, which refuses them
        ConnectionPool.from_url(url).make_connection()
    except (TypeError, ValueError) as exc:
        return [f"queue {shown!r} is not understood by the Redis client: {exc}"]
    return []


def env_name(setting: str) -> str:
    """The environment variable of a setting (what a user sets, so what a message names)."""
    return ENV_PREFIX + setting.upper()


class SettingsError(ValueError):
    """A setting that cannot be used: the message says which and why."""


def _coerce(f, raw: str):
    kind = f.type if isinstance(f.type, str) else f.type.__name__
    name = f"{env_name(f.name)}={raw!r}"
    try:
        if kind == "int":
            return int(raw)
        if kind == "float":
            return float(raw)
    except ValueError:
        what = "a whole number" if kind == "int" else "a number"
        raise SettingsError(f"{name} is not {what}") from None
    if kind == "bool":
        return raw.strip().lower() in ("1", "true", "yes", "on")
    return raw
