-- All SQL of hero-procd. Blocks: `-- name --`, a description, the statement.

-- seq_get --
-- The last id handed out for an AUTOINCREMENT table (ids are never reused).
SELECT seq FROM sqlite_sequence WHERE name = ?

-- count_rows_actions --
-- Row count of actions.
SELECT count(*) FROM actions

-- counts_all --
-- Row counts of every table shown in system.info, in one read.
SELECT (SELECT count(*) FROM actions)   AS actions,
       (SELECT count(*) FROM jobs)      AS jobs,
       (SELECT count(*) FROM runs)      AS runs,
       (SELECT count(*) FROM services)  AS services,
       (SELECT count(*) FROM log_lines) AS logs,
       (SELECT count(*) FROM schedules) AS schedules

-- action_upsert --
-- Create or replace an action by name, keeping its creation time.
INSERT INTO actions (name, spec, tags, created_at, updated_at)
VALUES (:name, :spec, :tags, :now, :now)
ON CONFLICT (name) DO UPDATE SET spec = excluded.spec, tags = excluded.tags,
                                 updated_at = excluded.updated_at
RETURNING name, spec, tags, created_at, updated_at

-- action_get --
-- One action by name.
SELECT name, spec, tags, created_at, updated_at FROM actions WHERE name = ?

-- action_get_many --
-- Several actions by name (resolving the actions of a run in one read).
SELECT name, spec, tags, created_at, updated_at FROM actions WHERE name IN ({marks})

-- action_list --
-- Every action, by name.
SELECT name, spec, tags, created_at, updated_at FROM actions ORDER BY name

-- action_list_by_tag --
-- Actions carrying a tag, by name.
SELECT name, spec, tags, created_at, updated_at FROM actions
WHERE EXISTS (SELECT 1 FROM json_each(actions.tags) WHERE value = ?)
ORDER BY name

-- action_delete --
-- Delete one action.
DELETE FROM actions WHERE name = ?

-- job_insert --
-- One new job with an id allocated in the same transaction.
INSERT INTO jobs (id, run_id, key, action, spec, tags, status, priority, grp, dedup_key,
                  attempt, max_attempts, not_before, created_at)
VALUES (?, ?, ?, ?, ?, ?, 'queued', ?, ?, ?, 0, ?, 0, ?)

-- job_tag_insert --
-- One tag of a job.
INSERT OR IGNORE INTO job_tags (tag, job_id) VALUES (?, ?)

-- job_dep_insert --
-- One dependency edge between jobs of a run.
INSERT OR IGNORE INTO job_deps (job_id, depends_on) VALUES (?, ?)

-- job_get --
-- One job by id.
SELECT * FROM jobs WHERE id = ?

-- job_deps_of --
-- The ids a job depends on.
SELECT depends_on FROM job_deps WHERE job_id = ? ORDER BY depends_on

-- job_list --
-- A page of jobs in id order, optionally by status and run.
SELECT * FROM jobs
WHERE id > :after_id
  AND (:status IS NULL OR status = :status)
  AND (:run_id IS NULL OR run_id = :run_id)
ORDER BY id LIMIT :limit

-- job_list_by_tag --
-- A page of jobs carrying a tag, in id order, optionally by status and run.
SELECT j.* FROM job_tags t JOIN jobs j ON j.id = t.job_id
WHERE t.tag = :tag AND t.job_id > :after_id
  AND (:status IS NULL OR j.status = :status)
  AND (:run_id IS NULL OR j.run_id = :run_id)
ORDER BY t.job_id LIMIT :limit

-- job_tagged_for_clean --
-- Ids, run ids and statuses of every job with a tag (clean_by_tag's selection).
SELECT j.id, j.run_id, j.status FROM job_tags t JOIN jobs j ON j.id = t.job_id
WHERE t.tag = ?

-- job_delete_ids --
-- Delete a chunk of jobs by id (their tags and edges first: see job_tag_delete_ids).
DELETE FROM jobs WHERE id IN ({marks})

-- job_tag_delete_ids --
-- Delete the tags of a chunk of jobs.
DELETE FROM job_tags WHERE job_id IN ({marks})

-- job_dep_delete_ids --
-- Delete the dependency edges from a chunk of jobs.
DELETE FROM job_deps WHERE job_id IN ({marks})

-- job_dep_delete_targets --
-- Delete the dependency edges to a chunk of jobs.
DELETE FROM job_deps WHERE depends_on IN ({marks})

-- run_insert --
-- One new run.
INSERT INTO runs (name, tags, status, created_at) VALUES (?, ?, 'queued', ?)
RETURNING id

-- run_get --
-- One run by id.
SELECT * FROM runs WHERE id = ?

-- run_jobs --
-- The jobs of a run, in submission order.
SELECT * FROM jobs WHERE run_id = ? ORDER BY id

-- run_job_edges --
-- Every dependency edge inside a run.
SELECT d.job_id, d.depends_on FROM job_deps d JOIN jobs j ON j.id = d.job_id
WHERE j.run_id = ?

-- run_list --
-- A page of runs in id order, optionally by status and tag.
SELECT * FROM runs
WHERE id > :after_id
  AND (:status IS NULL OR status = :status)
  AND (:tag IS NULL OR EXISTS (SELECT 1 FROM json_each(runs.tags) WHERE value = :tag))
ORDER BY id LIMIT :limit

-- run_delete_empty --
-- Delete those of a chunk of runs that have no job left.
DELETE FROM runs
WHERE id IN ({marks}) AND NOT EXISTS (SELECT 1 FROM jobs WHERE jobs.run_id = runs.id)

-- service_upsert --
-- Define or redefine a service; its live state is kept.
INSERT INTO services (name, spec, created_at, updated_at) VALUES (:name, :spec, :now, :now)
ON CONFLICT (name) DO UPDATE SET spec = excluded.spec, updated_at = excluded.updated_at
RETURNING *

-- service_get --
-- One service by name.
SELECT * FROM services WHERE name = ?

-- service_list --
-- Every service, by name.
SELECT * FROM services ORDER BY name

-- service_delete --
-- Delete one service.
DELETE FROM services WHERE name = ?

-- service_status_all --
-- The live status of every service in one read.
SELECT name, state, desired, pid, restarts, exit_code, signal, health, started_at,
       memory_bytes, cpu_percent
FROM services ORDER BY name

-- service_status_one --
-- The live status of one service.
SELECT name, state, desired, pid, restarts, exit_code, signal, health, started_at,
       memory_bytes, cpu_percent
FROM services WHERE name = ?

-- log_insert --
-- One log line.
INSERT OR IGNORE INTO log_lines (owner_kind, owner_id, seq, stream, ts, text)
VALUES (?, ?, ?, ?, ?, ?)

-- log_read --
-- A page of an owner's log lines after a sequence number.
SELECT seq, stream, ts, text FROM log_lines
WHERE owner_kind = ? AND owner_id = ? AND seq > ?
ORDER BY seq LIMIT ?

-- log_last_seq --
-- The last sequence number of an owner's log lines.
SELECT max(seq) FROM log_lines WHERE owner_kind = ? AND owner_id = ?

-- log_delete_owners --
-- Delete the lines of a chunk of owners of one kind.
DELETE FROM log_lines WHERE owner_kind = ? AND owner_id IN ({marks})
