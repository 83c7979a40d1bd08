-- name: archive_cutoff :one
-- The moment %(days)s days ago (the cutoff of a retention); rejects negative days.
SELECT outbox_retention_cutoff(%(days)s::integer)

-- name: archive_batch :one
-- Move one batch of done or dead rows older than the cutoff, with their errors; returns the count.
SELECT outbox_archive_batch(%(status)s::text, %(cutoff)s::timestamptz, %(batch_size)s::integer)

-- name: archive_purge_batch :one
-- Delete one batch of archived events (and their archived errors) archived before the cutoff.
SELECT outbox_archive_purge_batch(%(cutoff)s::timestamptz, %(batch_size)s::integer)

-- name: archive_target :one
-- This outbox database's name and the schema of run_outbox_archival (NULL before migration 0002).
SELECT current_database() AS database,
       (SELECT p.pronamespace::regnamespace::text
          FROM pg_proc p
         WHERE p.proname = 'run_outbox_archival' AND p.prokind = 'p'
           AND pg_function_is_visible(p.oid)) AS schema

-- name: archive_job_command :one
-- The statement the pg_cron archive job runs, quoted by the server (identifier and integers).
SELECT format(
    'CALL %%I.run_outbox_archival(retention_days => %%s, dead_retention_days => %%s, '
    'batch_size => %%s, pause_seconds => %%s)',
    %(schema)s::text, %(retention_days)s::integer,
    COALESCE(%(dead_retention_days)s::integer::text, 'NULL'), %(batch_size)s::integer,
    %(pause_seconds)s::double precision)

-- name: archive_purge_job_command :one
-- The statement the pg_cron purge job runs.
SELECT format(
    'CALL %%I.run_outbox_archive_purge(older_than_days => %%s, batch_size => %%s, '
    'pause_seconds => %%s)',
    %(schema)s::text, %(older_than_days)s::integer, %(batch_size)s::integer,
    %(pause_seconds)s::double precision)

-- name: pg_cron_server_facts :one
-- Whether the server has the pg_cron package, whether the library is loaded (its launcher runs:
-- visible to any role, unlike shared_preload_libraries), and the database it lives in.
SELECT (SELECT default_version FROM pg_available_extensions WHERE name = 'pg_cron')
           AS available_version,
       EXISTS (SELECT 1 FROM pg_stat_activity WHERE backend_type = 'pg_cron launcher')
           AS launcher_running,
       current_setting('cron.database_name', true) AS cron_database,
       current_setting('server_version_num')::integer / 10000 AS server_major,
       current_database() AS database

-- name: pg_cron_extension_version :one
-- The pg_cron extension's version in this database, NULL when not created here.
SELECT extversion FROM pg_extension WHERE extname = 'pg_cron'

-- name: pg_cron_create_extension :exec
-- Create the pg_cron extension (superuser; only in the database named by cron.database_name).
CREATE EXTENSION IF NOT EXISTS pg_cron

-- name: pg_cron_job_id :one
-- The id of this role's job with this name, if any.
SELECT jobid FROM cron.job WHERE jobname = %(name)s AND username = current_user

-- name: pg_cron_schedule :one
-- Create the named job, or update it when this role already has a job of that name.
SELECT cron.schedule_in_database(%(name)s, %(schedule)s, %(command)s, %(database)s)

-- name: pg_cron_unschedule :many
-- Remove this role's jobs with these names; one row per job removed.
SELECT j.jobname, cron.unschedule(j.jobid) AS removed
  FROM cron.job j
 WHERE j.jobname = ANY(%(names)s::text[]) AND j.username = current_user
 ORDER BY j.jobname

-- name: pg_cron_jobs :many
-- The jobs with these names, as pg_cron stores them.
SELECT jobid, jobname, schedule, command, database, username, active
  FROM cron.job
 WHERE jobname = ANY(%(names)s::text[])
 ORDER BY jobname

-- name: pg_cron_last_runs :many
-- The latest runs of these jobs, newest first, at most %(limit)s per job.
SELECT j.jobname, r.runid, r.status, r.return_message, r.start_time, r.end_time
  FROM cron.job j
 CROSS JOIN LATERAL (
       SELECT d.runid, d.status, d.return_message, d.start_time, d.end_time
         FROM cron.job_run_details d
        WHERE d.jobid = j.jobid
        ORDER BY d.runid DESC
        LIMIT %(limit)s
       ) r
 WHERE j.jobname = ANY(%(names)s::text[])
 ORDER BY j.jobname, r.runid DESC
