-- The operator audit trail of dead-letter actions (dispatchbox/repository.py).
--
-- A one-statement action inserts its row, completed, in the transaction that did the work. A
-- multi-batch action (redrive by filter, purge) inserts an in_progress row in its first batch's
-- transaction, adds every later batch's count in that batch's transaction, and is marked completed
-- (or interrupted) at the end: whatever happens, `affected` equals what was committed.

-- name: audit_insert :one
-- Record an action; db_role is the database role doing it.
INSERT INTO outbox_dead_letter_audit
    (actor, action, event_ids, filter, affected, outcome, finished_at, details)
VALUES (
    %(actor)s, %(action)s, %(event_ids)s::bigint[], %(filter)s::jsonb, %(affected)s,
    %(outcome)s,
    CASE WHEN %(outcome)s::text = 'in_progress' THEN NULL ELSE now() END,
    %(details)s::jsonb
)
RETURNING id

-- name: audit_progress :exec
-- Add one committed batch to a multi-batch action.
UPDATE outbox_dead_letter_audit
   SET affected = affected + %(affected)s, updated_at = now()
 WHERE id = %(id)s

-- name: audit_finish :exec
-- Close a multi-batch action: completed, or interrupted with what it did so far.
UPDATE outbox_dead_letter_audit
   SET outcome = %(outcome)s, finished_at = now(), updated_at = now()
 WHERE id = %(id)s AND outcome = 'in_progress'

-- name: audit_history :many
-- The latest actions, newest first.
SELECT id, started_at, updated_at, finished_at, db_role, actor, action, event_ids, filter,
       affected, outcome, details
  FROM outbox_dead_letter_audit
 ORDER BY id DESC
 LIMIT %(limit)s
