-- All SQL of hero-procd. Blocks: `-- name --`, a description, the statement.

-- seq_get --
-- The last id handed out for an AUTOINCREMENT table (ids are never reused).
SELECT seq FROM sqlite_sequence WHERE name = ?

-- ids_allocate_pg --
-- PostgreSQL only: n new ids of a table, from its sequence (other nodes draw meanwhile).
SELECT nextval(pg_get_serial_sequence(?, 'id')) FROM generate_series(1, ?)

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
INSERT INTO actions (name, spec, tags, node, created_at, updated_at)
VALUES (:name, :spec, :tags, :node, :now, :now)
ON CONFLICT (name) DO UPDATE SET spec = excluded.spec, tags = excluded.tags,
                                 node = excluded.node, updated_at = excluded.updated_at
RETURNING name, spec, tags, node, stack, created_at, updated_at

-- action_get --
-- One action by name.
SELECT name, spec, tags, node, stack, created_at, updated_at FROM actions WHERE name = ?

-- action_get_many --
-- Several actions by name (resolving the actions of a run in one read).
SELECT name, spec, tags, node, stack, created_at, updated_at FROM actions WHERE name IN ({marks})

-- action_list --
-- Every action, by name.
SELECT name, spec, tags, node, stack, created_at, updated_at FROM actions ORDER BY name

-- action_list_by_tag --
-- Actions carrying a tag, by name.
SELECT name, spec, tags, node, stack, created_at, updated_at FROM actions
WHERE EXISTS (SELECT 1 FROM json_each(actions.tags) WHERE value = ?)
ORDER BY name

-- action_delete --
-- Delete one action.
DELETE FROM actions WHERE name = ?

-- job_insert --
-- One new job with an id allocated in the same transaction.
INSERT INTO jobs (id, run_id, key, action, spec, tags, status, priority, grp, dedup_key,
                  attempt, max_attempts, not_before, deps_pending, created_at, pin_node)
VALUES (?, ?, ?, ?, ?, ?, 'queued', ?, ?, ?, 0, ?, 0, ?, ?, ?)

-- job_insert_stretch --
-- Jobs alike but for their spec (SQLite): one row per spec (object) of the JSON array :specs,
-- with consecutive ids from :first_id, allocated in the same transaction.
INSERT INTO jobs (id, run_id, key, action, spec, tags, status, priority, grp, dedup_key,
                  attempt, max_attempts, not_before, deps_pending, created_at, pin_node)
SELECT :first_id + s.key, :run_id, :key, :action, s.value, :tags, 'queued', :priority, :grp,
       :dedup_key, 0, :max_attempts, 0, :deps_pending, :created_at, :pin_node
FROM json_each(:specs) AS s

-- job_tag_insert_range --
-- One tag of each job with an id from ?2 to ?3 (SQLite).
WITH RECURSIVE ids(id) AS (SELECT ?2 UNION ALL SELECT id + 1 FROM ids WHERE id < ?3)
INSERT INTO job_tags (tag, job_id) SELECT ?1, id FROM ids WHERE true ON CONFLICT DO NOTHING

-- job_tag_insert --
-- One tag of a job.
INSERT INTO job_tags (tag, job_id) VALUES (?, ?) ON CONFLICT DO NOTHING

-- job_dep_insert --
-- One dependency edge between jobs of a run.
INSERT INTO job_deps (job_id, depends_on) VALUES (?, ?) ON CONFLICT DO NOTHING

-- job_get --
-- One job by id, with the count of its log lines dropped.
SELECT jobs.*, coalesce(o.dropped, 0) AS dropped_log_lines FROM jobs
LEFT JOIN log_owners o ON o.owner_kind = 'job' AND o.owner_id = CAST(jobs.id AS TEXT)
WHERE jobs.id = ?

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

-- job_list_desc --
-- A page of jobs newest first (ids below :before_id), optionally by status and run.
SELECT * FROM jobs
WHERE id < :before_id
  AND (:status IS NULL OR status = :status)
  AND (:run_id IS NULL OR run_id = :run_id)
ORDER BY id DESC LIMIT :limit

