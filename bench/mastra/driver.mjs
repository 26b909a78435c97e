// The Mastra side of the Stepline benchmark: the same workloads as bench/driver.py, run
// in-process on @mastra/core with its in-memory store or its LibSQL store (a file database).
//
//   node --expose-gc driver.mjs --store memory|libsql --dbdir DIR --config '{...}'
//
// bench/run.py copies this file next to the installed node_modules and runs it; it prints one
// JSON object (the last stdout line) shaped like the Python driver's. The graphs mirror
// bench/flows.py: keep the two in step.
import { spawn } from 'node:child_process';
import { EventEmitter } from 'node:events';
import { readFileSync, statSync } from 'node:fs';
import { join } from 'node:path';
import { parseArgs } from 'node:util';
import { Mastra } from '@mastra/core';
import { InMemoryStore } from '@mastra/core/storage';
import { createStep, createWorkflow } from '@mastra/core/workflows';
import { LibSQLStore } from '@mastra/libsql';
import { z } from 'zod';

const MB = 1024 * 1024;
const { values: args } = parseArgs({
  options: {
    store: { type: 'string', default: 'memory' },
    dbdir: { type: 'string', default: '.' },
    config: { type: 'string', default: '{}' },
    // W9 runs each foreach size in a child process of this script (see w9 below).
    dbname: { type: 'string', default: 'mastra-bench.db' },
    'w9-size': { type: 'string' },
  },
});
const defaults = {
  workloads: ['W1'],
  concurrency: 64,
  w1_seq_runs: 2000,
  w1_seq_warmup: 200,
  w1_conc_runs: 10000,
  w1_conc_warmup: 1000,
  w2_runs: 20000,
  w3_cycles: 5000,
  w3_warmup: 500,
  w4_stream_runs: 500,
  w4_stream_warmup: 50,
  w4_subscribers: 1000,
  w4_tick_delay: 0.02,
  w4_hold: 1.0,
  w5_runs: 50,
  w5_warmup: 5,
  w7_runs: 100000,
  populate_concurrency: 256,
  w8_steps: [10, 1000],
  w8_runs: 50,
  w8_warmup: 5,
  w8_long_runs: 3,
  w9_sizes: [1000, 10000, 100000],
  w9_limit: 600,
  w9_rss_cap_mb: 6144,
};
const config = { ...defaults, ...JSON.parse(args.config) };
// Every observeStream() subscriber listens on the run's emitter (W4 fan-out).
EventEmitter.defaultMaxListeners = config.w4_subscribers + 100;

// -- workflows (bench/flows.py) --------------------------------------------------------------
const Num = z.object({ value: z.number() });
const Tick = z.object({ value: z.number(), delay: z.number().default(0), hold: z.number().default(0) });
const sleep = (seconds) => new Promise((resolve) => setTimeout(resolve, seconds * 1000));
const adder = (id) =>
  createStep({
    id,
    inputSchema: Num,
    outputSchema: Num,
    execute: async ({ inputData }) => ({ value: inputData.value + 1 }),
  });

let finished = 0; // runs of bench_add3 that reached a final status (W2 drain)
let add3 = createWorkflow({
  id: 'bench_add3',
  inputSchema: Num,
  outputSchema: Num,
  options: { onFinish: () => { finished += 1; } },
});
for (const id of ['add_a', 'add_b', 'add_c']) add3 = add3.then(adder(id));
add3 = add3.commit();

const gate = createStep({
  id: 'gate',
  inputSchema: Num,
  outputSchema: Num,
  resumeSchema: z.object({ ok: z.boolean().default(true) }),
  execute: async ({ inputData, resumeData, suspend }) => {
    if (!resumeData) return await suspend({ value: inputData.value }, { resumeLabel: 'gate' });
    return { value: inputData.value };
  },
});
const approve = createWorkflow({ id: 'bench_approve', inputSchema: Num, outputSchema: Num })
  .then(gate)
  .then(adder('after'))
  .commit();

