/**
 * onnx.executionProviders: sessions start on the configured providers, or — where onnxruntime cannot start them
 * (no GPU adapter, GPU libraries not installed) — on the CPU with one log line per thread and provider list, and the
 * model's outputs are those of the CPU. On this project's machines CUDA never starts (`onnxruntime-node-install=skip`
 * leaves its libraries out) and WebGPU needs a Vulkan adapter; where one does start, its outputs must still match.
 */
import ort from 'onnxruntime-node';
import { afterEach, describe, expect, it, vi } from 'vitest';
import { createSession } from '../experts/kernels/ort-session.ts';
import { expertGraph } from '../experts/expert-graph.ts';
import { Engine } from '../src/engine/engine.ts';
import { mkdtempSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { ConfigSchema, loadConfig } from '../src/config.ts';
import { tinyConfig, writeTinyPackage } from './fixtures/tiny-package.ts';
import { engineConfig, maxAbsDiff, request } from './helpers.ts';

/** Log lines (JSON) written to this thread's stderr while `fn` runs. */
async function logged<T>(fn: () => Promise<T>): Promise<{ value: T; lines: Array<Record<string, unknown>> }> {
  const lines: Array<Record<string, unknown>> = [];
  const spy = vi.spyOn(process.stderr, 'write').mockImplementation((chunk: string | Uint8Array) => {
    for (const line of String(chunk).split('\n')) {
      try {
        lines.push(JSON.parse(line));
      } catch { /* not a log line */ }
    }
    return true;
  });
  try {
    return { value: await fn(), lines };
  } finally {
    spy.mockRestore();
  }
}

const H = 8;
const F = 16;
const weights = {
  gate: Float32Array.from({ length: F * H }, (_, i) => Math.sin(i)),
  up: Float32Array.from({ length: F * H }, (_, i) => Math.cos(i)),
  down: Float32Array.from({ length: H * F }, (_, i) => Math.sin(3 * i)),
};
const graph = expertGraph('ep-test', H, F, weights);
const input = () => new ort.Tensor('float32', Float32Array.from({ length: 2 * H }, (_, i) => i / 10 - 0.7), [2, H]);
const output = async (session: ort.InferenceSession) => (await session.run({ x: input() })).y.data as Float32Array;

describe('createSession', () => {
  afterEach(() => vi.restoreAllMocks());

  it('falls back to the CPU when a provider cannot start, logs it once, and computes what the CPU does', async () => {
    const cpu = await createSession(graph, {}, ['cpu'], 'test sessions');
    expect(cpu.providers).toEqual(['cpu']);
    const want = await output(cpu.session);

    const first = await logged(() => createSession(graph, {}, ['cuda'], 'test sessions'));
    const again = await logged(() => createSession(graph, {}, ['cuda'], 'test sessions'));
    if (first.value.providers[0] === 'cuda') {
      // A machine with onnxruntime's CUDA libraries: it started, and agrees with the CPU.
      expect(maxAbsDiff(await output(first.value.session), want)).toBeLessThan(1e-4);
      return;
    }
    expect(first.value.providers).toEqual(['cpu']);
    expect(first.value.fallback).toMatch(/cuda|CUDA|shared library/i);
    expect(first.lines.map((l) => l.msg)).toEqual(['execution provider cuda unavailable for the test sessions; running on the CPU']);
    expect(first.lines[0].reason).toBe(first.value.fallback);
    // Known now: straight to the CPU, no second attempt and no second log line.
    expect(again.value).toMatchObject({ providers: ['cpu'], fallback: first.value.fallback });
    expect(again.lines).toEqual([]);
    expect(await output(first.value.session)).toEqual(want);
    expect(await output(again.value.session)).toEqual(want);
  });
});

describe('a provider list in order of preference', () => {
  it('tries the rest of the list when the first provider cannot start, then the CPU', async () => {
    const { value, lines } = await logged(() => createSession(graph, {}, ['cuda', 'webgpu'], 'ordered sessions'));
    expect(lines[0]).toMatchObject({ msg: 'execution provider cuda unavailable for the ordered sessions; trying [webgpu]' });
    if (value.providers[0] === 'webgpu') return; // a machine with a WebGPU adapter: the second choice started
    expect(value.providers).toEqual(['cpu']);
    expect(lines.map((l) => l.msg)).toEqual([
      'execution provider cuda unavailable for the ordered sessions; trying [webgpu]',
      'execution provider webgpu unavailable for the ordered sessions; running on the CPU',
    ]);
    expect(value.fallback).toMatch(/^cuda: .*; webgpu: /);
  });
});

describe('onnx.executionProviders in the config', () => {
  it('accepts the providers onnxruntime-node knows and refuses others with the list', () => {
    expect(ConfigSchema.parse({}).onnx.executionProviders).toEqual({ trunk: ['cpu'], experts: ['cpu'] });
    expect(ConfigSchema.parse({ onnx: { executionProviders: { experts: ['webgpu', 'cpu'] } } }).onnx.executionProviders)
      .toEqual({ trunk: ['cpu'], experts: ['webgpu', 'cpu'] });
    expect(() => ConfigSchema.parse({ onnx: { executionProviders: { trunk: ['metal'] } } })).toThrow(/cpu.*webgpu.*cuda.*tensorrt/s);
    expect(() => ConfigSchema.parse({ onnx: { executionProviders: { trunk: [] } } })).toThrow();
    // From a file: the message names the bad value and the file, and an unknown key lists the known ones.
    const file = join(mkdtempSync(join(tmpdir(), 'switchyard-ep-')), 'config.json');
    writeFileSync(file, JSON.stringify({ onnx: { executionProviders: { trunk: ['metal'], gpu: ['cpu'] } } }));
    expect(() => loadConfig({ file, env: {} })).toThrow(/onnx\.executionProviders\.trunk\.0: .*\(got "metal"\) \[from config file .*\][\s\S]*onnx\.executionProviders\.gpu: unknown field; known fields here: trunk, experts/);
  });

  it('serves the same greedy tokens with GPU providers asked for (started or fallen back to the CPU)', async () => {
    const dir = writeTinyPackage(tinyConfig({ max_position_embeddings: 128 }), 5);
    const generate = (providers: Array<'cpu' | 'webgpu' | 'cuda'>) => logged(async () => {
      const engine = await Engine.load(engineConfig(dir, { onnx: { executionProviders: { trunk: providers, experts: providers } } }));
      try {
        return await engine.generate(request('The expert router', 12), { cache: false });
      } finally {
        await engine.close();
      }
    });
    const cpu = await generate(['cpu']);
    const gpu = await generate(['webgpu']);
    expect(gpu.value.generatedText).toBe(cpu.value.generatedText);
    expect(gpu.value.generatedTokens).toBe(12);
    expect(cpu.lines.filter((l) => l.level === 'warn')).toEqual([]);
    const trunk = gpu.lines.filter((l) => l.msg === 'execution provider webgpu unavailable for the trunk; running on the CPU');
    // One line for the trunk's sessions (this thread) where WebGPU cannot start, none where it can.
    const probe = await createSession(graph, {}, ['webgpu'], 'probe');
    expect(trunk.length).toBe(probe.fallback === undefined ? 0 : 1);
    if (probe.fallback !== undefined) expect(trunk[0].reason).toBe(probe.fallback);
  });
});
