-- 0007_reserved_destinations: a placeholder on the `ordering` branch only (issue 14).
--
-- Number 0007 belongs to the destinations branch, 0008 to the breakers branch (issue 14, items
-- 1-3). This file keeps this branch's numbering without a gap so that its 0009 applies; the
-- integrator drops it when merging the real 0007.
SELECT 1;
