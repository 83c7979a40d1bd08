-- The row locks of a redrive batch (sql/queries/redrive.sql: redrive_plain_batch and
-- redrive_ordered_batch), spliced in after their `cand` CTE (id, aggregate_type, aggregate_id of
-- the batch's candidates): `locked`, the candidates still dead that no other transaction holds
-- (SKIP LOCKED: a second redrive, an edit, an archival batch is never waited for), and `held`,
-- the aggregates of the candidates another transaction holds, as ROW(type, id)::text. Each line
-- ends a CTE with a comma, so the next CTE follows.
locked AS (
    SELECT e.id
      FROM outbox_event e
     WHERE e.id IN (SELECT id FROM cand) AND e.status = 'dead'
       FOR UPDATE SKIP LOCKED
),
held AS (
    SELECT DISTINCT ROW(c.aggregate_type, c.aggregate_id)::text AS agg
      FROM cand c
     WHERE c.id NOT IN (SELECT id FROM locked)
),
