/**
 * Scale-out end to end, as separate processes: a real nats-server with JetStream, two `switchyard expert-host`
 * processes, and a gateway (`nats.url`, `nats.placementFile`) whose placement puts every expert on the hosts, none on
 * itself. Greedy outputs equal a single-process gateway's; a live change of the cluster placement under 8 streaming
 * clients loses nothing; SIGKILL of one host under 8 streaming clients fails no request when every expert has a
 * replica.
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { mkdtempSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { joinCluster, PLACEMENT_KEY, type ClusterConnection } from '../experts/remote/cluster.ts';
import type { ClusterPlacementFile } from '../src/placement/cluster.ts';
import { startServer, type RunningServer } from '../src/serve.ts';
import { tinyConfig, writeTinyPackage } from './fixtures/tiny-package.ts';
import { engineConfig } from './helpers.ts';
import { startNats } from './nats-helpers.ts';

const ROOT = join(import.meta.dirname, '..');
const config = tinyConfig();
const dir = writeTinyPackage(config, 33);
const L = config.num_hidden_layers;
const E = config.num_experts;
const CLUSTER = 'scaleout';
/** Hosts renew their announcement every third of it; the gateway heals the placement after it. */
const HOST_TIMEOUT_MS = 3000;
const PROMPTS = ['Call me Ishmael.', 'The whale', 'Mr. Speaker, the state of the Union', 'It was the best of times', 'Q: why?', 'Hello'];

const placement = (hostsOf: (layer: number, expert: number) => string[]): ClusterPlacementFile => ({
  assignments: Array.from({ length: L * E }, (_, g) => ({ layer: Math.floor(g / E), expert: g % E, hosts: hostsOf(Math.floor(g / E), g % E) })),
});
const BOTH = placement(() => ['host-a', 'host-b']);
const SPLIT = placement((l, e) => [(l + e) % 2 ? 'host-a' : 'host-b']);

interface HostProcess {
  child: ChildProcess;
  log: string;
  exited: Promise<void>;
}

function startHost(natsUrl: string, hostId: string): HostProcess {
  const child = spawn(process.execPath, ['bin/switchyard.mjs', 'expert-host', '--nats', natsUrl, '--host-id', hostId, '--workers', '1', '--model', dir], {
    cwd: ROOT, stdio: ['ignore', 'ignore', 'pipe'], env: { ...process.env, LOG_LEVEL: 'info', SWITCHYARD_CONFIG: writeConfig() },
  });
  const host: HostProcess = { child, log: '', exited: new Promise((resolve) => child.on('close', () => resolve())) };
  child.stderr!.on('data', (d) => (host.log += d));
  return host;
}

let configFile: string | undefined;
function writeConfig(): string {
  if (!configFile) {
    configFile = join(mkdtempSync(join(tmpdir(), 'sy-scaleout-')), 'host.json');
    writeFileSync(configFile, JSON.stringify({ nats: { cluster: CLUSTER, hostTimeoutMs: HOST_TIMEOUT_MS } }));
  }
  return configFile;
}

/** Waits until the host's log says it serves `count` experts. */
async function serving(host: HostProcess, count: number): Promise<void> {
  const deadline = Date.now() + 30_000;
  while (!host.log.includes(`"serving":${count},`)) {
    if (host.child.exitCode !== null || Date.now() > deadline) throw new Error(`expert host did not come to serve ${count} experts:\n${host.log}`);
    await new Promise((r) => setTimeout(r, 50));
  }
}

/** One streamed greedy request; its generated text, or the error it ended with. */
async function stream(url: string, inputs: string, maxNewTokens: number): Promise<string> {
  const response = await fetch(`${url}/generate_stream`, {
    method: 'POST', headers: { 'content-type': 'application/json' },
    body: JSON.stringify({ inputs, parameters: { max_new_tokens: maxNewTokens, do_sample: false } }),
  });
  const text = await response.text();
  if (response.status !== 200) throw new Error(`HTTP ${response.status}: ${text}`);
  const events = text.split('\n').filter((l) => l.startsWith('data:')).map((l) => JSON.parse(l.slice(5)));
  const last = events[events.length - 1];
  if (!last || last.error || typeof last.generated_text !== 'string') throw new Error(`stream ended without its final event: ${text.slice(-300)}`);
  return last.generated_text;
}

/** `clients` closed-loop clients, each sending `each` requests; returns the outcomes by prompt, and failures. */
async function load(url: string, clients: number, each: number, during?: () => Promise<void>) {
  const outputs: Array<[string, string]> = [];
  const failures: string[] = [];
  const running = Promise.all(Array.from({ length: clients }, async (_, c) => {
    for (let r = 0; r < each; r++) {
      const prompt = PROMPTS[(c + r) % PROMPTS.length];
      try {
        outputs.push([prompt, await stream(url, prompt, 24)]);
      } catch (error) {
        failures.push((error as Error).message);
      }
    }
  }));
  await during?.();
  await running;
  return { outputs, failures };
}

