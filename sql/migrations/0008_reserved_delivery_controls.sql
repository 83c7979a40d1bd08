-- Placeholder on the security branch only, so that 0010 applies in order: the real delivery_controls
-- migration replaces this file at merge (delete this one).
SELECT 1;