let steps100 = createWorkflow({ id: 'bench_steps100', inputSchema: Num, outputSchema: Num });
for (let i = 0; i < 100; i++) steps100 = steps100.then(adder(`s${String(i).padStart(3, '0')}`));
steps100 = steps100.commit();

const hold = createStep({
  id: 'hold',
  inputSchema: Tick,
  outputSchema: Tick,
  execute: async ({ inputData }) => { await sleep(inputData.hold); return inputData; },
});
let ticks = createWorkflow({ id: 'bench_ticks', inputSchema: Tick, outputSchema: Tick }).then(hold);
for (let i = 0; i < 20; i++) {
  ticks = ticks.then(
    createStep({
      id: `t${String(i).padStart(2, '0')}`,
      inputSchema: Tick,
      outputSchema: Tick,
      execute: async ({ inputData }) => {
        await sleep(inputData.delay);
        return { ...inputData, value: inputData.value + 1 };
      },
    }),
  );
}
ticks = ticks.commit();

// W8: bench_chain<n>, n steps in sequence, each adds 1.
const CHAIN_LENGTHS = [10, 50, 1000];
const chains = {};
for (const length of CHAIN_LENGTHS) {
  let chain = createWorkflow({ id: `bench_chain${length}`, inputSchema: Num, outputSchema: Num });
  for (let i = 0; i < length; i++) chain = chain.then(adder(`c${String(i).padStart(4, '0')}`));
  chains[`bench_chain${length}`] = chain.commit();
}

// W9: `items` turns {count: n} into n items {value: i}; a foreach adds 1 to each, 16 at a time.
const FOREACH_CONCURRENCY = 16;
const items = createStep({
  id: 'items',
  inputSchema: z.object({ count: z.number() }),
  outputSchema: z.array(Num),
  execute: async ({ inputData }) => Array.from({ length: inputData.count }, (_, value) => ({ value })),
});
const foreach = createWorkflow({
  id: 'bench_foreach',
  inputSchema: z.object({ count: z.number() }),
  outputSchema: z.array(Num),
})
  .then(items)
  .foreach(adder('add_item'), { concurrency: FOREACH_CONCURRENCY })
  .commit();

const dbFile = join(args.dbdir, args.dbname);
const storage =
  args.store === 'libsql'
    ? new LibSQLStore({ id: 'bench-libsql', url: `file:${dbFile}` })
    : new InMemoryStore();
const mastra = new Mastra({
  storage,
  logger: false,
  workflows: {
    bench_add3: add3,
    bench_approve: approve,
    bench_steps100: steps100,
    bench_ticks: ticks,
    bench_foreach: foreach,
    ...chains,
  },
});
const wf = {
  add3: mastra.getWorkflow('bench_add3'),
  approve: mastra.getWorkflow('bench_approve'),
  steps100: mastra.getWorkflow('bench_steps100'),
  ticks: mastra.getWorkflow('bench_ticks'),
  foreach: mastra.getWorkflow('bench_foreach'),
};

// -- helpers ---------------------------------------------------------------------------------
const errors = {};
const firstErrors = {};
function fail(kind, detail) {
  errors[kind] = (errors[kind] ?? 0) + 1;
  if (!(kind in firstErrors)) firstErrors[kind] = String(detail).slice(0, 300);
}
const errorTotal = () => Object.values(errors).reduce((a, b) => a + b, 0);
const now = () => performance.now() / 1000; // seconds
function percentile(samples, q) {
  if (samples.length === 0) return null;
  const sorted = [...samples].sort((a, b) => a - b);
  const rank = Math.max(1, Math.ceil(q * sorted.length));
  return sorted[Math.min(rank, sorted.length) - 1];
}
const ms = (seconds) => (seconds === null ? null : Math.round(seconds * 1e7) / 1e4);
const round = (x, digits = 2) => Math.round(x * 10 ** digits) / 10 ** digits;
async function pool(count, concurrency, task) {
  let next = 0;
  const worker = async () => {
    while (next < count) {
      const index = next++;
      await task(index);
    }
  };
  const began = now();
  await Promise.all(Array.from({ length: Math.min(concurrency, count) }, worker));
  return now() - began;
}
let storedRuns = 0;