describe('experts on expert-host processes over NATS', () => {
  let nats: { url: string; process: ChildProcess };
  let hosts: HostProcess[] = [];
  let reference: RunningServer;
  let gateway: RunningServer;
  let admin: ClusterConnection;
  const expected = new Map<string, string>();

  beforeAll(async () => {
    nats = await startNats();
    hosts = [startHost(nats.url, 'host-a'), startHost(nats.url, 'host-b')];
    const placementFile = join(mkdtempSync(join(tmpdir(), 'sy-placement-')), 'cluster.json');
    writeFileSync(placementFile, JSON.stringify(BOTH));
    const noCache = { cache: { prefix: { maxBytes: 0 }, response: { maxEntries: 0 } } };
    reference = await startServer(engineConfig(dir, { port: 0, workers: 1, ...noCache }));
    gateway = await startServer(engineConfig(dir, {
      port: 0, workers: 1, ...noCache,
      nats: { url: nats.url, cluster: CLUSTER, placementFile, requestTimeoutMs: 1000, attempts: 4, localFallback: false, hostTimeoutMs: HOST_TIMEOUT_MS },
      admin: { token: 'scale-out-admin' },
    }));
    await Promise.all(hosts.map((h) => serving(h, L * E)));
    admin = await joinCluster({ url: nats.url, cluster: CLUSTER, token: null, credentialsFile: null }, 'test');
    for (const prompt of PROMPTS) expected.set(prompt, await stream(reference.url, prompt, 24));
  }, 120_000);

  afterAll(async () => {
    await admin?.close();
    await gateway?.close();
    await reference?.close();
    for (const h of hosts) h.child.kill('SIGKILL');
    nats?.process.kill('SIGKILL');
  });

  it('gives the single-process gateway\'s greedy outputs with every expert on the hosts, and reports per-host load', async () => {
    for (const prompt of PROMPTS) expect(await stream(gateway.url, prompt, 24)).toBe(expected.get(prompt));
    const report = await (await fetch(`${gateway.url}/admin/load`, { headers: { authorization: 'Bearer scale-out-admin' } })).json() as {
      windows: Record<string, { tokens: number; workers: Array<{ tokens: number }>; hosts: Array<{ host: string; tokens: number; compute_ms: number }> }>;
    };
    const load = report.windows.since_start;
    expect(load.hosts.map((h) => h.host)).toEqual(['host-a', 'host-b']);
    // Every routed token ran on a host (none on the gateway's own workers): the hosts' tokens add up to the routed ones.
    expect(load.hosts.reduce((n, h) => n + h.tokens, 0)).toBe(load.tokens * L);
    expect(load.workers.reduce((n, w) => n + w.tokens, 0)).toBe(0);
    expect(load.hosts.every((h) => h.compute_ms > 0)).toBe(true);
  }, 60_000);

  const adminCall = async (method: string, route: string, body?: unknown) => {
    const response = await fetch(`${gateway.url}${route}`, {
      method, headers: { authorization: 'Bearer scale-out-admin', 'content-type': 'application/json' }, ...(body === undefined ? {} : { body: JSON.stringify(body) }),
    });
    return { status: response.status, body: await response.json() as Record<string, unknown> };
  };

  it('shows the hosts and the cluster placement, and refuses an invalid placement with 422', async () => {
    const shown = await adminCall('GET', '/admin/cluster');
    expect(shown.status).toBe(200);
    expect((shown.body.hosts as Array<{ hostId: string; workers: number }>).map((h) => [h.hostId, h.workers])).toEqual([['host-a', 1], ['host-b', 1]]);
    expect(shown.body.placement).toEqual(BOTH);
    const bad = await adminCall('PUT', '/admin/cluster/placement', { assignments: BOTH.assignments.slice(1) });
    expect(bad.status).toBe(422);
    expect(bad.body.error).toMatch(/unplaced \(layer.expert\): 0.0/);
    const plan = await adminCall('POST', '/admin/cluster/rebalance', { dry_run: true });
    expect(plan.status).toBe(200);
    expect(plan.body.applied).toBe(false);
    expect(plan.body.hosts).toEqual(['host-a', 'host-b']);
    expect((await adminCall('GET', '/admin/cluster')).body.placement).toEqual(BOTH); // a dry run changes nothing
  }, 60_000);

  it('loses nothing while the cluster placement changes under 8 streaming clients (admin API and rebalancing)', async () => {
    const { outputs, failures } = await load(gateway.url, 8, 3, async () => {
      await new Promise((r) => setTimeout(r, 200));
      expect((await adminCall('PUT', '/admin/cluster/placement', SPLIT)).status).toBe(200);
      await Promise.all(hosts.map((h) => serving(h, (L * E) / 2)));
      const rebalanced = await adminCall('POST', '/admin/cluster/rebalance', {});
      expect(rebalanced.status).toBe(200);
      expect(rebalanced.body.applied).toBe(true);
      await new Promise((r) => setTimeout(r, 300));
      await admin.kv.put(PLACEMENT_KEY, JSON.stringify(BOTH));
    });
    expect(failures).toEqual([]);
    for (const [prompt, text] of outputs) expect(text).toBe(expected.get(prompt));
    await Promise.all(hosts.map((h) => serving(h, L * E)));
  }, 120_000);

  it('fails no request when a host is killed under 8 streaming clients and every expert has a replica', async () => {
    const { outputs, failures } = await load(gateway.url, 8, 3, async () => {
      await new Promise((r) => setTimeout(r, 300));
      hosts[0].child.kill('SIGKILL');
      await hosts[0].exited;
    });
    expect(failures).toEqual([]);
    expect(outputs.length).toBe(24);
    for (const [prompt, text] of outputs) expect(text).toBe(expected.get(prompt));

    // The placement heals: once host-a has not renewed its announcement for HOST_TIMEOUT_MS, no expert names it.
    const deadline = Date.now() + 4 * HOST_TIMEOUT_MS;
    let healed: ClusterPlacementFile | undefined;
    while (Date.now() < deadline) {
      healed = (await adminCall('GET', '/admin/cluster')).body.placement as ClusterPlacementFile;
      if (healed.assignments.every((a) => a.hosts.join() === 'host-b')) break;
      await new Promise((r) => setTimeout(r, 200));
    }
    expect(healed!.assignments.every((a) => a.hosts.join() === 'host-b')).toBe(true);
    for (const prompt of PROMPTS.slice(0, 2)) expect(await stream(gateway.url, prompt, 24)).toBe(expected.get(prompt));
  }, 120_000);
});