-- job_list_by_tag_desc --
-- A page of jobs carrying a tag, newest first (ids below :before_id).
SELECT j.* FROM job_tags t JOIN jobs j ON j.id = t.job_id
WHERE t.tag = :tag AND t.job_id < :before_id
  AND (:status IS NULL OR j.status = :status)
  AND (:run_id IS NULL OR j.run_id = :run_id)
ORDER BY t.job_id DESC LIMIT :limit

-- job_statuses --
-- The status of each of a chunk of jobs (those that exist).
SELECT id, status FROM jobs WHERE id IN ({marks})

-- job_list_by_tag --
-- A page of jobs carrying a tag, in id order, optionally by status and run.
SELECT j.* FROM job_tags t JOIN jobs j ON j.id = t.job_id
WHERE t.tag = :tag AND t.job_id > :after_id
  AND (:status IS NULL OR j.status = :status)
  AND (:run_id IS NULL OR j.run_id = :run_id)
ORDER BY t.job_id LIMIT :limit

-- job_page_of --
-- One of the job_list* pages ({rows} stands for its statement) as one JSON array of the
-- objects job.list shows (records.job_wire), its row count and its lowest and highest id,
-- built by SQLite in one step while the GIL is released. Reals go through
-- printf('%!.17g'), which round-trips (json_object writes 15 digits); the spec's fields
-- (never null) are merged in by json_patch. The page statement's order is the array's.
SELECT json_group_array(json_patch(json_object(
    'id', j.id, 'run_id', j.run_id, 'key', j.key, 'action', j.action, 'tags', json(j.tags),
    'status', j.status, 'priority', j.priority, 'group', j.grp, 'dedup_key', j.dedup_key,
    'attempt', j.attempt, 'max_attempts', j.max_attempts,
    'not_before', json(printf('%!.17g', j.not_before)),
    'pid', j.pid, 'exit_code', j.exit_code, 'signal', j.signal, 'error', j.error,
    'created_at', json(printf('%!.17g', j.created_at)),
    'started_at', iif(j.started_at IS NULL, NULL, json(printf('%!.17g', j.started_at))),
    'finished_at', iif(j.finished_at IS NULL, NULL, json(printf('%!.17g', j.finished_at))),
    'cancel_requested', json(iif(j.cancel_requested, 'true', 'false')),
    'dropped_log_lines', 0, 'node', j.node, 'pin_node', j.pin_node
), j.spec)) AS page, count(*) AS n, min(j.id) AS low_id,
       max(j.id) AS high_id
FROM ({rows}) AS j

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

-- run_list_desc --
-- A page of runs newest first (ids below :before_id), optionally by status and tag.
SELECT * FROM runs
WHERE id < :before_id
  AND (:status IS NULL OR status = :status)
  AND (:tag IS NULL OR EXISTS (SELECT 1 FROM json_each(runs.tags) WHERE value = :tag))
ORDER BY id DESC LIMIT :limit

-- run_delete_empty --
-- Delete those of a chunk of runs that have no job left.
DELETE FROM runs
WHERE id IN ({marks}) AND NOT EXISTS (SELECT 1 FROM jobs WHERE jobs.run_id = runs.id)

-- service_upsert --
-- Define or redefine a service; its live state is kept.
INSERT INTO services (name, spec, node, created_at, updated_at)
VALUES (:name, :spec, :node, :now, :now)
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
SELECT name, state, desired, pid, restarts, manual_restarts, exit_code, signal, health,
       started_at, memory_bytes, cpu_percent, node, json_extract(spec, '$.tags') AS tags
FROM services ORDER BY name

-- service_status_one --
-- The live status of one service.
SELECT name, state, desired, pid, restarts, manual_restarts, exit_code, signal, health,
       started_at, memory_bytes, cpu_percent, node, json_extract(spec, '$.tags') AS tags
FROM services WHERE name = ?

