"use strict";
// pg-boss driver for `python -m bench peers`.
//   node pg_boss.cjs setup N   create the schema and the queue, bulk-insert N no-op jobs (not timed)
//   node pg_boss.cjs work      one worker process until SIGTERM; then prints "handled K"
// Connection: PEER_PG, JSON {host, port, user, database} (host may be a socket directory).
// Settings: pg-boss fetches a batch, runs the handler, completes the batch, then waits out the
// rest of its polling interval (500 ms at the least) before it fetches again, so its rate is
// bounded by workers x batch size / interval: the fastest setting is the shortest interval,
// a large batch and several work() loops per process. Maintenance and cron are off in the
// workers (supervise, schedule: false) so that they do not compete with the drain.
const PgBoss = require("pg-boss");

const pg = JSON.parse(process.env.PEER_PG);
const QUEUE = "noop";
const BATCH = 1000;
const LOOPS = 4; // work() loops per process
const CHUNK = 10000;

async function setup(n) {
  const boss = new PgBoss({ ...pg, max: 2, supervise: false, schedule: false });
  boss.on("error", (err) => process.stderr.write(`pg-boss: ${err.message}\n`));
  await boss.start();
  await boss.createQueue(QUEUE);
  // insert() is pg-boss's bulk API: one INSERT ... FROM json_to_recordset per chunk.
  for (let start = 0; start < n; start += CHUNK) {
    const jobs = [];
    for (let i = start; i < Math.min(n, start + CHUNK); i++) {
      jobs.push({ name: QUEUE, data: { n: i } });
    }
    await boss.insert(jobs);
  }
  await boss.stop({ graceful: false, wait: true });
}

async function work() {
  let handled = 0;
  const boss = new PgBoss({ ...pg, max: LOOPS + 2, supervise: false, schedule: false, migrate: false });
  boss.on("error", (err) => process.stderr.write(`pg-boss: ${err.message}\n`));
  await boss.start();
  for (let i = 0; i < LOOPS; i++) {
    await boss.work(QUEUE, { batchSize: BATCH, pollingIntervalSeconds: 0.5 }, async (jobs) => {
      handled += jobs.length; // counted in memory: the harness checks exactly-once from the sum
    });
  }
  process.on("SIGTERM", async () => {
    await boss.stop({ graceful: true, wait: true, timeout: 30000 });
    process.stdout.write(`handled ${handled}\n`);
    process.exit(0);
  });
  process.stdout.write("ready\n");
}

const [mode, arg] = process.argv.slice(2);
(mode === "setup" ? setup(Number(arg)) : work()).catch((err) => {
  process.stderr.write(`pg-boss driver: ${err.message}\n`);
  process.exit(1);
});
