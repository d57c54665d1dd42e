/**
 * What experts on expert hosts cost, on this one machine (a cost measurement, not a speed-up claim: the hosts share
 * its cores with the gateway). Three parts, appended to bench/RESULTS.md as one section:
 *
 *   1. per-layer dispatch latency: the gateway's own pool (ExpertPool.runLayer) against the same experts on an
 *      expert host over NATS on loopback (ClusterExpertRunner.runLayer), at each batch size, interleaved, medians;
 *   2. aggregate output tokens/s at 8 and 32 streaming clients: a gateway with its experts local against gateways
 *      whose experts are all on 1 and on 2 expert-host processes (same worker count in all);
 *   3. the failover pause: with every expert on both of 2 hosts and 8 streaming clients, one host is SIGKILLed;
 *      the longest gap between token events after that, and how many requests failed.
 *
 *   npx tsx bench/scale-out.ts [--rounds 100] [--batches 1,32] [--clients 8,32] [--repeats 2] [--label T] [--no-record]
 */
import { mkdtempSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { performance } from 'node:perf_hooks';
import { randomValues } from '../experts/kernels/reference.ts';
import { ExpertPool } from '../experts/pool.ts';
import { joinCluster } from '../experts/remote/cluster.ts';
import { ExpertHost } from '../experts/remote/host.ts';
import { ClusterExpertRunner } from '../experts/remote/runner.ts';
import { planDispatch } from '../router/dispatch.ts';
import { loadModelPackage } from '../src/engine/package.ts';
import { clusterPlacementToFile, parseClusterPlacement, type ClusterPlacementFile } from '../src/placement/cluster.ts';
import { roundRobinPlacement } from '../src/placement/placement.ts';
import { startNats } from '../test/nats-helpers.ts';
import { BUNDLED_MODEL } from '../test/fixtures/tiny-package.ts';
import { createClient } from './clients.ts';
import { clientLevels, intFlag, parseFlags, runCli, UsageError } from './cli-common.ts';
import { freePort, startProc, stopProc, waitHealthy, type Proc } from './procs.ts';
import { commandLine, publish } from './record.ts';
import { DEFAULT_PROMPTS, resultsTable, runBenchmark, warmUp } from './run-load.ts';
import { fmt, markdownTable, median } from './stats.ts';

const SCRIPT = 'bench/scale-out.ts';
const HELP = `Usage: npx tsx ${SCRIPT} [options]

The cost of experts on expert hosts over NATS, on this machine: per-layer dispatch latency (local pool vs a host
over loopback NATS), tokens/s with experts local vs on 1 and 2 expert-host processes, and the failover pause when
a host is killed. Needs nats-server (test/ensure-deps.sh installs it). Appends to bench/RESULTS.md.

  --rounds N       dispatch rounds per batch size (default 100)
  --batches LIST   dispatch batch sizes in tokens (default 1,32)
  --clients LIST   concurrency levels of the tokens/s part (default 8,32)
  --repeats R      interleaved repeats of the tokens/s part (default 2)
  --label TEXT     label for the RESULTS.md section
  --no-record      print only
  --help
`;

interface Options {
  rounds: number;
  batches: number[];
  clients: number[];
  repeats: number;
  label?: string;
  record: boolean;
}

function parse(argv: string[]): Options | null {
  const v = parseFlags(argv, {
    rounds: { type: 'string' }, batches: { type: 'string' }, clients: { type: 'string' }, repeats: { type: 'string' },
    label: { type: 'string' }, 'no-record': { type: 'boolean' }, help: { type: 'boolean' },
  });
  if (v.help) return null;
  const batches = (v.batches ?? '1,32').split(',').map(Number);
  if (batches.some((b) => !Number.isInteger(b) || b < 1 || b > 4096)) throw new UsageError('--batches: integers 1..4096');
  return {
    rounds: intFlag('--rounds', v.rounds, 100, 1, 100_000), batches, clients: clientLevels(v.clients ?? '8,32', 96),
    repeats: intFlag('--repeats', v.repeats, 2, 1, 20), label: v.label, record: !v['no-record'],
  };
}

const pkg = loadModelPackage(BUNDLED_MODEL);
const c = pkg.config;
const everyExpertOn = (hosts: string[]): ClusterPlacementFile =>
  clusterPlacementToFile({ hosts: Array.from({ length: c.num_hidden_layers }, () => Array.from({ length: c.num_experts }, () => [...hosts])) });

/** Part 1: median per-layer µs of the local pool and of the same experts behind NATS, per batch size. */
async function dispatchLatency(natsUrl: string, o: Options): Promise<string[][]> {
  const start = (placement: ReturnType<typeof roundRobinPlacement>) => ExpertPool.start({
    weightsFile: pkg.weightsFile, modelType: c.model_type, hidden: c.hidden_size, ffn: c.intermediate_size, placement,
    threadsPerWorker: 1, executionProviders: ['cpu'], kernel: { kernel: 'dense', sparseMinSparsity: 0.5, trialMs: 0 },
  });
  const local = await start(roundRobinPlacement(c.num_hidden_layers, c.num_experts, 2));
  const hostPool = await start({ workers: 2, hosts: Array.from({ length: c.num_hidden_layers }, () => Array.from({ length: c.num_experts }, () => [])) });
  const hostConnection = await joinCluster({ url: natsUrl, cluster: 'dispatch', token: null, credentialsFile: null }, 'bench host');
  const gateway = await joinCluster({ url: natsUrl, cluster: 'dispatch', token: null, credentialsFile: null }, 'bench gateway');
  const host = await ExpertHost.start(hostConnection, hostPool, { hostId: 'h', cluster: 'dispatch', layers: c.num_hidden_layers, experts: c.num_experts, hidden: c.hidden_size });
  const file = everyExpertOn(['h']);
  await gateway.kv.put('placement', JSON.stringify(file));
  while (host.serving.length < c.num_hidden_layers * c.num_experts) await new Promise((r) => setTimeout(r, 20));
  const remote = new ClusterExpertRunner(gateway.nc, local, parseClusterPlacement(file, c.num_hidden_layers, c.num_experts),
    { cluster: 'dispatch', hidden: c.hidden_size, requestTimeoutMs: 5000, attempts: 1, localFallback: false });
  const runners = [local, remote];
  const rows: string[][] = [];
  try {
    for (const tokens of o.batches) {
      const times = runners.map(() => [] as number[]);
      for (let round = -5; round < o.rounds; round++) {
        const layer = ((round % c.num_hidden_layers) + c.num_hidden_layers) % c.num_hidden_layers;
        const x = randomValues(tokens * c.hidden_size, round + 100, 1);
        const plan = planDispatch(Int32Array.from({ length: tokens }, () => Math.floor(Math.random() * c.num_experts)), c.num_experts, null);
        for (let k = 0; k < runners.length; k++) {
          const r = (k + round + 10) % runners.length;
          const t0 = performance.now();
          await runners[r].runLayer(layer, x, plan);
          if (round >= 0) times[r].push((performance.now() - t0) * 1000);
        }
      }
      const [l, n] = times.map(median);
      rows.push([String(tokens), fmt(l, 0), fmt(n, 0), fmt(n - l, 0), `${fmt(n / l, 2)}×`]);
    }
  } finally {
    await host.close();
    await hostConnection.close();
    await gateway.close();
    await hostPool.close();
    await local.close();
  }
  return rows;
}

const scratch = mkdtempSync(path.join(tmpdir(), 'sy-scaleout-bench-'));

function gatewayProc(name: string, port: number, natsUrl: string | null, cluster: string, placement: ClusterPlacementFile | null, workers: number): Proc {
  const config = path.join(scratch, `${name}.json`);
  const placementFile = path.join(scratch, `${name}-placement.json`);
  if (placement) writeFileSync(placementFile, JSON.stringify(placement));
  writeFileSync(config, JSON.stringify({
    cache: { prefix: { maxBytes: 0 }, response: { maxEntries: 0 } },
    ...(natsUrl ? { nats: { url: natsUrl, cluster, placementFile, localFallback: false } } : {}),
  }));
  return startProc(name, process.execPath, ['bin/switchyard.mjs', 'serve', '--config', config, '--port', String(port), '--workers', String(workers)],
    path.join(scratch, `${name}.log`), { ...process.env, LOG_LEVEL: 'warn' });
}

function hostProc(name: string, natsUrl: string, cluster: string, workers: number): Proc {
  const config = path.join(scratch, `${name}.json`);
  writeFileSync(config, JSON.stringify({ nats: { cluster } }));
  return startProc(name, process.execPath, ['bin/switchyard.mjs', 'expert-host', '--nats', natsUrl, '--host-id', name, '--workers', String(workers), '--config', config],
    path.join(scratch, `${name}.log`), { ...process.env, LOG_LEVEL: 'warn' });
}

async function run(o: Options): Promise<number> {
  const nats = await startNats();
  const procs: Proc[] = [];
  try {
    const dispatchRows = await dispatchLatency(nats.url, o);

    // Part 2: three gateways, every one with 2 expert workers in all: local; 1 host of 2 workers; 2 hosts of 1.
    procs.push(hostProc('one-host', nats.url, 'one', 2), hostProc('two-a', nats.url, 'two', 1), hostProc('two-b', nats.url, 'two', 1));
    const ports = await Promise.all([freePort(), freePort(), freePort()]);
    const gateways = [
      { name: 'experts local (2 workers)', proc: gatewayProc('local', ports[0], null, '', null, 2) },
      { name: 'experts on 1 host (2 workers)', proc: gatewayProc('gw-one', ports[1], nats.url, 'one', everyExpertOn(['one-host']), 1) },
      { name: 'experts on 2 hosts (1 worker each)', proc: gatewayProc('gw-two', ports[2], nats.url, 'two', everyExpertOn(['two-a', 'two-b']), 1) },
    ];
    procs.push(...gateways.map((g) => g.proc));
    await Promise.all(gateways.map((g, i) => waitHealthy(g.proc, `http://127.0.0.1:${ports[i]}`)));
    const targets = await Promise.all(gateways.map(async (g, i) => ({ name: g.name, client: await createClient('tgi', `http://127.0.0.1:${ports[i]}`, { timeoutMs: 120_000, ignoreEos: true }) })));
    await warmUp(targets, DEFAULT_PROMPTS[0], 8, true);
    const results = await runBenchmark({
      targets, levels: o.clients, requestsFor: (n) => 2 * n, repeats: o.repeats, maxTokens: 64, prompts: DEFAULT_PROMPTS, stream: true,
      onProgress: (line) => process.stderr.write(`${line}\n`),
    });

    // Part 3: kill one of the two hosts (every expert on both) under 8 streaming clients.
    const client = targets[2].client;
    const tokenTimes: number[] = [];
    let failed = 0;
    let requests = 0;
    const streams = Promise.all(Array.from({ length: 8 }, async (_, i) => {
      for (let r = 0; r < 4; r++) {
        requests++;
        try {
          for await (const event of client.stream(DEFAULT_PROMPTS[(i + r) % DEFAULT_PROMPTS.length], 64)) tokenTimes.push(event.t);
        } catch {
          failed++;
        }
      }
    }));
    await new Promise((r) => setTimeout(r, 1500));
    const killedAt = performance.now();
    procs[2].child.kill('SIGKILL');
    await streams;
    const after = tokenTimes.filter((t) => t >= killedAt).sort((a, b) => a - b);
    let pause = after.length > 0 ? after[0] - killedAt : NaN;
    for (let i = 1; i < after.length && after[i] < killedAt + 10_000; i++) pause = Math.max(pause, after[i] - after[i - 1]);

    const dispatchTable = markdownTable(['batch', 'local pool µs', 'host over NATS µs', 'NATS cost µs', 'ratio'], dispatchRows);
    publish([dispatchTable, resultsTable(results), markdownTable(['host killed', 'requests', 'failed', 'longest pause in the token streams after the kill (ms)'],
      [['two-b (SIGKILL), every expert on both hosts', String(requests), String(failed), fmt(pause, 0)]])], [
      `Dispatch: per-layer wall time of runLayer, medians over ${o.rounds} rounds per batch size (after 5 warm-up rounds), top-1 routing at random, 2 workers on each side; the host runs in this process with its own worker threads, reached over nats-server on loopback.`,
      'Tokens/s: gateways as processes, caches off, 64 new tokens per request (ignore_eos), streamed; every setup has 2 expert worker threads in all, on this same 2-core machine, so the hosts add NATS hops and processes, never cores: a cost measurement, not a speed-up claim.',
      'Failover: nats.requestTimeoutMs 2000 (the default) bounds the pause: batches in flight to the killed host wait for it, then go to the replica.',
    ], o.record && { title: 'scale-out over NATS: dispatch cost, tokens/s local vs remote hosts, failover pause', ...(o.label ? { label: o.label } : {}), command: commandLine(SCRIPT) });
    return 0;
  } finally {
    await Promise.all(procs.map((p) => stopProc(p, 5000)));
    nats.process.kill('SIGKILL');
  }
}

runCli(SCRIPT, HELP, parse, run);