-- log_insert --
-- One log line (each owner's sequence numbers are never reused: a collision is an error).
INSERT INTO log_lines (owner_kind, owner_id, seq, stream, ts, text) VALUES (?, ?, ?, ?, ?, ?)

-- log_read --
-- A page of an owner's log lines after a sequence number (and at or after a time).
SELECT seq, stream, ts, text FROM log_lines
WHERE owner_kind = :kind AND owner_id = :owner AND seq > :after_seq
  AND (:since IS NULL OR ts >= :since)
ORDER BY seq LIMIT :limit

-- log_tail_start --
-- The seq just before an owner's last :tail lines after :after_seq (and at or after :since).
SELECT seq FROM log_lines
WHERE owner_kind = :kind AND owner_id = :owner AND seq > :after_seq
  AND (:since IS NULL OR ts >= :since)
ORDER BY seq DESC LIMIT 1 OFFSET :tail

-- log_last_seq --
-- The last sequence number of an owner's log lines.
SELECT max(seq) FROM log_lines WHERE owner_kind = ? AND owner_id = ?

-- log_delete_owners --
-- Delete the lines of a chunk of owners of one kind.
DELETE FROM log_lines WHERE owner_kind = ? AND owner_id IN ({marks})

-- job_claim_candidates --
-- Queued jobs ready to run (dependencies met, backoff over), best first. The partial index
-- is named: without statistics SQLite picked jobs_status and sorted every queued row
-- (3 ms a claim with 10,000 queued, against 0.03 ms).
SELECT id, grp FROM jobs INDEXED BY jobs_claim
WHERE status = 'queued' AND deps_pending = 0 AND not_before <= ?
  AND (pin_node IS NULL OR pin_node = ?)
ORDER BY priority DESC, id LIMIT ?

-- job_claim_candidates_excluding --
-- The same, leaving out the groups that are at their limit (the first parameters: time, node).
SELECT id, grp FROM jobs INDEXED BY jobs_claim
WHERE status = 'queued' AND deps_pending = 0 AND not_before <= ?
  AND (pin_node IS NULL OR pin_node = ?)
  AND (grp IS NULL OR grp NOT IN ({marks}))
ORDER BY priority DESC, id LIMIT ?

-- job_claim --
-- Claim a chunk of queued jobs for one executor: running, with its token, one more attempt.
UPDATE jobs SET status = 'running', claim_token = ?, node = ?, attempt = attempt + 1,
                started_at = ?,
                finished_at = NULL, pid = NULL, pid_start_time = NULL, exit_code = NULL,
                signal = NULL, error = NULL
WHERE id IN ({marks}) AND status = 'queued'
RETURNING id, run_id, spec, grp, attempt, max_attempts, claim_token,
          (SELECT last_seq FROM log_owners
           WHERE owner_kind = 'job' AND owner_id = CAST(jobs.id AS TEXT)) AS last_seq

-- job_next_ready_at --
-- When the earliest job in backoff becomes ready.
SELECT min(not_before) FROM jobs WHERE status = 'queued' AND deps_pending = 0 AND not_before > ?

-- job_set_pid --
-- Record the process of a claimed job (only while this claim owns it).
UPDATE jobs SET pid = ?, pid_start_time = ? WHERE id = ? AND claim_token = ? AND status = 'running'

-- job_finish --
-- End one attempt of a claimed job (only while this claim owns it and it is running).
UPDATE jobs SET status = :status, error = :error, exit_code = :exit_code, signal = :signal,
                finished_at = :finished_at, not_before = :not_before,
                attempt = attempt + :attempt_delta
WHERE id = :id AND claim_token = :token AND status = 'running'

-- job_cancel_queued --
-- Cancel a queued job at once (its intent recorded too).
UPDATE jobs SET status = 'cancelled', cancel_requested = 1, finished_at = ?, error = ?
WHERE id = ? AND status = 'queued'
RETURNING id, run_id

-- job_cancel_queued_of_run --
-- Cancel every queued job of a run.
UPDATE jobs SET status = 'cancelled', cancel_requested = 1, finished_at = ?, error = ?
WHERE run_id = ? AND status = 'queued'
RETURNING id, run_id

-- job_running_ids_of_run --
-- The running jobs of a run.
SELECT id FROM jobs WHERE run_id = ? AND status = 'running'

-- job_release_dependents --
-- One dependency of each dependent of a succeeded job is met.
UPDATE jobs SET deps_pending = deps_pending - 1
WHERE status = 'queued' AND id IN (SELECT job_id FROM job_deps WHERE depends_on = ?)

-- job_skip_dependents --
-- Queued dependents of jobs that did not succeed are skipped.
UPDATE jobs SET status = 'skipped', finished_at = ?, error = 'a dependency did not succeed'
WHERE status = 'queued' AND id IN (SELECT job_id FROM job_deps WHERE depends_on IN ({marks}))
RETURNING id, run_id

-- job_set_deps_pending --
-- How many dependencies a new job of a run waits for.
UPDATE jobs SET deps_pending = ? WHERE id = ?

-- job_running_all --
-- Jobs left running (by a previous daemon, at start-up).
SELECT id, run_id, pid, pid_start_time, attempt, max_attempts, spec FROM jobs WHERE status = 'running'

-- job_recover --
-- Settle a job found running at start-up (only if it still is).
UPDATE jobs SET status = :status, error = :error, finished_at = :finished_at,
                not_before = :not_before, attempt = attempt + :attempt_delta
WHERE id = :id AND status = 'running'

-- job_dedup_held --
-- Queued jobs holding some dedup keys.
SELECT id, dedup_key FROM jobs WHERE status = 'queued' AND dedup_key IN ({marks})

-- job_supersede --
-- A queued job replaced by a newer one with the same dedup key.
UPDATE jobs SET status = 'cancelled', finished_at = ?, error = ?
WHERE id = ? AND status = 'queued'
RETURNING id, run_id

-- job_status_of --
-- Status and run of some jobs.
SELECT id, run_id, status FROM jobs WHERE id IN ({marks})

-- run_status_counts --
-- Per run: how many of its jobs are in each state (to derive the run's status).
SELECT run_id,
       count(*) AS total,
       sum(status = 'queued') AS queued,
       sum(status = 'running') AS running,
       sum(status = 'succeeded') AS succeeded,
       sum(status = 'cancelled') AS cancelled,
       sum(attempt > 0 OR status NOT IN ('queued', 'running')) AS started,
       max(finished_at) AS last_finished
FROM jobs WHERE run_id IN ({marks}) GROUP BY run_id

-- run_set_status --
-- Store a run's derived status.
UPDATE runs SET status = ?, finished_at = ? WHERE id = ? AND (status != ? OR finished_at IS NOT ?)

-- group_set --
-- Create or change a concurrency group.
INSERT INTO groups (name, max_parallel) VALUES (?, ?)
ON CONFLICT (name) DO UPDATE SET max_parallel = excluded.max_parallel

-- group_list --
-- Every concurrency group.
SELECT name, max_parallel, stack FROM groups ORDER BY name

-- group_delete --
-- Delete a concurrency group.
DELETE FROM groups WHERE name = ?

-- service_set_state --
-- The live state of a service, as the supervisor sees it.
UPDATE services SET state = ?, pid = ?, pid_start_time = ?, restarts = ?, manual_restarts = ?,
                    exit_code = ?, signal = ?, health = ?, started_at = ?, updated_at = ?
WHERE name = ?

-- service_set_stats --
-- Sampled memory and CPU of a service's process group.
UPDATE services SET memory_bytes = ?, cpu_percent = ? WHERE name = ?

-- service_set_desired --
-- Whether a service should be running (kept across daemon restarts).
UPDATE services SET desired = ?, updated_at = ? WHERE name = ?

-- service_reset_all --
-- At start-up no service process of this node is alive: their live states are stopped.
UPDATE services SET state = 'stopped', pid = NULL, pid_start_time = NULL, health = NULL,
                    memory_bytes = NULL, cpu_percent = NULL, started_at = NULL
WHERE node = ? OR node IS NULL

-- service_adopt_all --
-- SQLite has one node: every service is this daemon's (its host name may have changed).
UPDATE services SET node = ? WHERE node IS NULL OR node != ?

-- secret_set --
-- Create or replace a secret (the value sealed with the key, never in clear).
INSERT INTO secrets (name, value, updated_at, sealed) VALUES (?, ?, ?, 1)
ON CONFLICT (name) DO UPDATE SET value = excluded.value, updated_at = excluded.updated_at,
    sealed = 1

-- secret_get --
-- One secret's stored value and whether it is sealed.
SELECT value, sealed FROM secrets WHERE name = ?

-- secret_get_many --
-- Several secrets' stored values (resolved at spawn time).
SELECT name, value, sealed FROM secrets WHERE name IN ({marks})

-- secret_clear_rows --
-- Values an older hero-procd stored in clear, to be sealed at start-up.
SELECT name, value FROM secrets WHERE sealed = 0

-- secret_seal_row --
-- Replace a clear value by its sealed form.
UPDATE secrets SET value = ?, sealed = 1 WHERE name = ? AND sealed = 0

-- secret_key_check --
-- The known text sealed with the key of this database's secrets (none before the first key).
SELECT check_token FROM secrets_key WHERE id = 1

-- secret_key_check_set --
-- Remember which key seals this database's secrets, unless another node's first start
-- recorded one first (PostgreSQL: waits for its commit; no row changed then).
INSERT INTO secrets_key (id, check_token, created_at) VALUES (1, ?, ?) ON CONFLICT (id) DO NOTHING

-- secret_any_sealed --
-- Whether a value sealed with this database's key is stored (else the key guards nothing).
SELECT 1 FROM secrets WHERE sealed = 1 LIMIT 1

-- secret_key_check_forget --
-- A key that sealed nothing is forgotten, so that a new one can be made.
DELETE FROM secrets_key WHERE id = 1

-- secret_list --
-- Secret names (never values) and when they changed.
SELECT name, updated_at FROM secrets ORDER BY name

-- secret_delete --
-- Delete a secret.
DELETE FROM secrets WHERE name = ?

-- schedule_upsert --
-- Create or replace a schedule; a replaced one keeps its history (and its queued fires while
-- its overlap stays 'queue').
INSERT INTO schedules (name, cron, tz, target, overlap, paused, next_fire_at, created_at, updated_at)
VALUES (:name, :cron, :tz, :target, :overlap, :paused, :next_fire_at, :now, :now)
ON CONFLICT (name) DO UPDATE SET cron = excluded.cron, tz = excluded.tz, target = excluded.target,
    overlap = excluded.overlap, paused = excluded.paused, next_fire_at = excluded.next_fire_at,
    queued = CASE WHEN excluded.overlap = 'queue' THEN schedules.queued ELSE 0 END,
    updated_at = excluded.updated_at
RETURNING *

-- schedule_get --
-- One schedule.
SELECT * FROM schedules WHERE name = ?

-- schedule_list --
-- Every schedule, by name.
SELECT * FROM schedules ORDER BY name

-- schedule_delete --
-- Delete a schedule.
DELETE FROM schedules WHERE name = ?

-- schedule_set_paused --
-- Pause or resume a schedule (resuming sets its next fire).
UPDATE schedules SET paused = ?, next_fire_at = ?, updated_at = ? WHERE name = ?

-- schedule_due --
-- Schedules whose next fire has come.
SELECT * FROM schedules WHERE paused = 0 AND next_fire_at <= ? ORDER BY next_fire_at

-- schedule_next_due --
-- When the next schedule fires.
SELECT min(next_fire_at) FROM schedules WHERE paused = 0

-- schedule_fired --
-- Record a fire (submitted, skipped or queued) and the next fire, only if nobody fired that slot
-- meanwhile; a forced fire (schedule.trigger) leaves the next fire as it is.
UPDATE schedules SET last_fire_at = :at,
    next_fire_at = CASE WHEN :forced = 1 THEN next_fire_at ELSE :next_fire_at END,
    last_job_id = coalesce(:job_id, last_job_id), last_run_id = coalesce(:run_id, last_run_id),
    fires = fires + :fired, skipped = skipped + :skipped, queued = queued + :queued
WHERE name = :name AND (:forced = 1 OR next_fire_at IS :expected)

-- job_active --
-- Whether a job is still queued or running.
SELECT status IN ('queued', 'running') FROM jobs WHERE id = ?

-- run_active --
-- Whether a run still has queued or running jobs.
SELECT EXISTS (SELECT 1 FROM jobs WHERE run_id = ? AND status IN ('queued', 'running'))

-- retention_old_jobs --
-- A chunk of finished jobs older than the cutoff (a run is kept whole while any job of it is active).
SELECT id, run_id FROM jobs
WHERE status NOT IN ('queued', 'running') AND finished_at < ?
  AND (run_id IS NULL OR NOT EXISTS (
      SELECT 1 FROM jobs AS a WHERE a.run_id = jobs.run_id AND a.status IN ('queued', 'running')))
ORDER BY id LIMIT ?

-- retention_log_owners_over --
-- Owners with more stored lines than the cap, and their last sequence number.
SELECT owner_kind, owner_id, count(*) AS n, max(seq) AS last FROM log_lines
GROUP BY owner_kind, owner_id HAVING count(*) > ?

-- retention_trim_logs --
-- Drop an owner's oldest lines, keeping the last ones.
DELETE FROM log_lines WHERE owner_kind = ? AND owner_id = ? AND seq <= ?

-- job_end_state --
-- What a finalize needs to decide an attempt's outcome, read in its own transaction.
SELECT id, run_id, status, cancel_requested, attempt, max_attempts, dedup_key, claim_token
FROM jobs WHERE id = ?

-- job_end_states --
-- job_end_state of several jobs at once (the ends of one loop step, see finish_many).
SELECT id, run_id, status, cancel_requested, attempt, max_attempts, dedup_key, claim_token
FROM jobs WHERE id IN ({marks})

-- job_dedup_taken --
-- Whether another queued job holds a dedup key.
SELECT 1 FROM jobs WHERE dedup_key = ? AND status = 'queued' AND id != ? LIMIT 1

-- job_request_cancel --
-- Record the intent to cancel a running job; its process is stopped by whoever runs it.
UPDATE jobs SET cancel_requested = 1 WHERE id = ? AND status = 'running'

-- job_transition --
-- A guarded transition of one job (the state machine's generic step).
UPDATE jobs SET status = :to_status, finished_at = :finished_at, error = :error
WHERE id = :id AND status = :from_status

-- log_owner_bump --
-- Advance an owner's sequence high-water mark and add lines dropped, as lines are written.
INSERT INTO log_owners (owner_kind, owner_id, last_seq, dropped) VALUES (?, ?, ?, ?)
ON CONFLICT (owner_kind, owner_id) DO UPDATE
SET last_seq = max(last_seq, excluded.last_seq), dropped = dropped + excluded.dropped

-- log_owner_get --
-- An owner's sequence high-water mark and dropped count.
SELECT last_seq, dropped FROM log_owners WHERE owner_kind = ? AND owner_id = ?

-- log_owner_delete_many --
-- Forget the counters of a chunk of owners of one kind (their owner is gone for good).
DELETE FROM log_owners WHERE owner_kind = ? AND owner_id IN ({marks})

-- log_owner_reset_dropped --
-- A deleted service keeps its sequence (never reused) but not its dropped count.
UPDATE log_owners SET dropped = 0 WHERE owner_kind = ? AND owner_id = ?

-- dropped_total --
-- Log lines dropped over all owners.
SELECT coalesce(sum(dropped), 0) FROM log_owners

-- service_event_insert --
-- One exit of a service's process.
INSERT INTO service_events (service, at, started_at, exit_code, signal, ran_s, expected,
                            restarted, reason)
VALUES (:service, :at, :started_at, :exit_code, :signal, :ran_s, :expected, :restarted, :reason)

-- service_event_trim --
-- Keep the last 100 exits of a service.
DELETE FROM service_events WHERE service = ? AND id <= (
    SELECT id FROM service_events WHERE service = ? ORDER BY id DESC LIMIT 1 OFFSET 100)

-- service_event_list --
-- A service's exits, newest first.
SELECT * FROM service_events WHERE service = ? ORDER BY id DESC LIMIT ?

-- service_event_delete --
-- Forget a deleted service's exit history.
DELETE FROM service_events WHERE service = ?

-- schedule_get_for_write --
-- A schedule as a fire's or a release's unit sees it (on the writer, inside the transaction).
SELECT * FROM schedules WHERE name = ?

-- schedule_with_queued --
-- Schedules holding queued fires (overlap queue) that may be released: not paused.
SELECT * FROM schedules WHERE queued > 0 AND paused = 0 ORDER BY name

-- schedule_released --
-- Take one queued fire of a schedule: submitted (fired) or dropped (skipped, its target invalid).
UPDATE schedules SET queued = queued - 1, fires = fires + :fired, skipped = skipped + :skipped,
    last_job_id = coalesce(:job_id, last_job_id), last_run_id = coalesce(:run_id, last_run_id)
WHERE name = :name AND queued > 0

-- schedule_active_jobs --
-- The jobs of a schedule's last fire (its job, or its run's jobs) still queued or running.
SELECT id FROM jobs WHERE id = :job_id AND status IN ('queued', 'running')
UNION
SELECT id FROM jobs WHERE run_id = :run_id AND status IN ('queued', 'running')
ORDER BY id

-- notify_pg --
-- PostgreSQL only: tell the other nodes (LISTEN "hero_proc:<schema>") at commit.
SELECT pg_notify('hero_proc:' || current_schema(), ?)

-- node_claim --
-- Take this node's name as this daemon (its pid, a new started_at), unless the row changed
-- since it was seen (:seen_pid, :seen_started; -1 when there was none; a row of an older
-- version may have no pid): another daemon
-- took the name meanwhile (no row changed then).
INSERT INTO nodes (name, version, pid, started_at, heartbeat_at, state)
VALUES (:name, :version, :pid, :now, :now, 'alive')
ON CONFLICT (name) DO UPDATE SET version = excluded.version, pid = excluded.pid,
    started_at = excluded.started_at, heartbeat_at = excluded.heartbeat_at, state = 'alive'
WHERE nodes.pid IS :seen_pid AND nodes.started_at = :seen_started

-- node_revive --
-- Mark this daemon's row alive, heartbeating now (a node declared dead while cut off);
-- no row changes if another daemon took the name meanwhile.
UPDATE nodes SET heartbeat_at = :now, state = 'alive'
WHERE name = :name AND pid = :pid AND started_at = :started_at

-- node_heartbeat --
-- Renew this daemon's live row (a node declared dead must revive; a taken name is not ours).
UPDATE nodes SET heartbeat_at = :now
WHERE name = :name AND pid = :pid AND started_at = :started_at AND state = 'alive'

-- node_stopped --
-- This daemon stopped gracefully (the row of another daemon that took the name stays).
UPDATE nodes SET state = 'stopped' WHERE name = :name AND pid = :pid AND started_at = :started_at

-- node_list --
-- Every node, the age of its heartbeat and how many jobs it runs.
SELECT n.name, n.version, n.pid, n.started_at, n.state, :now - n.heartbeat_at AS age,
       (SELECT count(*) FROM jobs j WHERE j.node = n.name AND j.status = 'running') AS running
FROM nodes n ORDER BY n.name

-- node_mark_dead --
-- Declare dead the live nodes (other than the sweeper) whose heartbeat is too old.
UPDATE nodes SET state = 'dead'
WHERE state = 'alive' AND name != :name AND heartbeat_at < :now - :timeout
RETURNING name

-- node_stale --
-- The live nodes (other than the sweeper) whose heartbeat is too old: about to be declared
-- dead (read without a lock: a cut-off node's session may hold its row's).
SELECT name, pid, started_at FROM nodes
WHERE state = 'alive' AND name != :name AND heartbeat_at < :now - :timeout

-- job_running_of_node --
-- The attempts a node runs.
SELECT id, run_id, pid, pid_start_time, attempt, max_attempts, spec FROM jobs
WHERE status = 'running' AND node = ?

-- job_running_mine --
-- Jobs left running by this node (a previous daemon of the same node, at start-up).
SELECT id, run_id, pid, pid_start_time, attempt, max_attempts, spec FROM jobs
WHERE status = 'running' AND (node = ? OR node IS NULL)

-- job_cancel_requested_of_node --
-- A node's running attempts whose cancel was asked (possibly through another node).
SELECT id FROM jobs WHERE status = 'running' AND node = ? AND cancel_requested = 1

-- claim_lock_pg --
-- PostgreSQL only: claims within group limits take turns across the nodes.
SELECT pg_advisory_xact_lock(hashtext('hero_proc.claim:' || current_schema()))

-- node_end_sessions_pg --
-- PostgreSQL only: end the database sessions of daemons about to be declared dead (named by
-- their application_name), waiting up to :wait_ms for each to exit; the sessions ended.
SELECT count(*) FILTER (WHERE pg_terminate_backend(pid, :wait_ms)) FROM pg_stat_activity
WHERE datname = current_database() AND application_name = ANY(:apps) AND pid != pg_backend_pid()

-- node_sweep_lock_pg --
-- PostgreSQL only: one live node at a time declares others dead (false: another one is).
SELECT pg_try_advisory_xact_lock(hashtext('hero_proc.sweep:' || current_schema()))

-- group_any --
-- Whether any concurrency group has a limit.
SELECT EXISTS (SELECT 1 FROM groups)

-- group_room --
-- Free slots of every limited group over all nodes (running attempts, whoever runs them).
SELECT g.name, g.max_parallel - count(j.id) AS room FROM groups g
LEFT JOIN jobs j ON j.grp = g.name AND j.status = 'running'
GROUP BY g.name, g.max_parallel

-- stack_services --
-- Every service's definition and stack (the current state a stack plan starts from).
SELECT name, spec, stack FROM services ORDER BY name

-- stack_actions --
-- Every action's definition and stack.
SELECT name, spec, tags, stack FROM actions ORDER BY name

-- stack_schedules --
-- Every schedule's definition and stack.
SELECT name, cron, tz, target, overlap, paused, stack FROM schedules ORDER BY name

-- stack_groups --
-- Every concurrency group and its stack.
SELECT name, max_parallel, stack FROM groups ORDER BY name

-- stack_service_upsert --
-- Create or redefine a service for a stack; its live state (and its node) is kept.
INSERT INTO services (name, spec, stack, node, created_at, updated_at)
VALUES (:name, :spec, :stack, :node, :now, :now)
ON CONFLICT (name) DO UPDATE SET spec = excluded.spec, stack = excluded.stack,
                                 updated_at = excluded.updated_at

-- stack_action_upsert --
-- Create or replace an action for a stack.
INSERT INTO actions (name, spec, tags, stack, created_at, updated_at)
VALUES (:name, :spec, :tags, :stack, :now, :now)
ON CONFLICT (name) DO UPDATE SET spec = excluded.spec, tags = excluded.tags,
                                 stack = excluded.stack, updated_at = excluded.updated_at

-- stack_schedule_upsert --
-- Create or replace a schedule for a stack (as schedule_upsert, with its stack).
INSERT INTO schedules (name, cron, tz, target, overlap, paused, next_fire_at, stack,
                       created_at, updated_at)
VALUES (:name, :cron, :tz, :target, :overlap, :paused, :next_fire_at, :stack, :now, :now)
ON CONFLICT (name) DO UPDATE SET cron = excluded.cron, tz = excluded.tz, target = excluded.target,
    overlap = excluded.overlap, paused = excluded.paused, next_fire_at = excluded.next_fire_at,
    queued = CASE WHEN excluded.overlap = 'queue' THEN queued ELSE 0 END,
    stack = excluded.stack, updated_at = excluded.updated_at

-- stack_group_upsert --
-- Create or change a concurrency group for a stack.
INSERT INTO groups (name, max_parallel, stack) VALUES (?, ?, ?)
ON CONFLICT (name) DO UPDATE SET max_parallel = excluded.max_parallel, stack = excluded.stack

-- stack_service_spec --
-- One service's definition, read inside the unit that updates it.
SELECT spec FROM services WHERE name = ?

-- stack_service_set_spec --
-- A service's new definition (service.update); its live state and stack are kept.
UPDATE services SET spec = ?, updated_at = ? WHERE name = ?