async function startAdd3(latencies) {
  const began = now();
  try {
    const run = await wf.add3.createRun();
    const result = await run.start({ inputData: { value: 1 } });
    if (latencies) latencies.push(now() - began);
    storedRuns += 1;
    if (result.status !== 'success' || result.result?.value !== 4) {
      fail('start result', `${result.status} ${JSON.stringify(result.result)}`);
      return false;
    }
    return true;
  } catch (error) {
    fail('start', error?.message ?? error);
    return false;
  }
}

// -- workloads -------------------------------------------------------------------------------
async function w1() {
  for (let i = 0; i < config.w1_seq_warmup; i++) await startAdd3(null);
  const latencies = [];
  let seqOk = 0;
  for (let i = 0; i < config.w1_seq_runs; i++) if (await startAdd3(latencies)) seqOk += 1;
  let concOk = 0;
  const one = async () => {
    if (await startAdd3(null)) concOk += 1; // (`x += await f()` would lose updates)
  };
  await pool(config.w1_conc_warmup, config.concurrency, one);
  concOk = 0;
  const elapsed = await pool(config.w1_conc_runs, config.concurrency, one);
  return {
    seq_p50_ms: ms(percentile(latencies, 0.5)),
    seq_p99_ms: ms(percentile(latencies, 0.99)),
    seq_runs: seqOk,
    conc_runs_per_s: round(concOk / elapsed),
    conc_runs: concOk,
  };
}

async function backlog(runs, concurrency) {
  // startAsync is fire-and-forget in-process; the workflow's onFinish counts finished runs.
  const base = finished;
  let accepted = 0;
  const began = now();
  const acceptS = await pool(runs, concurrency, async () => {
    try {
      const run = await wf.add3.createRun();
      await run.startAsync({ inputData: { value: 1 } });
      accepted += 1;
    } catch (error) {
      fail('startAsync', error?.message ?? error);
    }
  });
  const acceptedAt = now();
  const limit = now() + 1800;
  while (finished - base < accepted && now() < limit) await sleep(0.002);
  const done = finished - base;
  if (done < accepted) fail('backlog', `${accepted - done} runs did not finish`);
  const drainS = now() - began;
  storedRuns += done;
  return {
    accepted,
    finished: done,
    accept_s: round(acceptS, 4),
    accepted_per_s: round(accepted / acceptS),
    drain_s: round(drainS, 4),
    drain_after_accept_s: round(now() - acceptedAt, 4),
    drain_runs_per_s: round(done / drainS),
  };
}

async function w2() {
  return backlog(config.w2_runs, config.concurrency);
}

async function w3() {
  let ok = 0;
  let latencies = [];
  const cycle = async () => {
    const began = now();
    try {
      const run = await wf.approve.createRun();
      const started = await run.start({ inputData: { value: 1 } });
      if (started.status !== 'suspended') return fail('W3 start', started.status);
      const resumed = await run.resume({ step: 'gate', resumeData: { ok: true } });
      latencies.push(now() - began);
      storedRuns += 1;
      if (resumed.status === 'success' && resumed.result?.value === 2) ok += 1;
      else fail('W3 resume', resumed.status);
    } catch (error) {
      fail('W3 call', error?.message ?? error);
    }
  };
  await pool(config.w3_warmup, config.concurrency, cycle);
  ok = 0;
  latencies = [];
  const elapsed = await pool(config.w3_cycles, config.concurrency, cycle);
  return { cycles_per_s: round(ok / elapsed), cycle_p50_ms: ms(percentile(latencies, 0.5)), cycles: ok };
}

