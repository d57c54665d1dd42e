import { mkdirSync, mkdtempSync, readFileSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { describe, expect, it } from 'vitest';
import { ConfigError, ConfigSchema, loadConfig, resolveWorkers } from '../src/config.ts';

const emptyDir = () => mkdtempSync(path.join(tmpdir(), 'switchyard-config-'));

function writeJson(dir: string, name: string, value: unknown): string {
  const file = path.join(dir, name);
  writeFileSync(file, typeof value === 'string' ? value : JSON.stringify(value));
  return file;
}

function configError(fn: () => unknown): ConfigError {
  try {
    fn();
  } catch (err) {
    expect(err).toBeInstanceOf(ConfigError);
    return err as ConfigError;
  }
  throw new Error('expected a ConfigError');
}

describe('loadConfig', () => {
  it('fills every field with its default when there is no file and no environment', () => {
    const cwd = emptyDir();
    const config = loadConfig({ env: {}, cwd });
    expect(config).toEqual({
      host: '127.0.0.1',
      port: 8080,
      model: path.join(cwd, 'models/switchyard-moe'),
      workers: null,
      placementFile: null,
      routing: { capacityFactor: null },
      limits: {
        maxBodyBytes: 65536,
        maxPromptTokens: null,
        maxNewTokens: 256,
        defaultMaxNewTokens: 20,
        maxStopSequences: 4,
        maxStopSequenceLength: 64,
        queueDepth: 64,
        maxBatchSequences: 32,
        maxBatchTokens: 2048,
        requestTimeoutMs: 120000,
        maxTopNTokens: 5,
      },
      onnx: { trunkThreads: 1, trunkKernel: 'auto', expertThreads: 1, executionProviders: { trunk: ['cpu'], experts: ['cpu'] } },
      allocator: { mmapThresholdBytes: 131072 },
      experts: { execution: 'workers', teamThreads: null, kernel: 'auto', sparseMinSparsity: 0.5, trialMs: 2, maxResidentPerWorker: null, overlapMinTokens: 16, workerScheduling: 'batch', channel: 'shared-memory' },
      telemetry: { exporter: 'none', otlpEndpoint: null, loadTraceFile: null, exportTimeoutMs: 500 },
      cache: { prefix: { blockTokens: 16, maxBytes: 64 * 2 ** 20 }, response: { maxEntries: 1024, maxBytes: 16 * 2 ** 20 }, kvPool: { maxBytes: 64 * 2 ** 20 } },
      placement: { maxExpertsPerWorker: null, minSplitRows: 32 },
      admin: {
        token: null, maxWorkers: null, rebalanceWindowSeconds: 60, autoRebalance: false,
        autoRebalanceIntervalSeconds: 60, autoRebalanceThreshold: 0.8, autoRebalanceMinTokens: 1000, maxTraceBytes: 32 * 2 ** 20,
      },
      shutdown: { graceMs: 30000 },
      cors: { origins: [] },
      openai: { strictModel: false },
      nats: {
        url: null, cluster: 'switchyard', placementFile: null, token: null, credentialsFile: null, tls: { caFile: null, certFile: null, keyFile: null },
        requestTimeoutMs: 2000, hostTimeoutMs: 6000,
        attempts: 3, localFallback: true,
      },
    });
  });

  it('config/default.json states exactly the schema defaults', () => {
    const file = path.join(import.meta.dirname, '..', 'config', 'default.json');
    expect(JSON.parse(readFileSync(file, 'utf8'))).toEqual(ConfigSchema.parse({}));
  });

  it('every field has a description', () => {
    const undocumented: string[] = [];
    const seen: string[] = [];
    const walk = (shape: Record<string, { description?: string }>, prefix: string) => {
      for (const [key, field] of Object.entries(shape)) {
        seen.push(prefix + key);
        if (!field.description) undocumented.push(prefix + key);
        const inner = (field as unknown as { def: { innerType?: { shape?: object } } }).def.innerType;
        if (inner?.shape) walk(inner.shape as never, `${prefix}${key}.`);
      }
    };
    walk(ConfigSchema.shape as never, '');
    expect(seen).toContain('limits.requestTimeoutMs');
    expect(seen).toContain('telemetry.loadTraceFile');
    expect(undocumented).toEqual([]);
  });

  it('layers file < environment < overrides, and deep-merges nested sections', () => {
    const cwd = emptyDir();
    const file = writeJson(cwd, 'gw.json', { port: 9000, host: '0.0.0.0', limits: { maxNewTokens: 100 } });
    const config = loadConfig({
      cwd,
      env: { SWITCHYARD_CONFIG: file, PORT: '9100', SWITCHYARD_WORKERS: '3', SWITCHYARD_MODEL: '/models/x' },
      overrides: { port: 0, limits: { queueDepth: 8 } },
    });
    expect(config.port).toBe(0); // override beats env beats file
    expect(config.host).toBe('0.0.0.0'); // from the file
    expect(config.workers).toBe(3); // from the environment
    expect(config.model).toBe('/models/x');
    expect(config.limits.maxNewTokens).toBe(100); // file value kept next to the override's queueDepth
    expect(config.limits.queueDepth).toBe(8);
    expect(config.limits.defaultMaxNewTokens).toBe(20); // default kept inside a partly given section
  });

  it('reads config/default.json from the working directory unless SWITCHYARD_CONFIG names another file', () => {
    const cwd = emptyDir();
    mkdirSync(path.join(cwd, 'config'));
    writeJson(cwd, 'config/default.json', { port: 7000 });
    expect(loadConfig({ cwd, env: {} }).port).toBe(7000);
    const other = writeJson(cwd, 'other.json', { port: 7001 });
    expect(loadConfig({ cwd, env: { SWITCHYARD_CONFIG: other } }).port).toBe(7001);
    expect(loadConfig({ cwd, env: {}, file: null }).port).toBe(8080);
  });

  it('environment overrides the default file, and SWITCHYARD_WORKERS=auto means one per core', () => {
    const cwd = emptyDir();
    const config = loadConfig({ cwd, env: { PORT: '1234', SWITCHYARD_WORKERS: 'auto', HOST: '::1' } });
    expect(config.port).toBe(1234);
    expect(config.host).toBe('::1');
    expect(config.workers).toBeNull();
    expect(resolveWorkers(config)).toBeGreaterThanOrEqual(1);
  });

  it('resolves relative paths against the working directory', () => {
    const cwd = emptyDir();
    const config = loadConfig({
      cwd,
      env: {},
      overrides: { model: 'm/pkg', placementFile: 'p.json', telemetry: { loadTraceFile: 'trace.jsonl' } },
    });
    expect(config.model).toBe(path.join(cwd, 'm/pkg'));
    expect(config.placementFile).toBe(path.join(cwd, 'p.json'));
    expect(config.telemetry.loadTraceFile).toBe(path.join(cwd, 'trace.jsonl'));
  });

  it('names the field, the rule and the environment variable for a bad environment value', () => {
    const err = configError(() => loadConfig({ cwd: emptyDir(), env: { PORT: 'eighty' } }));
    expect(err.message).toContain('port');
    expect(err.message).toContain('expected number');
    expect(err.message).toContain('"eighty"');
    expect(err.message).toContain('environment variable PORT');
    expect(err.issues).toEqual([expect.objectContaining({ path: 'port', source: 'environment variable PORT' })]);
  });

  it('rejects an out-of-range port and a non-integer worker count', () => {
    const err = configError(() => loadConfig({ cwd: emptyDir(), env: { PORT: '70000', SWITCHYARD_WORKERS: '1.5' } }));
    expect(err.message).toMatch(/port: .*65535.*\(got 70000\)/);
    expect(err.message).toMatch(/workers: .*int.*\(got 1\.5\)/);
  });

  it('names the file and the nested field for a bad file value, and lists known fields for a typo', () => {
    const cwd = emptyDir();
    const file = writeJson(cwd, 'bad.json', { prot: 1, limits: { queueDepth: -1 }, telemetry: { exporter: 'zipkin' } });
    const err = configError(() => loadConfig({ cwd, file, env: {} }));
    expect(err.message).toMatch(/limits\.queueDepth: .*>=0.*\(got -1\)/);
    expect(err.message).toMatch(/telemetry\.exporter: .*"none".*"otlp".*"jsonl"/);
    expect(err.message).toMatch(/prot: unknown field; known fields here: host, port/);
    expect(err.message).toContain(`config file ${file}`);
  });

  it('rejects defaultMaxNewTokens above maxNewTokens', () => {
    const err = configError(() =>
      loadConfig({ cwd: emptyDir(), env: {}, overrides: { limits: { maxNewTokens: 10, defaultMaxNewTokens: 20 } } }),
    );
    expect(err.message).toContain('limits.defaultMaxNewTokens: must not exceed limits.maxNewTokens (10)');
    expect(err.message).toContain('command-line override');
  });

  it('reports a config file that is missing or not JSON', () => {
    const cwd = emptyDir();
    expect(configError(() => loadConfig({ cwd, file: 'nope.json', env: {} })).message).toMatch(
      /cannot read config file .*nope\.json/,
    );
    const broken = writeJson(cwd, 'broken.json', '{"port": 80,');
    expect(configError(() => loadConfig({ cwd, file: broken, env: {} })).message).toMatch(/is not valid JSON/);
    const array = writeJson(cwd, 'array.json', '[1]');
    expect(configError(() => loadConfig({ cwd, file: array, env: {} })).message).toMatch(/must hold a JSON object/);
  });
});
