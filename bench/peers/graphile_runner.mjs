// The Graphile Worker side of bench/peers: started by bench/peers/graphile.py with `node`.
//
//   node graphile_runner.mjs migrate
//   node graphile_runner.mjs worker          (runs until SIGTERM/SIGINT)
//   node graphile_runner.mjs enqueue-bulk N  (one addJobs call of N no-op jobs)
//   node graphile_runner.mjs enqueue-single M (M addJob calls, one after another)
//
// Environment: DATABASE_URL (connection string), GRAPHILE_WORKER_DIR (the cache directory
// whose node_modules holds the pinned graphile-worker), PEER_WORKER_OPTIONS (JSON merged
// into the preset's `worker` options, e.g. {"concurrentJobs": 50}). The enqueue modes print
// one JSON line {"seconds": ...} timing only the library calls, not start-up or connecting.

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
  if (level === "error" || level === "warning") {
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
