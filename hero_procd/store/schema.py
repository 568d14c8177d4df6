"""Versioned migrations, applied in order by `PRAGMA user_version`.

Never edit a released migration: append a new one.
"""

from __future__ import annotations

# job_tags and job_deps carry no foreign keys on purpose: JobsApi.delete_many
# deletes them explicitly per chunk, which measured 5x faster than ON DELETE
# CASCADE for 10,000 jobs (the cascade runs a trigger program per row).
V1 = """
CREATE TABLE actions (
    name        TEXT PRIMARY KEY,
    spec        TEXT NOT NULL,
    tags        TEXT NOT NULL DEFAULT '[]',
    created_at  REAL NOT NULL,
    updated_at  REAL NOT NULL
);

CREATE TABLE runs (
    id          INTEGER PRIMARY KEY AUTOINCREMENT,
    name        TEXT,
    tags        TEXT NOT NULL DEFAULT '[]',
    status      TEXT NOT NULL,
    created_at  REAL NOT NULL,
    finished_at REAL
);

CREATE TABLE jobs (
    id             INTEGER PRIMARY KEY AUTOINCREMENT,
    run_id         INTEGER REFERENCES runs(id),
    key            TEXT,
    action         TEXT,
    spec           TEXT NOT NULL,
    tags           TEXT NOT NULL DEFAULT '[]',
    status         TEXT NOT NULL,
    priority       INTEGER NOT NULL DEFAULT 0,
    grp            TEXT,
    dedup_key      TEXT,
    attempt        INTEGER NOT NULL DEFAULT 0,
    max_attempts   INTEGER NOT NULL DEFAULT 1,
    not_before     REAL NOT NULL DEFAULT 0,
    deps_pending   INTEGER NOT NULL DEFAULT 0,
    claim_token    TEXT,
    pid            INTEGER,
    pid_start_time REAL,
    exit_code      INTEGER,
    signal         INTEGER,
    error          TEXT,
    created_at     REAL NOT NULL,
    started_at     REAL,
    finished_at    REAL
);
CREATE INDEX jobs_claim ON jobs (priority DESC, id) WHERE status = 'queued' AND deps_pending = 0;
CREATE INDEX jobs_status ON jobs (status, id);
CREATE INDEX jobs_run ON jobs (run_id);
CREATE UNIQUE INDEX jobs_dedup ON jobs (dedup_key)
    WHERE status = 'queued' AND dedup_key IS NOT NULL;

CREATE TABLE job_tags (
    tag     TEXT NOT NULL,
    job_id  INTEGER NOT NULL,
    PRIMARY KEY (tag, job_id)
) WITHOUT ROWID;
CREATE INDEX job_tags_job ON job_tags (job_id);

CREATE TABLE job_deps (
    job_id      INTEGER NOT NULL,
    depends_on  INTEGER NOT NULL,
    PRIMARY KEY (job_id, depends_on)
) WITHOUT ROWID;
CREATE INDEX job_deps_depends_on ON job_deps (depends_on);

CREATE TABLE services (
    name           TEXT PRIMARY KEY,
    spec           TEXT NOT NULL,
    desired        TEXT NOT NULL DEFAULT 'stopped',
    state          TEXT NOT NULL DEFAULT 'stopped',
    pid            INTEGER,
    pid_start_time REAL,
    restarts       INTEGER NOT NULL DEFAULT 0,
    exit_code      INTEGER,
    signal         INTEGER,
    health         TEXT,
    memory_bytes   INTEGER,
    cpu_percent    REAL,
    started_at     REAL,
    created_at     REAL NOT NULL,
    updated_at     REAL NOT NULL
);

CREATE TABLE log_lines (
    owner_kind  TEXT NOT NULL,
    owner_id    TEXT NOT NULL,
    seq         INTEGER NOT NULL,
    stream      TEXT NOT NULL,
    ts          REAL NOT NULL,
    text        TEXT NOT NULL,
    PRIMARY KEY (owner_kind, owner_id, seq)
) WITHOUT ROWID;

CREATE TABLE schedules (
    name          TEXT PRIMARY KEY,
    cron          TEXT NOT NULL,
    tz            TEXT,
    target        TEXT NOT NULL,
    overlap       TEXT NOT NULL DEFAULT 'skip',
    paused        INTEGER NOT NULL DEFAULT 0,
    next_fire_at  REAL,
    last_fire_at  REAL,
    last_job_id   INTEGER,
    last_run_id   INTEGER,
    fires         INTEGER NOT NULL DEFAULT 0,
    skipped       INTEGER NOT NULL DEFAULT 0,
    created_at    REAL NOT NULL,
    updated_at    REAL NOT NULL
);

CREATE TABLE groups (
    name          TEXT PRIMARY KEY,
    max_parallel  INTEGER NOT NULL
);

CREATE TABLE secrets (
    name        TEXT PRIMARY KEY,
    value       TEXT NOT NULL,
    updated_at  REAL NOT NULL
);
"""

