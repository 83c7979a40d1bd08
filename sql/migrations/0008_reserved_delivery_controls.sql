-- 0008_reserved_delivery_controls: a placeholder on the `ordering` branch only (issue 14).
--
-- Number 0008 belongs to the breakers branch (issue 14, items 1-3: delivery_controls). This file
-- keeps this branch's numbering without a gap so that its 0009 applies; the integrator drops it
-- when merging the real 0008.
SELECT 1;