async function w4() {
  const first = [];
  const finish = [];
  let complete = 0;
  const once = async (record) => {
    const began = now();
    let gotFirst = null;
    let events = 0;
    let ok = false;
    try {
      const run = await wf.add3.createRun();
      const output = run.stream({ inputData: { value: 1 } });
      for await (const event of output.fullStream) {
        if (gotFirst === null) gotFirst = now() - began;
        events += 1;
        if (event.type === 'workflow-finish') ok = event.payload?.workflowStatus === 'success';
      }
    } catch (error) {
      return fail('stream', error?.message ?? error);
    }
    storedRuns += 1;
    if (!record) return;
    if (gotFirst !== null) first.push(gotFirst);
    if (ok && events === 8) {
      finish.push(now() - began);
      complete += 1;
    } else fail('stream events', `${events} events, ok=${ok}`);
  };
  for (let i = 0; i < config.w4_stream_warmup; i++) await once(false);
  for (let i = 0; i < config.w4_stream_runs; i++) await once(true);
  return {
    first_event_p50_ms: ms(percentile(first, 0.5)),
    first_event_p99_ms: ms(percentile(first, 0.99)),
    finish_p50_ms: ms(percentile(finish, 0.5)),
    finish_p99_ms: ms(percentile(finish, 0.99)),
    streams: complete,
    ...(await fanOut()),
  };
}

async function fanOut() {
  // observeStream() subscribers on one bench_ticks run, attached while it holds.
  const run = await wf.ticks.createRun();
  const output = run.stream({
    inputData: { value: 0, delay: config.w4_tick_delay, hold: config.w4_hold },
  });
  const main = (async () => {
    let count = 0;
    for await (const _event of output.fullStream) count += 1;
    return count;
  })();
  const counts = new Array(config.w4_subscribers).fill(0);
  const finishAt = [];
  let failures = 0;
  const opened = now();
  const subscribe = async (index) => {
    try {
      const stream = await run.observeStream();
      for await (const event of stream) {
        counts[index] += 1;
        if (event.type === 'workflow-finish') finishAt.push(now());
      }
    } catch (error) {
      failures += 1;
      fail('observeStream', error?.message ?? error);
    }
  };
  const subscribers = Promise.all(Array.from({ length: config.w4_subscribers }, (_, i) => subscribe(i)));
  let timer;
  const limit = new Promise((resolve) => {
    timer = setTimeout(() => resolve(true), (config.w4_hold + 21 * config.w4_tick_delay + 120) * 1000);
  });
  const hung = await Promise.race([subscribers.then(() => false), limit]);
  clearTimeout(timer);
  const allDoneS = now() - opened;
  const expected = hung ? Math.max(...counts) : await main;
  storedRuns += 1;
  return {
    watch_subscribers: config.w4_subscribers,
    watch_events_expected: expected,
    watch_complete: counts.filter((c) => c === expected).length,
    watch_lost_events: counts.reduce((sum, c) => sum + Math.max(0, expected - c), 0),
    watch_duplicate_events: counts.reduce((sum, c) => sum + Math.max(0, c - expected), 0),
    watch_failed_streams: failures,
    watch_hung_streams: hung ? config.w4_subscribers - finishAt.length : 0,
    watch_finish_spread_ms: finishAt.length ? ms(Math.max(...finishAt) - Math.min(...finishAt)) : null,
    watch_all_done_s: round(allDoneS, 3),
  };
}

async function w5() {
  const latencies = [];
  let ok = 0;
  for (let i = 0; i < config.w5_warmup + config.w5_runs; i++) {
    const began = now();
    try {
      const run = await wf.steps100.createRun();
      const result = await run.start({ inputData: { value: 0 } });
      storedRuns += 1;
      if (result.status !== 'success' || result.result?.value !== 100) {
        fail('W5 result', result.status);
        continue;
      }
    } catch (error) {
      fail('W5 start', error?.message ?? error);
      continue;
    }
    if (i >= config.w5_warmup) {
      latencies.push(now() - began);
      ok += 1;
    }
  }
  const p50 = percentile(latencies, 0.5);
  return { run_p50_ms: ms(p50), per_step_us: p50 === null ? null : round((p50 / 100) * 1e6), runs: ok };
}

