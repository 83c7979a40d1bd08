-- The dead-event filter (dispatchbox/filters.py, DeadEventFilter.params()): one definition that
-- every named query narrowing dead events shares, spliced in by a line `-- include:
-- dead_event_filter` (dispatchbox/data/queries.py). Written against the alias `e` for
-- outbox_event; each line starts with AND, so it follows a WHERE clause. The repository runs
-- these queries unprepared, so PostgreSQL plans each with the actual values: a NULL filter folds
-- away and the partial indexes on dead rows serve what remains.
AND (%(event_type)s::text IS NULL OR e.event_type = %(event_type)s::text)
AND (%(aggregate_type)s::text IS NULL OR e.aggregate_type = %(aggregate_type)s::text)
AND (%(since)s::timestamptz IS NULL OR e.dead_at >= %(since)s::timestamptz)
AND (%(until)s::timestamptz IS NULL OR e.dead_at < %(until)s::timestamptz)
AND (%(error_like)s::text IS NULL OR e.last_error ILIKE %(error_like)s::text)
AND (%(error_fingerprint)s::text IS NULL OR e.id IN (
        SELECT f.event_id FROM outbox_dead_fingerprint f
         WHERE f.fingerprint = %(error_fingerprint)s::text))
AND (%(destination)s::text IS NULL OR e.destination = %(destination)s::text)
