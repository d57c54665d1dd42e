/**
 * Experts on expert hosts over a real NATS server (nats-server -js on a free loopback port): the wire format, the
 * cluster placement, hosts following the placement from the key-value bucket, and the gateway's runner giving the
 * same logits as experts in its own pool; failover to a replica when a host drops out, and the local fallback when
 * no host serves an expert any more.
 */
import { spawnSync, type ChildProcess } from 'node:child_process';
import { mkdtempSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { ExpertPool } from '../experts/pool.ts';
import { joinCluster, PLACEMENT_KEY, type ClusterConnection } from '../experts/remote/cluster.ts';
import { ExpertHost } from '../experts/remote/host.ts';
import { ClusterExpertRunner } from '../experts/remote/runner.ts';
import { decodeReply, decodeRequest, encodeReply, encodeRequest, WireError } from '../experts/remote/wire.ts';
import { MoeModel } from '../src/engine/model.ts';
import { loadModelPackage, type ModelPackage } from '../src/engine/package.ts';
import { ClusterPlacementError, expertsOfHost, GATEWAY_HOST, parseClusterPlacement, withoutHosts, type ClusterPlacementFile } from '../src/placement/cluster.ts';
import type { Placement } from '../src/placement/placement.ts';
import { tinyConfig, writeTinyPackage } from './fixtures/tiny-package.ts';
import { maxAbsDiff } from './helpers.ts';
import { classifyError } from '../src/server/errors.ts';
import { ExpertUnavailableError } from '../experts/remote/errors.ts';
import { startNats } from './nats-helpers.ts';
import { ClusterAdmin } from '../src/engine/cluster-admin.ts';
import type { LoadTracker } from '../src/placement/load-window.ts';

describe('the announced hosts', () => {
  it('lists a host once even when the key listing yields it twice (a host renewing during the listing)', async () => {
    const announce = (hostId: string) => ({ hostId, workers: 2, cores: 2, memoryBytes: 1, startedAt: '2026-01-01T00:00:00Z', heartbeatMs: 1000 });
    const kv = {
      keys: async () => (async function* () { yield* ['host.a', 'host.b', 'host.b']; })(),
      get: async (key: string) => ({ operation: 'PUT', created: new Date(), json: () => announce(key.slice(5)) }),
    };
    const admin = new ClusterAdmin({ connection: { kv } as unknown as ClusterConnection, placement: { hosts: [] } }, {} as LoadTracker,
      { layers: 1, experts: 1, cluster: 'c', hostTimeoutMs: 6000 });
    expect((await admin.hosts()).map((h) => h.hostId)).toEqual(['a', 'b']);
  });
});

describe('expert batch wire format', () => {
  it('round-trips requests and replies, from any byte offset', () => {
    const rows = Float32Array.from({ length: 3 * 4 }, (_, i) => i * 0.5 - 2);
    const bytes = encodeRequest({ layer: 2, expert: 7, tokens: 3, hidden: 4, rows });
    const shifted = new Uint8Array(bytes.length + 3);
    shifted.set(bytes, 3);
    const back = decodeRequest(shifted.subarray(3));
    expect([back.layer, back.expert, back.tokens, back.hidden]).toEqual([2, 7, 3, 4]);
    expect(Array.from(back.rows)).toEqual(Array.from(rows));
    const reply = decodeReply(encodeReply({ ok: true, host: 'host-ä', tokens: 3, hidden: 4, computeMs: 1.25, output: rows }));
    expect(reply.ok && reply.computeMs).toBe(1.25);
    expect(reply.ok && reply.host).toBe('host-ä');
    expect(reply.ok && Array.from(reply.output)).toEqual(Array.from(rows));
    expect(decodeReply(encodeReply({ ok: false, error: 'no such expert' }))).toEqual({ ok: false, error: 'no such expert' });
  });

  it('refuses truncated, foreign and mis-sized messages with a WireError', () => {
    const bytes = encodeRequest({ layer: 0, expert: 0, tokens: 2, hidden: 4, rows: new Float32Array(8) });
    expect(() => decodeRequest(bytes.subarray(0, 10))).toThrow(/shorter than its 24-byte header/);
    expect(() => decodeRequest(bytes.subarray(0, bytes.length - 4))).toThrow(WireError);
    const foreign = bytes.slice();
    foreign[0] ^= 0xff;
    expect(() => decodeRequest(foreign)).toThrow(/bad magic/);
    expect(() => encodeRequest({ layer: 0, expert: 0, tokens: 2, hidden: 4, rows: new Float32Array(7) })).toThrow(/expected 2 × 4/);
  });
});

describe('an expert no host answers for (local fallback off)', () => {
  it('fails its step with 503 naming the expert', () => {
    const known = classifyError(new ExpertUnavailableError('expert 1.3: no expert host answered (last: no host serves it (no responders))'));
    expect(known?.status).toBe(503);
    expect(known?.errorType).toBe('generation');
    expect(known?.message).toMatch(/^expert 1.3: no expert host answered/);
  });
});

describe('cluster placement', () => {
  it('lists each host\'s experts and refuses unplaced or out-of-range experts', () => {
    const file: ClusterPlacementFile = { assignments: [
      { layer: 0, expert: 0, hosts: ['a'] }, { layer: 0, expert: 1, hosts: ['b', 'a'] },
      { layer: 1, expert: 0, hosts: [GATEWAY_HOST] }, { layer: 1, expert: 1, hosts: ['b'] },
    ] };
    const p = parseClusterPlacement(file, 2, 2);
    expect(p.hosts[0][1]).toEqual(['a', 'b']);
    expect(expertsOfHost(p, 'a')).toEqual([{ layer: 0, expert: 0 }, { layer: 0, expert: 1 }]);
    expect(() => parseClusterPlacement({ assignments: file.assignments.slice(1) }, 2, 2)).toThrow(/unplaced \(layer.expert\): 0.0/);
    expect(() => parseClusterPlacement({ assignments: [...file.assignments, { layer: 5, expert: 0, hosts: ['a'] }] }, 2, 2)).toThrow(ClusterPlacementError);
    expect(() => parseClusterPlacement({ assignments: [{ layer: 0, expert: 0, hosts: ['bad host'] }] }, 1, 1)).toThrow(/host id/);
  });

  it('heals without gone hosts: replicas carry on, orphans go to the least-loaded live host, or the gateway', () => {
    const p = parseClusterPlacement({ assignments: [
      { layer: 0, expert: 0, hosts: ['a', 'b'] }, { layer: 0, expert: 1, hosts: ['a'] },
      { layer: 1, expert: 0, hosts: ['a'] }, { layer: 1, expert: 1, hosts: ['c'] },
    ] }, 2, 2);
    expect(withoutHosts(p, new Set(['d']), ['a', 'b', 'c'])).toBeNull();
    // b and c hold one expert each: the first orphan goes to b (a tie: the lower id), the next to c, now the lesser.
    expect(withoutHosts(p, new Set(['a']), ['b', 'c'])!.hosts).toEqual([[['b'], ['b']], [['c'], ['c']]]);
    expect(withoutHosts(p, new Set(['a', 'b', 'c']), [])!.hosts).toEqual([[[GATEWAY_HOST], [GATEWAY_HOST]], [[GATEWAY_HOST], [GATEWAY_HOST]]]);
  });
});

/** A CA and a server certificate for 127.0.0.1, made with openssl (Debian's, which the test machines have). */
function makeCertificates(dir: string): { ca: string; cert: string; key: string } {
  const run = (args: string[]) => {
    const r = spawnSync('openssl', args, { cwd: dir, encoding: 'utf8' });
    if (r.status !== 0) throw new Error(`openssl ${args.join(' ')} failed: ${r.stderr}`);
  };
  run(['req', '-x509', '-newkey', 'rsa:2048', '-nodes', '-keyout', 'ca.key', '-out', 'ca.pem', '-days', '2', '-subj', '/CN=switchyard test CA']);
  run(['req', '-newkey', 'rsa:2048', '-nodes', '-keyout', 'server.key', '-out', 'server.csr', '-subj', '/CN=127.0.0.1']);
  writeFileSync(join(dir, 'san.ext'), 'subjectAltName=IP:127.0.0.1,DNS:localhost\n');
  run(['x509', '-req', '-in', 'server.csr', '-CA', 'ca.pem', '-CAkey', 'ca.key', '-CAcreateserial', '-out', 'server.pem', '-days', '2', '-extfile', 'san.ext']);
  return { ca: join(dir, 'ca.pem'), cert: join(dir, 'server.pem'), key: join(dir, 'server.key') };
}

describe('joining a cluster', () => {
  it('speaks TLS to a nats-server that requires it, trusting the CA nats.tls.caFile names', async () => {
    const certs = makeCertificates(mkdtempSync(join(tmpdir(), 'sy-tls-')));
    const nats = await startNats(['--tls', '--tlscert', certs.cert, '--tlskey', certs.key]);
    try {
      const options = { url: nats.url, cluster: 'tls', token: null, credentialsFile: null };
      const joined = await joinCluster({ ...options, tls: { caFile: certs.ca, certFile: null, keyFile: null } }, 'test');
      expect(joined.nc.info?.tls_required).toBe(true);
      await joined.close();
      // Without the CA the server's certificate is not trusted.
      await expect(joinCluster(options, 'test')).rejects.toThrow(/TLS to NATS .* failed .*set nats.tls.caFile/);
    } finally {
      nats.process.kill('SIGKILL');
    }
  }, 30_000);

  it('takes the token a NATS server with --auth expects, and says how to fix a wrong or missing one', async () => {
    const nats = await startNats(['--auth', 's3cret']);
    try {
      const options = { url: nats.url, cluster: 'auth', credentialsFile: null };
      const joined = await joinCluster({ ...options, token: 's3cret' }, 'test');
      await joined.close();
      for (const token of ['wrong', null]) {
        await expect(joinCluster({ ...options, token }, 'test')).rejects.toThrow(/refused this client's credentials: set nats.token/);
      }
    } finally {
      nats.process.kill('SIGKILL');
    }
    await expect(joinCluster({ url: nats.url, cluster: 'gone', token: null, credentialsFile: null }, 'test')).rejects.toThrow(/cannot reach NATS at .*start nats-server/);
  }, 30_000);
});

const config = tinyConfig();
const dir = writeTinyPackage(config, 21);
const L = config.num_hidden_layers;
const E = config.num_experts;

function emptyPlacement(workers: number): Placement {
  return { workers, hosts: Array.from({ length: L }, () => Array.from({ length: E }, () => [])) };
}

function fullPlacement(workers: number): Placement {
  return { workers, hosts: Array.from({ length: L }, (_, l) => Array.from({ length: E }, (_, e) => [(l * E + e) % workers])) };
}

function startPool(pkg: ModelPackage, placement: Placement): Promise<ExpertPool> {
  return ExpertPool.start({
    weightsFile: pkg.weightsFile, modelType: pkg.config.model_type, hidden: pkg.config.hidden_size, ffn: pkg.config.intermediate_size,
    placement, threadsPerWorker: 1, executionProviders: ['cpu'],
  });
}

const cluster = (url: string) => ({ url, cluster: 'sytest', token: null, credentialsFile: null });

describe('experts on expert hosts over NATS', () => {
  let nats: { url: string; process: ChildProcess };
  let pkg: ModelPackage;
  const hosts: Array<{ host: ExpertHost; pool: ExpertPool; connection: ClusterConnection }> = [];
  let gateway: ClusterConnection;
  let gatewayPool: ExpertPool;
  let referencePool: ExpertPool;
  let reference: MoeModel;

  beforeAll(async () => {
    nats = await startNats();
    pkg = loadModelPackage(dir);
    for (const id of ['host-a', 'host-b']) {
      const pool = await startPool(pkg, emptyPlacement(1));
      const connection = await joinCluster(cluster(nats.url), id);
      hosts.push({ host: await ExpertHost.start(connection, pool, { hostId: id, cluster: 'sytest', layers: L, experts: E, hidden: config.hidden_size }), pool, connection });
    }
    gateway = await joinCluster(cluster(nats.url), 'gateway');
    gatewayPool = await startPool(pkg, emptyPlacement(1));
    referencePool = await startPool(pkg, fullPlacement(2));
    reference = await MoeModel.load(pkg, referencePool, { capacityFactor: null, trunkThreads: 1, executionProviders: ['cpu'] });
  }, 60_000);

  afterAll(async () => {
    for (const h of hosts) {
      await h.host.close().catch(() => undefined);
      await h.connection.close().catch(() => undefined);
      await h.pool.close();
    }
    await gateway?.close();
    await gatewayPool?.close();
    await referencePool?.close();
    nats?.process.kill('SIGKILL');
  });

  /** Publishes a placement and waits until both hosts serve what it gives them. */
  async function publish(file: ClusterPlacementFile) {
    const placement = parseClusterPlacement(file, L, E);
    await gateway.kv.put(PLACEMENT_KEY, JSON.stringify(file));
    const deadline = Date.now() + 15_000;
    for (const [i, id] of ['host-a', 'host-b'].entries()) {
      const want = expertsOfHost(placement, id).map((k) => `${k.layer}.${k.expert}`).sort();
      while (JSON.stringify(hosts[i].host.serving) !== JSON.stringify(want)) {
        if (Date.now() > deadline) throw new Error(`${id} serves ${hosts[i].host.serving.join(',')}, not ${want.join(',')}`);
        await new Promise((r) => setTimeout(r, 20));
      }
    }
    return placement;
  }

  async function logitsOf(model: MoeModel, prompts: number[][]) {
    const out = await model.forward(prompts.map((tokens) => ({ cache: model.newCache(), tokens, allPositions: true })));
    return out.logits;
  }

  const PROMPTS = [[1, 2, 3, 4, 5, 6, 7, 8], [40, 41, 42], [200, 100, 50, 25, 12, 6]];

  it('refuses a batch for an expert no worker of a pool hosts, instead of returning nothing for it', async () => {
    const x = new Float32Array(config.hidden_size);
    await expect(gatewayPool.runLayer(0, x, { batches: [{ expert: 0, rows: [0] }], overflow: [], capacity: 1 })).rejects.toThrow(/expert 0.0 is hosted by no worker/);
  });

  it('gives the logits of experts in the gateway\'s own pool, with every expert remote and some on both hosts', async () => {
    const placement = await publish({ assignments: Array.from({ length: L * E }, (_, g) => ({
      layer: Math.floor(g / E), expert: g % E, hosts: g % 3 === 0 ? ['host-a', 'host-b'] : [g % 2 ? 'host-a' : 'host-b'],
    })) });
    const runner = new ClusterExpertRunner(gateway.nc, gatewayPool, placement, { cluster: 'sytest', hidden: config.hidden_size, requestTimeoutMs: 2000, attempts: 3, localFallback: false });
    const model = await MoeModel.load(pkg, runner, { capacityFactor: null, trunkThreads: 1, executionProviders: ['cpu'] });
    const [want, got] = [await logitsOf(reference, PROMPTS), await logitsOf(model, PROMPTS)];
    got.forEach((l, i) => expect(maxAbsDiff(l, want[i])).toBe(0));
    expect(hosts[0].host.served).toBeGreaterThan(0);
    expect(hosts[1].host.served).toBeGreaterThan(0);
    expect(runner.failovers).toBe(0);
  }, 60_000);

  it('fails over to the replica when a host drops out, and falls back to the gateway\'s workers when no host is left', async () => {
    // Every expert on host-a; layer 0 also on host-b.
    const placement = await publish({ assignments: Array.from({ length: L * E }, (_, g) => ({
      layer: Math.floor(g / E), expert: g % E, hosts: g < E ? ['host-a', 'host-b'] : ['host-a'],
    })) });
    const runner = new ClusterExpertRunner(gateway.nc, gatewayPool, placement, { cluster: 'sytest', hidden: config.hidden_size, requestTimeoutMs: 500, attempts: 2, localFallback: true });
    const model = await MoeModel.load(pkg, runner, { capacityFactor: null, trunkThreads: 1, executionProviders: ['cpu'] });
    const want = await logitsOf(reference, PROMPTS);
    // host-a leaves without a word: its connection closes, so NATS drops its subscriptions.
    await hosts[0].connection.nc.close();
    const served = hosts[1].host.served;
    const got = await logitsOf(model, PROMPTS);
    got.forEach((l, i) => expect(maxAbsDiff(l, want[i])).toBe(0));
    expect(hosts[1].host.served).toBeGreaterThan(served); // layer 0 went to the replica
    expect(runner.failovers).toBeGreaterThan(0); // layers 1.. fell back to the gateway
    expect(gatewayPool.placement.hosts[1].some((ws) => ws.length > 0)).toBe(true);
    expect(runner.clusterPlacement).toBe(placement); // a fallback is the gateway's stopgap, not a placement change

    // The next placement hands the experts back (the gateway's workers drop them); with host-a still gone, the
    // fallback takes them over again, with the same numbers.
    await runner.applyPlacement(parseClusterPlacement({ assignments: Array.from({ length: L * E }, (_, g) => ({
      layer: Math.floor(g / E), expert: g % E, hosts: g < E ? ['host-b'] : ['host-a'],
    })) }, L, E));
    expect(gatewayPool.placement.hosts.flat().every((ws) => ws.length === 0)).toBe(true);
    const again = await logitsOf(model, PROMPTS);
    again.forEach((l, i) => expect(maxAbsDiff(l, want[i])).toBe(0));
    expect(gatewayPool.placement.hosts[1].some((ws) => ws.length > 0)).toBe(true);
  }, 60_000);
});

describe('an expert batch larger than the server\'s max_payload', () => {
  it('goes as several requests of whole rows, with the same outputs as the gateway\'s own pool', async () => {
    const store = mkdtempSync(join(tmpdir(), 'sy-nats-conf-'));
    const conf = join(store, 'nats.conf');
    writeFileSync(conf, 'max_payload: 16384\n');
    const nats = await startNats(['-c', conf]);
    const pkg = loadModelPackage(dir);
    const hostPool = await startPool(pkg, emptyPlacement(1));
    const local = await startPool(pkg, fullPlacement(1));
    const hostConnection = await joinCluster(cluster(nats.url), 'host');
    const gateway = await joinCluster(cluster(nats.url), 'gateway');
    const host = await ExpertHost.start(hostConnection, hostPool, { hostId: 'h', cluster: 'sytest', layers: L, experts: E, hidden: config.hidden_size });
    let gatewayPool: ExpertPool | undefined;
    try {
      const file: ClusterPlacementFile = { assignments: Array.from({ length: L * E }, (_, g) => ({ layer: Math.floor(g / E), expert: g % E, hosts: ['h'] })) };
      await gateway.kv.put(PLACEMENT_KEY, JSON.stringify(file));
      while (host.serving.length < L * E) await new Promise((r) => setTimeout(r, 20));
      gatewayPool = await startPool(pkg, emptyPlacement(1));
      const runner = new ClusterExpertRunner(gateway.nc, gatewayPool, parseClusterPlacement(file, L, E),
        { cluster: 'sytest', hidden: config.hidden_size, requestTimeoutMs: 2000, attempts: 2, localFallback: false });
      const tokens = Math.ceil((3 * 16384) / (config.hidden_size * 4)); // about three messages' worth of rows
      const x = Float32Array.from({ length: tokens * config.hidden_size }, (_, i) => Math.sin(i));
      const plan = { batches: [{ expert: 1, rows: Array.from({ length: tokens }, (_, i) => i) }], overflow: [], capacity: tokens };
      const served = host.served;
      const [remote, own] = [await runner.runLayer(0, x, plan), await local.runLayer(0, x, plan)];
      expect(host.served - served).toBeGreaterThanOrEqual(3);
      expect(maxAbsDiff(remote.batches[0].output, own.batches[0].output)).toBe(0);
    } finally {
      await host.close();
      await hostConnection.close();
      await gateway.close();
      await hostPool.close();
      await local.close();
      await gatewayPool?.close();
      nats.process.kill('SIGKILL');
    }
  }, 60_000);
});

