// The Graphile Worker side of bench/peers: started by bench/peers/graphile.py with `node`.
//
//   node graphile_runner.mjs migrate
//   node graphile_runner.mjs worker          (runs until SIGTERM/SIGINT)
//   node graphile_runner.mjs enqueue-bulk N  (one addJobs call of N no-op jobs)
//   node graphile_runner.mjs enqueue-single M (M addJob calls, one after another)
//   node graphile_runner.mjs app-worker      (bench/rollout.py: migrate the app, then work)
//
// Environment: DATABASE_URL (connection string), GRAPHILE_WORKER_DIR (the cache directory
// whose node_modules holds the pinned graphile-worker), PEER_WORKER_OPTIONS (JSON merged
// into the preset's `worker` options, e.g. {"concurrentJobs": 50}). The enqueue modes print
// one JSON line {"seconds": ...} timing only the library calls, not start-up or connecting.
// GRAPHILE_LOG_ALL=1 logs every level (debugging), not only warnings and errors.

import fs from "node:fs";
import os from "node:os";
import { createRequire } from "node:module";
import path from "node:path";
import { pathToFileURL } from "node:url";

const moduleDir = process.env.GRAPHILE_WORKER_DIR;
const connectionString = process.env.DATABASE_URL;
if (!moduleDir || !connectionString) {
  console.error("GRAPHILE_WORKER_DIR and DATABASE_URL must be set");
  process.exit(2);
}
// The library lives in the cache, not beside this file: resolve it from there.
const requireFromCache = createRequire(path.join(moduleDir, "package.json"));
const gw = await import(pathToFileURL(requireFromCache.resolve("graphile-worker")).href);

// Warnings and errors only: the per-job "Completed task" info lines would cost CPU that
// the other workers in the comparison (all at WARNING) do not spend.
const quietLogger = new gw.Logger(() => (level, message) => {
  if (level === "error" || level === "warning" || process.env.GRAPHILE_LOG_ALL) {
    console.error(`[graphile-worker ${level}] ${message}`);
  }
});

const extraOptions = JSON.parse(process.env.PEER_WORKER_OPTIONS || "{}");
const preset = {
  worker: { connectionString, logger: quietLogger, ...extraOptions },
};

const taskList = {
  noop: async () => {},
  // Latency probe: the DB clock at enqueue time comes in the payload, the DB clock at
  // start is taken by this insert.
  stamp: async (payload, helpers) => {
    await helpers.withPgClient((client) =>
      client.query(
        "insert into bench_stamps (id, enqueued_at, started_at) values ($1, $2, clock_timestamp())",
        [payload.id, payload.enq],
      ),
    );
  },
};

async function migrate() {
  await gw.runMigrations({ preset });
}

async function worker() {
  const runner = await gw.run({ preset, taskList, noHandleSignals: true });
  await stopOnSignals(runner);
}

