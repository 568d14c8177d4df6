-- The dashboard's and the metrics' reads (hero_procd/store/dashboard.py).

-- jobs_by_status --
-- How many jobs are in each status (the jobs_status index answers it).
SELECT status, count(*) AS n FROM jobs GROUP BY status

-- services_by_state --
-- How many services are in each state.
SELECT state, count(*) AS n FROM services GROUP BY state

-- runs_by_status --
-- How many runs are in each status.
SELECT status, count(*) AS n FROM runs GROUP BY status

-- jobs_newest --
-- A page of jobs, newest first, below an id, optionally by status and run.
SELECT * FROM jobs
WHERE id < :before_id
  AND (:status IS NULL OR status = :status)
  AND (:run_id IS NULL OR run_id = :run_id)
ORDER BY id DESC LIMIT :limit

-- jobs_newest_by_tag --
-- A page of jobs carrying a tag, newest first, below an id, optionally by status and run.
SELECT j.* FROM job_tags t JOIN jobs j ON j.id = t.job_id
WHERE t.tag = :tag AND t.job_id < :before_id
  AND (:status IS NULL OR j.status = :status)
  AND (:run_id IS NULL OR j.run_id = :run_id)
ORDER BY t.job_id DESC LIMIT :limit

-- runs_newest --
-- A page of runs, newest first, below an id.
SELECT * FROM runs WHERE id < :before_id ORDER BY id DESC LIMIT :limit

-- log_tail --
-- An owner's last lines (newest first; the caller reverses them).
SELECT owner_kind, owner_id, seq, stream, ts, text FROM log_lines
WHERE owner_kind = ? AND owner_id = ? ORDER BY seq DESC LIMIT ?
