-- `dispatchbox db status` on an outbox of any size (dispatchbox/outbox_status.py).
--
-- The outbox_health view counts every pending and dead row exactly: an index-only scan of each
-- partial index, about a second for 10,000,000 pending events. Here the planner's estimate of
-- each state comes first (status_estimates); a state whose estimate stays far above the exact
-- threshold even after allowing for every row changed since the statistics were taken is
-- reported as that estimate, and every other state is counted, reading at most its cap of index
-- entries (status_bounded). The oldest pending event is found with one index probe per priority
-- instead of a scan of every pending entry.

-- name: status_estimates :many
-- Rows per state as the statistics of outbox_event.status say (the share of each value times the
-- table's row count, both from the last ANALYZE), when they were taken, and how many rows changed
-- since (inserts, updates and deletes: each moves a state's true count at most one away from that
-- figure). Not scaled to the table's current size as EXPLAIN does: on a queue table the pages
-- grow with dead row versions, not only with rows. No row before the first ANALYZE. A partitioned
-- outbox (migration 0013) has statistics on its partitions only (autovacuum never analyzes the
-- parent): they are summed over the partitions, the oldest analysis counts, and the changes of
-- every partition, analyzed or not, are added.
WITH leaf AS (
    SELECT c.oid, c.relname, n.nspname, c.reltuples
      FROM pg_class c
      JOIN pg_namespace n ON n.oid = c.relnamespace
     WHERE (c.oid = 'outbox_event'::regclass AND c.relkind = 'r')
        OR c.oid IN (SELECT p.relid FROM pg_partition_tree('outbox_event'::regclass) p
                      WHERE p.isleaf)
)
SELECT v.status,
       round(sum(v.share * l.reltuples))::bigint AS estimate,
       (SELECT COALESCE(sum(t2.n_mod_since_analyze), 0)::bigint
          FROM leaf l2 JOIN pg_stat_all_tables t2 ON t2.relid = l2.oid) AS changed_since,
       min(GREATEST(t.last_analyze, t.last_autoanalyze)) AS analyzed_at
  FROM leaf l
  JOIN pg_stat_all_tables t ON t.relid = l.oid
  JOIN pg_stats s ON s.schemaname = l.nspname AND s.tablename = l.relname
                 AND s.attname = 'status'
 CROSS JOIN LATERAL unnest(s.most_common_vals::text::text[], s.most_common_freqs)
       AS v (status, share)
 WHERE l.reltuples >= 0
 GROUP BY v.status

-- name: status_bounded :one
-- outbox_health's columns, pending and running counted up to their cap of index entries (0
-- skips the count, NULL counts all), dead exact from the summary: pending, running, dead, the
-- oldest due pending event's age, the oldest dead event, running events whose lease expired.
SELECT
    (SELECT count(*) FROM (SELECT 1 FROM outbox_event
                            WHERE status = 'pending' LIMIT %(pending_cap)s) p) AS pending,
    (SELECT count(*) FROM (SELECT 1 FROM outbox_event
                            WHERE status = 'running' LIMIT %(running_cap)s) r) AS running,
    -- dead: exact from the summary of migration 0012 (one row per group), whatever the count
    (SELECT COALESCE(sum(dead_count), 0)::bigint FROM outbox_dead_groups) AS dead,
    -- the oldest of each priority's first entry in outbox_event_claim_idx: ten probes; an
    -- oldest event not yet due means none is due (age 0), as in outbox_health
    (SELECT COALESCE(GREATEST(0, EXTRACT(EPOCH FROM now() - min(o.next_attempt_at))), 0)
                ::double precision
       FROM generate_series(1, 10) AS p (priority)
      CROSS JOIN LATERAL (SELECT e.next_attempt_at FROM outbox_event e
                           WHERE e.status = 'pending' AND e.priority = p.priority
                           ORDER BY e.next_attempt_at LIMIT 1) o) AS oldest_pending_age_seconds,
    (SELECT min(first_dead_at) FROM outbox_dead_groups) AS oldest_dead_at,
    (SELECT count(*) FROM outbox_event
      WHERE status = 'running' AND locked_until < now()) AS expired_leases
