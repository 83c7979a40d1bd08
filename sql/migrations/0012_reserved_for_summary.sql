-- 0012 is assigned to helper "summary" (dead-letter summary table). This placeholder only keeps
-- the numbering of the "partition" branch without a gap; the integrator drops it when merging
-- summary's 0012_dead_letter_summary.sql. It changes nothing.
SELECT 1;