# Engine truth: a persisted cancel intent on jobs; one log sequence counter (and a
# count of dropped lines) per owner that outlives attempts, restarts and deletes;
# the exit history of services.
V2 = """
ALTER TABLE jobs ADD COLUMN cancel_requested INTEGER NOT NULL DEFAULT 0;

CREATE TABLE log_owners (
    owner_kind  TEXT NOT NULL,
    owner_id    TEXT NOT NULL,
    last_seq    INTEGER NOT NULL DEFAULT 0,
    dropped     INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (owner_kind, owner_id)
) WITHOUT ROWID;
INSERT INTO log_owners (owner_kind, owner_id, last_seq)
    SELECT owner_kind, owner_id, max(seq) FROM log_lines GROUP BY owner_kind, owner_id;

CREATE TABLE service_events (
    id          INTEGER PRIMARY KEY AUTOINCREMENT,
    service     TEXT NOT NULL,
    at          REAL NOT NULL,
    started_at  REAL,
    exit_code   INTEGER,
    signal      INTEGER,
    ran_s       REAL,
    expected    INTEGER NOT NULL DEFAULT 0,
    restarted   INTEGER NOT NULL DEFAULT 0,
    reason      TEXT
);
CREATE INDEX service_events_service ON service_events (service, id);
"""

# overlap "queue": fires that came while the previous fire's job or run was active wait
# here, counted, and are submitted one by one as each previous one ends.
V3 = """
ALTER TABLE schedules ADD COLUMN queued INTEGER NOT NULL DEFAULT 0;
"""

# Stack files (hero_procd/stack.py): the stack that declared each service, action,
# schedule and group; NULL for an object made by hand, which no prune ever deletes.
V4 = """
ALTER TABLE services ADD COLUMN stack TEXT;
ALTER TABLE actions ADD COLUMN stack TEXT;
ALTER TABLE schedules ADD COLUMN stack TEXT;
ALTER TABLE groups ADD COLUMN stack TEXT;
"""

# Restarts asked for by service.restart, counted apart from the automatic ones
# (`restarts`, like systemd's NRestarts); reset with them when the service is deleted.
V5 = """
ALTER TABLE services ADD COLUMN manual_restarts INTEGER NOT NULL DEFAULT 0;
"""

# Secrets encrypted at rest (hero_procd/secretbox.py): `sealed` tells the values sealed
# with the key from the rows an older hero-procd wrote in clear, which the daemon seals
# at its first start with a key (SecretsApi.unlock); `secrets_key` keeps a known text
# sealed with that key, so a start with another key is refused before anything changes.
V6 = """
ALTER TABLE secrets ADD COLUMN sealed INTEGER NOT NULL DEFAULT 0;
CREATE TABLE secrets_key (
    id          INTEGER PRIMARY KEY CHECK (id = 1),
    check_token TEXT NOT NULL,
    created_at  REAL NOT NULL
);
"""

# Nodes (several daemons on one PostgreSQL queue; SQLite has one): each node's heartbeat,
# the node that runs (ran) a job's attempt, and an optional placement of a job on a node.
V7 = """
CREATE TABLE nodes (
    name          TEXT PRIMARY KEY,
    version       TEXT NOT NULL,
    pid           INTEGER,
    started_at    REAL NOT NULL,
    heartbeat_at  REAL NOT NULL,
    state         TEXT NOT NULL DEFAULT 'alive'
);
ALTER TABLE jobs ADD COLUMN node TEXT;
ALTER TABLE jobs ADD COLUMN pin_node TEXT;
ALTER TABLE services ADD COLUMN node TEXT;
ALTER TABLE actions ADD COLUMN node TEXT;
CREATE INDEX jobs_running_node ON jobs (node) WHERE status = 'running';
"""

MIGRATIONS: list[tuple[int, str]] = [
    (1, V1),
    (2, V2),
    (3, V3),
    (4, V4),
    (5, V5),
    (6, V6),
    (7, V7),
]

# Every table a wipe empties, children before parents.
WIPE_ORDER = (
    "log_lines",
    "log_owners",
    "service_events",
    "job_deps",
    "job_tags",
    "jobs",
    "runs",
    "actions",
    "services",
    "schedules",
)