function storeBytes() {
  if (args.store !== 'libsql') {
    globalThis.gc?.();
    return process.memoryUsage().heapUsed;
  }
  let total = 0;
  for (const suffix of ['', '-wal', '-shm']) {
    try {
      total += statSync(dbFile + suffix).size;
    } catch {
      // not there (yet)
    }
  }
  return total;
}

async function w7() {
  // Populate with start() and `populate_concurrency` in flight (startAsync would hold every
  // run of the backlog in memory at once).
  globalThis.gc?.();
  const rssBefore = process.memoryUsage().rss;
  const bytesBefore = storeBytes();
  const storedBefore = storedRuns;
  let ok = 0;
  const elapsed = await pool(config.w7_runs, config.populate_concurrency, async () => {
    if (await startAdd3(null)) ok += 1;
  });
  globalThis.gc?.();
  const rssAfter = process.memoryUsage().rss;
  const bytesAfter = storeBytes();
  const runs = Math.max(1, ok);
  return {
    runs: ok,
    populate_runs_per_s: round(ok / elapsed),
    rss_before_mb: round(rssBefore / MB),
    rss_after_mb: round(rssAfter / MB),
    rss_growth_mb: round((rssAfter - rssBefore) / MB),
    store_bytes_per_run: round((bytesAfter - bytesBefore) / runs, 1),
    stored_runs: storedBefore + ok,
  };
}

// W8 and W9 (bench/long_runs.py): the same figure names as the Stepline driver.
async function chainOnce(steps) {
  const began = now();
  try {
    const run = await mastra.getWorkflow(`bench_chain${steps}`).createRun();
    const result = await run.start({ inputData: { value: 0 } });
    const elapsed = now() - began;
    storedRuns += 1;
    if (result.status !== 'success' || result.result?.value !== steps) {
      fail('W8 result', `bench_chain${steps}: ${result.status}`);
      return null;
    }
    return elapsed;
  } catch (error) {
    fail('W8 start', error?.message ?? error);
    return null;
  }
}

const median = (samples) => {
  const sorted = [...samples].sort((a, b) => a - b);
  const middle = Math.floor(sorted.length / 2);
  return sorted.length % 2 ? sorted[middle] : (sorted[middle - 1] + sorted[middle]) / 2;
};

async function w8() {
  const out = {};
  const steps = [...config.w8_steps].sort((a, b) => a - b);
  let basePerStep = null;
  for (const [position, length] of steps.entries()) {
    const [warmup, runs] = position === 0 ? [config.w8_warmup, config.w8_runs] : [1, config.w8_long_runs];
    for (let i = 0; i < warmup; i++) await chainOnce(length);
    const seconds = [];
    for (let i = 0; i < runs; i++) {
      const elapsed = await chainOnce(length);
      if (elapsed !== null) seconds.push(elapsed);
    }
    const name = `chain${length}`;
    out[`${name}_runs`] = seconds.length;
    if (seconds.length === 0) continue;
    const perStep = (median(seconds) / length) * 1e6;
    out[`${name}_per_step_us`] = round(perStep);
    out[`${name}_run_p50_ms`] = round(median(seconds) * 1000, 3);
    if (position === 0) basePerStep = perStep;
    else if (basePerStep) out[`${name}_vs_chain${steps[0]}`] = round(perStep / basePerStep, 3);
  }
  return out;
}

