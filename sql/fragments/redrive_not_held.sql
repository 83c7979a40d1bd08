-- A redrive batch's candidate `c` is not behind an event that stays dead: its aggregate is
-- neither among those held in an earlier batch of the run (%(held)s, the `held` each batch
-- returns, passed back) nor among those held in this one (the `held` CTE of
-- sql/fragments/redrive_locked_held.sql). With nothing held, the usual case, no per-row text key
-- is built. Each line starts with AND, so it follows a WHERE clause.
AND (cardinality(%(held)s::text[]) = 0
     OR ROW(c.aggregate_type, c.aggregate_id)::text <> ALL (%(held)s::text[]))
AND (NOT EXISTS (SELECT 1 FROM held)
     OR ROW(c.aggregate_type, c.aggregate_id)::text NOT IN (SELECT agg FROM held))