// The rollout benchmark's app (bench/rollout_app.py is the fleet-worker twin): what teams do
// with Graphile Worker OSS today. At start the process applies every app migration it has
// not seen (one advisory lock, a table of applied names, breaking or not), then works; old
// processes keep running their code against whatever schema the newest one left.
// Environment: ROLLOUT_RELEASE, ROLLOUT_MIGRATIONS (directory), ROLLOUT_SCHEMA (app tables),
// ROLLOUT_CONCURRENCY, POD_NAME (the worker's name in the runs table).
async function appWorker() {
  const release = Number.parseInt(process.env.ROLLOUT_RELEASE, 10);
  const dir = process.env.ROLLOUT_MIGRATIONS;
  const schema = process.env.ROLLOUT_SCHEMA;
  if (!/^[a-z_][a-z0-9_]*$/.test(schema || "")) {
    console.error(`ROLLOUT_SCHEMA must be a plain identifier, got ${schema}`);
    process.exit(2);
  }
  const column = release >= 3 ? "title" : "name";
  const worker = process.env.POD_NAME || `${os.hostname()}-${process.pid}`;
  const utils = await gw.makeWorkerUtils({ preset });
  try {
    await utils.withPgClient(async (client) => {
      await client.query("begin");
      try {
        await client.query("select pg_advisory_xact_lock(hashtext('rollout-app-migrations'))");
        await client.query(`create schema if not exists ${schema}`);
        await client.query(
          `create table if not exists ${schema}.app_migrations (name text primary key)`,
        );
        const seen = await client.query(`select name from ${schema}.app_migrations`);
        const applied = new Set(seen.rows.map((r) => r.name));
        for (const file of fs.readdirSync(dir).filter((f) => f.endsWith(".sql")).sort()) {
          if (applied.has(file)) continue;
          const text = fs.readFileSync(path.join(dir, file), "utf8");
          await client.query(text.replaceAll(":FLEET_SCHEMA", schema));
          await client.query(`insert into ${schema}.app_migrations values ($1)`, [file]);
        }
        await client.query("commit");
      } catch (err) {
        await client.query("rollback");
        throw err;
      }
    });
  } finally {
    await utils.release();
  }
  const record = (client, n, outcome, error) =>
    client.query(
      `insert into ${schema}.runs (n, worker, release, outcome, error) values ($1, $2, $3, $4, $5)`,
      [n, worker, String(release), outcome, error],
    );
  const taskList = {
    make_widget: async (payload, helpers) => {
      const n = payload.n;
      await new Promise((resolve) => setTimeout(resolve, payload.work_ms || 0));
      await helpers.withPgClient(async (client) => {
        try {
          await client.query("begin");
          await client.query(`insert into ${schema}.widgets (n, ${column}) values ($1, $2)`, [
            n,
            `widget-${n}`,
          ]);
          await record(client, n, "ok", null);
          await client.query("commit");
        } catch (err) {
          await client.query("rollback");
          const code = String(err.code || "");
          await record(client, n, code.startsWith("42") ? "schema_error" : "error", String(err));
          throw err;
        }
      });
    },
  };
  const concurrency = Number.parseInt(process.env.ROLLOUT_CONCURRENCY || "1", 10);
  const runner = await gw.run({
    preset: { worker: { ...preset.worker, concurrentJobs: concurrency } },
    taskList,
    noHandleSignals: true,
  });
  await stopOnSignals(runner);
}

async function stopOnSignals(runner) {
  let stopping = false;
  const stop = async (signal) => {
    if (stopping) return;
    stopping = true;
    try {
      await runner.stop();
    } catch (err) {
      console.error(`stop after ${signal} failed: ${err}`);
    }
    process.exit(0);
  };
  process.on("SIGTERM", () => void stop("SIGTERM"));
  process.on("SIGINT", () => void stop("SIGINT"));
  await runner.promise;
}

async function enqueue(count, bulk) {
  const utils = await gw.makeWorkerUtils({ preset });
  try {
    await utils.migrate();
    const began = process.hrtime.bigint();
    if (bulk) {
      const specs = Array.from({ length: count }, () => ({ identifier: "noop", payload: {} }));
      await utils.addJobs(specs);
    } else {
      for (let i = 0; i < count; i++) {
        await utils.addJob("noop", {});
      }
    }
    const seconds = Number(process.hrtime.bigint() - began) / 1e9;
    console.log(JSON.stringify({ seconds }));
  } finally {
    await utils.release();
  }
}

const [mode, arg] = process.argv.slice(2);
try {
  if (mode === "migrate") {
    await migrate();
  } else if (mode === "worker") {
    await worker();
  } else if (mode === "app-worker") {
    await appWorker();
  } else if (mode === "enqueue-bulk" || mode === "enqueue-single") {
    await enqueue(Number.parseInt(arg, 10), mode === "enqueue-bulk");
  } else {
    console.error(`unknown mode ${mode}`);
    process.exit(2);
  }
} catch (err) {
  console.error(err);
  process.exit(1);
}