async function foreachOnce(count, phase = () => {}) {
  // One foreach run, then a read of it from the store. `phase` tells the parent process
  // (foreachInChild) what is running: its timer, not one in here, enforces the time limit,
  // since a long foreach can keep this event loop from running timers at all.
  const run = await wf.foreach.createRun();
  phase({ phase: 'run' });
  const began = now();
  let result;
  try {
    result = await run.start({ inputData: { count } });
  } catch (error) {
    fail('W9 start', error?.message ?? error);
    return { items: count };
  }
  storedRuns += 1;
  const totalS = now() - began;
  const outputs = Array.isArray(result.result) ? result.result : [];
  const checked = outputs.filter((item, index) => item?.value === index + 1).length;
  if (result.status !== 'success' || checked !== count) {
    fail('W9 result', `${count} items: ${result.status}, ${checked} ok`);
  }
  phase({ phase: 'read', totalS, checked });
  const readBegan = now();
  let state;
  try {
    state = await wf.foreach.getWorkflowRunById(run.runId);
  } catch (error) {
    fail('W9 read', error?.message ?? error);
    return { items: count, totalS, checked };
  }
  const readS = now() - readBegan;
  return { items: count, totalS, checked, readS, resultBytes: Buffer.byteLength(JSON.stringify(state)) };
}

function rssMb(pid) {
  try {
    const match = /VmRSS:\s+(\d+) kB/.exec(readFileSync(`/proc/${pid}/status`, 'utf8'));
    return match ? Number(match[1]) / 1024 : 0;
  } catch {
    return 0; // gone, or no /proc: no watchdog
  }
}

const CHILD_START_S = 300; // loading Mastra and the warm-up foreach, before the measured run

function foreachInChild(count) {
  // One size in a fresh process (own store file), watched from here: its RSS (a store that
  // holds too much is stopped at w9_rss_cap_mb instead of taking the shared machine's
  // memory) and its time (w9_limit for the run, counted from the child's 'run' message, and
  // again for the read of the result).
  return new Promise((resolve) => {
    const child = spawn(
      process.execPath,
      [
        ...process.execArgv,
        process.argv[1],
        ...['--store', args.store, '--dbdir', args.dbdir, '--dbname', `w9-${count}.db`],
        ...['--config', args.config, '--w9-size', String(count)],
      ],
      { stdio: ['ignore', 'pipe', 'inherit', 'ipc'] },
    );
    let stdout = '';
    let phase = { phase: 'start' };
    let stopped = null;
    let peakMb = 0;
    let timer;
    const stop = (why) => {
      if (stopped !== null) return;
      stopped = why;
      child.kill('SIGKILL');
    };
    const arm = (seconds) => {
      clearTimeout(timer);
      timer = setTimeout(() => stop('time'), seconds * 1000);
    };
    arm(CHILD_START_S);
    child.on('message', (message) => {
      phase = message;
      arm(config.w9_limit);
    });
    child.stdout.on('data', (chunk) => {
      stdout += chunk;
    });
    const watch = setInterval(() => {
      peakMb = Math.max(peakMb, rssMb(child.pid));
      if (peakMb > config.w9_rss_cap_mb) stop('memory');
    }, 500);
    child.on('close', (code) => {
      clearInterval(watch);
      clearTimeout(timer);
      const rss = peakMb > 0 ? { rssPeakMb: peakMb } : {};
      if (stopped === 'memory') return resolve({ items: count, overMemory: true, ...rss });
      if (stopped === 'time') {
        if (phase.phase === 'run') return resolve({ items: count, overLimit: true, ...rss });
        fail('W9 child', `${count} items: ${phase.phase} took over ${phase.phase === 'start' ? CHILD_START_S : config.w9_limit} s`);
        const { totalS, checked } = phase;
        return resolve({ items: count, totalS, checked, ...rss });
      }
      const line = stdout.trim().split('\n').at(-1) ?? '';
      let reply;
      try {
        reply = JSON.parse(line);
      } catch {
        fail('W9 child', `${count} items: exit ${code}, no result`);
        return resolve({ items: count, ...rss });
      }
      for (const [kind, n] of Object.entries(reply.errors ?? {})) {
        errors[kind] = (errors[kind] ?? 0) + n;
        if (!(kind in firstErrors)) firstErrors[kind] = reply.first_errors?.[kind] ?? '';
      }
      storedRuns += reply.stored_runs ?? 0;
      resolve({ ...reply.timing, ...rss });
    });
  });
}

