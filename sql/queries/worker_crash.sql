-- Crash isolation (dispatchbox/worker/process.py, WorkerProcess._claim): an event held through a
-- worker crash (crash_attempts > 0) is a suspect; a process runs one suspect at a time and gives
-- the others back (due at once), so that a poison event's next crash is shared with no other
-- suspect and the events it took down with it are not counted towards poison again and again.

-- name: worker_defer :exec
-- Give back claimed events whose handler never started, due again in %(seconds)s: pending, the
-- attempt the claim counted taken back. Same key lookups and token guard as worker_release.
UPDATE outbox_event e
   SET status = 'pending',
       attempts = GREATEST(e.attempts - 1, 0),
       next_attempt_at = now() + make_interval(secs => %(seconds)s),
       updated_at = now(),
       locked_by = NULL,
       locked_until = NULL,
       lease_token = NULL
 WHERE e.id = ANY (ARRAY(SELECT unnest(%(ids)s::bigint[])))
   AND e.lease_token = ANY (ARRAY(SELECT DISTINCT unnest(%(tokens)s::uuid[])))
