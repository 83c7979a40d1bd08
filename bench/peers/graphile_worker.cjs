"use strict";
// graphile-worker driver for `python -m bench peers`.
//   node graphile_worker.cjs setup N   install the schema, bulk-add N no-op jobs (not timed)
//   node graphile_worker.cjs work      one worker process until SIGTERM; then prints "handled K"
// Connection: PEER_PG, JSON {host, port, user, database} (host may be a socket directory).
// Settings: the configuration of graphile-worker's own performance page
// (worker.graphile.org/docs/performance): 24 concurrent jobs, a pool of 25, a local queue of
// 500, completions and failures batched with no delay.
const { Pool } = require("pg");
const { run, runMigrations, makeWorkerUtils } = require("graphile-worker");

const pg = JSON.parse(process.env.PEER_PG);
const CHUNK = 10000;

async function setup(n) {
  const pgPool = new Pool({ ...pg, max: 2 });
  await runMigrations({ pgPool, logger: quiet() });
  const utils = await makeWorkerUtils({ pgPool, logger: quiet() });
  // addJobs is graphile-worker's bulk API (one add_jobs() call per chunk).
  for (let start = 0; start < n; start += CHUNK) {
    const specs = [];
    for (let i = start; i < Math.min(n, start + CHUNK); i++) {
      specs.push({ identifier: "noop", payload: { n: i } });
    }
    await utils.addJobs(specs);
  }
  await utils.release();
  await pgPool.end();
}

async function work() {
  let handled = 0;
  const pgPool = new Pool({ ...pg, max: 25 });
  const runner = await run({
    pgPool,
    concurrency: 24,
    noHandleSignals: true,
    logger: quiet(),
    taskList: {
      noop: async () => {
        handled += 1; // counted in memory: the harness checks exactly-once from the sum
      },
    },
    preset: {
      worker: {
        localQueue: { size: 500 },
        completeJobBatchDelay: 0,
        failJobBatchDelay: 0,
      },
    },
  });
  process.on("SIGTERM", async () => {
    await runner.stop();
    await pgPool.end();
    process.stdout.write(`handled ${handled}\n`);
    process.exit(0);
  });
  process.stdout.write("ready\n");
}

function quiet() {
  const { Logger } = require("graphile-worker");
  return new Logger(() => (level, message) => {
    if (level === "error") process.stderr.write(`${message}\n`);
  });
}

const [mode, arg] = process.argv.slice(2);
(mode === "setup" ? setup(Number(arg)) : work()).catch((err) => {
  process.stderr.write(`graphile-worker driver: ${err.message}\n`);
  process.exit(1);
});