async function w9() {
  const limitS = config.w9_limit;
  const out = { limit_s: limitS, rss_cap_mb: config.w9_rss_cap_mb };
  const sizes = [...config.w9_sizes].sort((a, b) => a - b);
  let over = null; // what stopped a smaller size: the larger ones are not run
  let basePerItem = null;
  for (const [position, count] of sizes.entries()) {
    const name = `n${count}`;
    const timing = over ? { items: count, [over]: true, notRun: true } : await foreachInChild(count);
    if (timing.overLimit) over = 'overLimit';
    else if (timing.overMemory) over = 'overMemory';
    const what = timing.overLimit ? `over ${limitS} s` : timing.overMemory ? 'over the RSS cap' : `${timing.totalS?.toFixed(3)} s`;
    process.stderr.write(`mastra(${args.store}): W9 ${count} items: ${timing.notRun ? 'not run' : what}\n`);
    out[`${name}_over_limit`] = timing.overLimit ? 1 : 0;
    out[`${name}_over_memory`] = timing.overMemory ? 1 : 0;
    out[`${name}_not_run`] = timing.notRun ? 1 : 0;
    if (timing.rssPeakMb !== undefined) out[`${name}_rss_peak_mb`] = round(timing.rssPeakMb, 1);
    if (timing.overLimit) {
      const above = (limitS / count) * 1e6;
      out[`${name}_total_s_above`] = limitS;
      out[`${name}_per_item_us_above`] = round(above);
      if (position > 0 && basePerItem) out[`${name}_vs_n${sizes[0]}_above`] = round(above / basePerItem, 3);
    }
    if (timing.totalS === undefined) continue;
    const perItem = (timing.totalS / count) * 1e6;
    out[`${name}_items`] = timing.checked;
    out[`${name}_total_s`] = round(timing.totalS, 3);
    out[`${name}_per_item_us`] = round(perItem);
    if (timing.resultBytes !== undefined) out[`${name}_result_bytes`] = timing.resultBytes;
    if (timing.readS !== undefined) out[`${name}_result_read_ms`] = round(timing.readS * 1000, 3);
    if (position === 0) basePerItem = perItem;
    else if (basePerItem) out[`${name}_vs_n${sizes[0]}`] = round(perItem / basePerItem, 3);
  }
  return out;
}

async function timed(name, fn) {
  const before = errorTotal();
  const began = now();
  process.stderr.write(`mastra(${args.store}): ${name} ...\n`);
  const result = await fn();
  result.errors = errorTotal() - before;
  result.wall_s = round(now() - began);
  process.stderr.write(`mastra(${args.store}): ${name} done in ${result.wall_s} s\n`);
  return result;
}

if (args['w9-size'] !== undefined) {
  // A W9 child (foreachInChild): a small warm-up foreach, then the measured one.
  const count = Number(args['w9-size']);
  await foreachOnce(Math.min(100, count));
  const timing = await foreachOnce(count, (message) => process.send?.(message));
  console.log(JSON.stringify({ timing, errors, first_errors: firstErrors, stored_runs: storedRuns }));
  process.exit(0);
}

const out = {};
const wanted = new Set(config.workloads);
for (const [name, fn] of [['W1', w1], ['W2', w2], ['W3', w3], ['W4', w4], ['W5', w5]]) {
  if (wanted.has(name)) out[name] = await timed(name, fn);
}
if (wanted.has('W6') || wanted.has('W7')) {
  const populated = await timed('W7', w7);
  if (wanted.has('W7')) out.W7 = populated;
}
if (wanted.has('W6')) {
  const stored = storedRuns;
  out.W6 = await timed('W6', w1);
  out.W6.stored_runs = stored;
}
// Last, as in the Stepline driver.
for (const [name, fn] of [['W8', w8], ['W9', w9]]) {
  if (wanted.has(name)) out[name] = await timed(name, fn);
}
console.log(
  JSON.stringify({
    engine: `mastra-${args.store}`,
    mastra_core: '1.71.0',
    node: process.version,
    config,
    workloads: out,
    errors,
    first_errors: firstErrors,
  }),
);
process.exit(0);
