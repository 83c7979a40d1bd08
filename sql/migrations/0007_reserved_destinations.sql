-- 0007_reserved_destinations: a placeholder on the `breakers` branch only (issue 14).
--
-- Number 0007 belongs to the destinations branch (issue 14, built-in destinations), which adds
-- outbox_event.destination. This file keeps this branch's numbering without a gap so that its
-- 0008 applies; the integrator drops it when merging the destinations branch's real 0007.
SELECT 1;
