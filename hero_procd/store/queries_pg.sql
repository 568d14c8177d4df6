-- PostgreSQL's texts of the statements of queries.sql whose SQLite text it does not run.
-- Same blocks and names; placeholders stay in SQLite's style (`?`, `:name`) and are
-- translated with every other statement (store/postgres.py). Every other statement of
-- queries.sql runs on PostgreSQL as written.

-- job_claim_candidates --
-- Queued jobs ready to run, best first; rows another node is claiming are skipped.
SELECT id, grp FROM jobs
WHERE status = 'queued' AND deps_pending = 0 AND not_before <= ?
  AND (pin_node IS NULL OR pin_node = ?)
ORDER BY priority DESC, id LIMIT ?
FOR UPDATE SKIP LOCKED

-- job_claim_candidates_excluding --
-- The same, leaving out the groups that are at their limit (the first parameters: time, node).
SELECT id, grp FROM jobs
WHERE status = 'queued' AND deps_pending = 0 AND not_before <= ?
  AND (pin_node IS NULL OR pin_node = ?)
  AND (grp IS NULL OR grp NOT IN ({marks}))
ORDER BY priority DESC, id LIMIT ?
FOR UPDATE SKIP LOCKED

-- run_status_counts --
-- Per run: how many of its jobs are in each state (to derive the run's status).
SELECT run_id,
       count(*) AS total,
       count(*) FILTER (WHERE status = 'queued') AS queued,
       count(*) FILTER (WHERE status = 'running') AS running,
       count(*) FILTER (WHERE status = 'succeeded') AS succeeded,
       count(*) FILTER (WHERE status = 'cancelled') AS cancelled,
       count(*) FILTER (WHERE attempt > 0 OR status NOT IN ('queued', 'running')) AS started,
       max(finished_at) AS last_finished
FROM jobs WHERE run_id IN ({marks}) GROUP BY run_id

-- run_set_status --
-- Store a run's derived status.
UPDATE runs SET status = ?, finished_at = ?
WHERE id = ? AND (status != ? OR finished_at IS DISTINCT FROM CAST(? AS double precision))

-- schedule_fired --
-- Record a fire and the next fire, only if nobody fired that slot meanwhile (any node).
UPDATE schedules SET last_fire_at = :at,
    next_fire_at = CASE WHEN :forced = 1 THEN next_fire_at
                        ELSE CAST(:next_fire_at AS double precision) END,
    last_job_id = coalesce(CAST(:job_id AS bigint), last_job_id),
    last_run_id = coalesce(CAST(:run_id AS bigint), last_run_id),
    fires = fires + :fired, skipped = skipped + :skipped, queued = queued + :queued
WHERE name = :name
  AND (:forced = 1 OR next_fire_at IS NOT DISTINCT FROM CAST(:expected AS double precision))

-- log_owner_bump --
-- Advance an owner's sequence high-water mark and add lines dropped, as lines are written.
INSERT INTO log_owners (owner_kind, owner_id, last_seq, dropped) VALUES (?, ?, ?, ?)
ON CONFLICT (owner_kind, owner_id) DO UPDATE
SET last_seq = greatest(log_owners.last_seq, excluded.last_seq),
    dropped = log_owners.dropped + excluded.dropped

-- node_claim --
-- Take this node's name as this daemon, unless the row changed since it was seen (the
-- database's clock). The row is locked and the WHERE read again on its latest version:
-- of two daemons claiming at once, the second changes nothing.
INSERT INTO nodes (name, version, pid, started_at, heartbeat_at, state)
VALUES (:name, :version, :pid, :now, extract(epoch from clock_timestamp()), 'alive')
ON CONFLICT (name) DO UPDATE SET version = excluded.version, pid = excluded.pid,
    started_at = excluded.started_at, heartbeat_at = excluded.heartbeat_at, state = 'alive'
WHERE nodes.pid IS NOT DISTINCT FROM CAST(:seen_pid AS BIGINT) AND nodes.started_at = :seen_started

-- node_revive --
-- Mark this daemon's row alive, heartbeating now (the database's clock).
UPDATE nodes SET heartbeat_at = extract(epoch from clock_timestamp()), state = 'alive'
WHERE name = :name AND pid = :pid AND started_at = :started_at

-- node_heartbeat --
-- Renew this daemon's live row (the database's clock).
UPDATE nodes SET heartbeat_at = extract(epoch from clock_timestamp())
WHERE name = :name AND pid = :pid AND started_at = :started_at AND state = 'alive'

-- node_list --
-- Every node, the age of its heartbeat (the database's clock) and how many jobs it runs.
SELECT n.name, n.version, n.pid, n.started_at, n.state,
       extract(epoch from clock_timestamp()) - n.heartbeat_at AS age,
       (SELECT count(*) FROM jobs j WHERE j.node = n.name AND j.status = 'running') AS running
FROM nodes n ORDER BY n.name

-- node_mark_dead --
-- Declare dead the live nodes (other than the sweeper) whose heartbeat is too old.
UPDATE nodes SET state = 'dead'
WHERE state = 'alive' AND name != :name
  AND heartbeat_at < extract(epoch from clock_timestamp()) - :timeout
RETURNING name

-- node_stale --
-- The live nodes (other than the sweeper) whose heartbeat is too old: about to be declared
-- dead (read without a lock: a cut-off node's session may hold its row's).
SELECT name, pid, started_at FROM nodes WHERE state = 'alive' AND name != :name
  AND heartbeat_at < extract(epoch from clock_timestamp()) - :timeout

-- job_end_state --
-- The row an end, a cancel or a recovery decides on, locked until the unit commits:
-- another node's cancel or end of the same job waits, then reads what this one wrote
-- (without the lock each read the row as it was and wrote over the other's decision).
SELECT id, run_id, status, cancel_requested, attempt, max_attempts, dedup_key, claim_token
FROM jobs WHERE id = ?
FOR UPDATE

-- job_end_states --
-- job_end_state of several jobs at once (finish_many), locked in id order.
SELECT id, run_id, status, cancel_requested, attempt, max_attempts, dedup_key, claim_token
FROM jobs WHERE id IN ({marks})
ORDER BY id
FOR UPDATE
