/**
 * Gateway configuration: one zod schema is the source of truth (defaults and one-line descriptions live here).
 *
 * Precedence, lowest to highest: schema defaults < JSON file < environment variables < explicit overrides (CLI flags).
 */
import { existsSync, readFileSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { z } from 'zod';

const int = (min: number, max = Number.MAX_SAFE_INTEGER) => z.int().min(min).max(max);

const RoutingSchema = z.strictObject({
  capacityFactor: z
    .number()
    .positive()
    .nullable()
    .default(null)
    .describe('Expert capacity as a multiple of the even per-expert token share; null drops no token at inference.'),
});

const LimitsSchema = z.strictObject({
  maxBodyBytes: int(1).default(65536).describe('Largest accepted HTTP request body in bytes (larger bodies get 413).'),
  maxPromptTokens: int(1)
    .nullable()
    .default(null)
    .describe('Longest accepted prompt in tokens; null means the model context length minus 1.'),
  maxNewTokens: int(1).default(256).describe('Largest max_new_tokens a request may ask for.'),
  defaultMaxNewTokens: int(1).default(20).describe('max_new_tokens used when a request does not set it.'),
  maxStopSequences: int(0).default(4).describe('Most stop sequences one request may send.'),
  maxStopSequenceLength: int(1).default(64).describe('Longest stop sequence in characters.'),
  queueDepth: int(0).default(64).describe('Requests that may wait when all maxBatchSequences batch slots are taken; beyond that, 429 (a request that finds a free slot is never refused).'),
  maxBatchSequences: int(1).default(32).describe('Most sequences decoded together in one scheduler step.'),
  maxBatchTokens: int(1).default(2048).describe('Most tokens (prefill and decode) processed in one scheduler step.'),
  requestTimeoutMs: int(1).default(120000).describe('A request still running after this many milliseconds is cancelled.'),
  maxTopNTokens: int(0).default(5).describe('Largest top_n_tokens (TGI) a request may ask for: most likely alternatives reported per generated token.'),
});

/** The execution providers onnxruntime-node knows on Linux x64 ('cpu' and 'webgpu' ship inside the package). */
export const EXECUTION_PROVIDERS = ['cpu', 'webgpu', 'cuda', 'tensorrt'] as const;

const ProviderList = z
  .array(z.enum(EXECUTION_PROVIDERS))
  .min(1)
  .default(['cpu']);

const OnnxSchema = z.strictObject({
  trunkThreads: int(1).default(1).describe('Intra-op threads of the ONNX Runtime sessions that run the dense trunk.'),
  trunkKernel: z
    .enum(['auto', 'native', 'onnx'])
    .default('auto')
    .describe("How each layer's dense trunk stages (input norm, q/k/v projections, rotary, o_proj, post-attention norm, router logits, shared expert) run: 'native' (our addon, built by npm ci: it saves onnxruntime's per-run overhead, ~0.3 ms per layer at batch 1), 'onnx' (onnxruntime sessions on executionProviders.trunk), 'auto': native when the addon is built, the model's widths are multiples of 8 and executionProviders.trunk is ['cpu']. The embedding and the LM head always run in onnxruntime; a 'native' that cannot be used falls back to onnx with a warning."),
  expertThreads: int(1).default(1).describe('Intra-op threads of each expert worker\'s ONNX Runtime sessions.'),
  executionProviders: z
    .strictObject({
      trunk: ProviderList.describe('Execution providers of the trunk sessions (attention, embedding, LM head), in order of preference.'),
      experts: ProviderList.describe("Execution providers of the expert workers' onnxruntime kernels (dense, structured, int8, int4), in order of preference."),
    })
    .prefault({})
    .describe("onnxruntime execution providers: 'cpu', 'webgpu' (ships with onnxruntime-node; needs a GPU adapter, e.g. Vulkan), 'cuda' and 'tensorrt' (need onnxruntime-node's GPU libraries, which this project does not install). When a list cannot start, its sessions run on the CPU and the gateway logs why once."),
});

const AllocatorSchema = z.strictObject({
  mmapThresholdBytes: int(0, 32 * 1024 * 1024)
    .nullable()
    .default(128 * 1024)
    .describe("glibc malloc: blocks of at least this many bytes are mmapped and returned to the system when freed (mallopt M_MMAP_THRESHOLD, which also stops glibc raising the threshold by itself). Keeps onnxruntime's step-sized buffers from fragmenting per-thread arenas (resident memory creeping under load); null leaves glibc's default. Needs the native addon (built by npm ci)."),
});

const ExpertsSchema = z.strictObject({
  execution: z
    .enum(['workers', 'in-process'])
    .default('workers')
    .describe("Where the experts run. 'workers': the Piscina worker pool, each worker holding the experts its placement gives it (live placement changes and rebalancing, crash isolation, scale-out over NATS, per-expert kernel choice, onnxruntime execution providers). 'in-process': every expert in the gateway process on a compute team of native threads that also runs the trunk — no hand-off between threads inside a step, fastest on one machine (bench/RESULTS.md: decode steps 1.5-2x at batch 1-32 on 2 cores); fp32 dense-native kernel only, one fixed placement."),
  teamThreads: int(1, 256)
    .nullable()
    .default(null)
    .describe("experts.execution 'in-process': threads of the compute team, the gateway's main thread included; null: the machine's cores (os.availableParallelism())."),
  kernel: z
    .enum(['auto', 'dense', 'dense-native', 'int8', 'int4', 'sparse'])
    .default('auto')
    .describe("Expert FFN kernel: 'auto' times the exact kernels (onnxruntime dense or structured, the native dense-native, and sparse for sparse enough experts) per expert at load and keeps the fastest that matches the reference; 'dense', 'dense-native' or 'sparse' force one; 'int8'/'int4' (quantized weights: outputs change) only when set here."),
  sparseMinSparsity: z
    .number()
    .min(0)
    .max(1)
    .default(0.5)
    .describe("'auto' tries the native sparse kernel only on experts with at least this fraction of zero weights."),
  trialMs: z
    .number()
    .min(0)
    .max(1000)
    .default(2)
    .describe("'auto': milliseconds each candidate kernel is timed per batch size (1 and 8 tokens) when an expert loads."),
  maxResidentPerWorker: int(1)
    .nullable()
    .default(null)
    .describe('Most experts a worker keeps loaded; others it hosts are loaded on demand, least recently used released first. null keeps all.'),
  overlapMinTokens: int(2)
    .nullable()
    .default(16)
    .describe("Steps with at least this many tokens (and two or more sequences) run as two micro-batches, so that the main thread runs one half's attention while the workers run the other half's experts (two-batch overlap; outputs unchanged; only without a capacity factor). null: off. On 2 cores with 2 workers (native trunk) decode steps measured 0.74x at batch 8, 0.82x at 12, 1.24x at 16 and 1.18x at 32 (bench/trunk.ts in bench/RESULTS.md), hence 16."),
  workerScheduling: z
    .enum(['batch', 'normal'])
    .default('batch')
    .describe("Linux scheduling policy of the expert worker threads: 'batch' (SCHED_BATCH: a worker woken for a layer does not preempt the main thread on its core; +3-6 % tokens/s at 8 and 32 clients on 2 cores, bench/RESULTS.md) or 'normal' (SCHED_OTHER, the default policy). No privileges needed; elsewhere than Linux the threads keep the default."),
  channel: z
    .enum(['shared-memory', 'tasks'])
    .default('shared-memory')
    .describe("How a layer's expert batches reach the workers: 'shared-memory' (SharedArrayBuffer + Atomics, no message per layer) or 'tasks' (one Piscina task per worker per layer)."),
});

/** Default of telemetry.exportTimeoutMs (also used where a telemetry config is built by hand without it). */
export const DEFAULT_EXPORT_TIMEOUT_MS = 500;

const TelemetrySchema = z.strictObject({
  exporter: z
    .enum(['none', 'otlp', 'jsonl'])
    .default('none')
    .describe("Where traces and metrics go: 'none', 'otlp' (OTLP over HTTP) or 'jsonl' (JSON lines)."),
  otlpEndpoint: z
    .url()
    .nullable()
    .default(null)
    .describe("OTLP/HTTP collector base URL for exporter 'otlp'; null uses the exporter's default (localhost:4318)."),
  loadTraceFile: z
    .string()
    .min(1)
    .nullable()
    .default(null)
    .describe('File the per-step expert load trace is appended to (JSON lines); null writes none.'),
  exportTimeoutMs: int(1, 60_000)
    .default(DEFAULT_EXPORT_TIMEOUT_MS)
    .describe('Longest one OTLP export may take, retries included (OTLP\'s default is 10000; under 800 a refused connection is not retried, the next export tries again); it bounds how long shutdown waits for a collector that is down.'),
});

const MiB = 2 ** 20;

const PrefixCacheSchema = z.strictObject({
  blockTokens: int(1, 4096)
    .default(16)
    .describe('Prompt tokens per prefix-cache block: prompt prefixes are cached and reused in whole blocks.'),
  maxBytes: int(0)
    .default(64 * MiB)
    .describe('Most bytes of cached key/value states (LRU, least recently used evicted first); 0 disables the prefix cache.'),
});

const ResponseCacheSchema = z.strictObject({
  maxEntries: int(0)
    .default(1024)
    .describe('Most responses kept for identical deterministic requests (LRU); 0 disables the response cache.'),
  maxBytes: int(0)
    .default(16 * MiB)
    .describe('Most bytes (serialised size) the response cache holds; 0 disables the response cache.'),
});

const KvPoolSchema = z.strictObject({
  maxBytes: int(0)
    .default(64 * MiB)
    .describe('Most bytes of finished requests\' key/value arrays kept for new requests (so that a busy gateway does not allocate, and garbage-collect, a cache per request); 0 disables the pool.'),
});

const CacheSchema = z.strictObject({
  prefix: PrefixCacheSchema.prefault({}).describe('Reuse of prompt-prefix key/value states across requests (skips prefill).'),
  response: ResponseCacheSchema.prefault({}).describe('Answers identical greedy or seeded requests from memory.'),
  kvPool: KvPoolSchema.prefault({}).describe('Key/value arrays of finished requests, reused by new ones.'),
});

const PlacementSchema = z.strictObject({
  maxExpertsPerWorker: int(1)
    .nullable()
    .default(null)
    .describe('Memory budget: most experts (all layers together) one worker may hold; placements over it get 422 and the rebalancer stays within it; null: no limit.'),
  minSplitRows: int(1)
    .default(32)
    .describe("A replicated expert's batch is split over its hosts only in parts of at least this many rows (smaller batches run whole)."),
});

const AdminSchema = z.strictObject({
  token: z
    .string()
    .min(1)
    .nullable()
    .default(null)
    .describe('Bearer token required by the /admin routes (env SWITCHYARD_ADMIN_TOKEN overrides); null turns the admin routes off (404).'),
  maxWorkers: int(1)
    .nullable()
    .default(null)
    .describe('Most expert workers a placement may use (new ones start on demand); null: the larger of the starting workers and the CPU cores.'),
  rebalanceWindowSeconds: int(1, 3600)
    .default(60)
    .describe('Seconds of recent load that POST /admin/rebalance and automatic rebalancing plan from.'),
  autoRebalance: z.boolean().default(false).describe('Rebalance automatically when the recent balancedness falls below autoRebalanceThreshold.'),
  autoRebalanceIntervalSeconds: int(1)
    .default(60)
    .describe('How often automatic rebalancing looks at the load, in seconds.'),
  autoRebalanceThreshold: z
    .number()
    .min(0)
    .max(1)
    .default(0.8)
    .describe('Automatic rebalancing acts when the current placement\'s predicted overall balancedness (mean/max worker load) is below this.'),
  autoRebalanceMinTokens: int(1)
    .default(1000)
    .describe('Automatic rebalancing waits until the window holds at least this many routed tokens.'),
  maxTraceBytes: int(1)
    .default(32 * 2 ** 20)
    .describe('Largest load trace (JSONL) POST /admin/plan accepts, in bytes (the dashboard\'s capacity planner; larger ones get 413).'),
});

const CorsSchema = z.strictObject({
  origins: z
    .array(z.string().min(1))
    .default([])
    .describe('Browser origins allowed to call the API cross-origin (e.g. "https://chat.example.com"); empty turns CORS off.'),
});

const ShutdownSchema = z.strictObject({
  graceMs: int(0)
    .default(30000)
    .describe('On SIGTERM/SIGINT, milliseconds requests in flight may take to finish before they are ended with an error (streams get an error event).'),
});

const OpenAiSchema = z.strictObject({
  strictModel: z
    .boolean()
    .default(false)
    .describe("false: the /v1 routes serve every request with the loaded model whatever its `model` field says (as TGI does); true: a model id other than the served one gets 404."),
});

const NatsSchema = z.strictObject({
  url: z
    .string()
    .min(1)
    .nullable()
    .default(null)
    .describe('NATS server(s) of the expert cluster, e.g. nats://10.0.0.5:4222 (comma-separated for a NATS cluster); null: every expert runs in this gateway. `switchyard serve --nats URL` sets it.'),
  cluster: z
    .string()
    .regex(/^[A-Za-z0-9_-]{1,64}$/, 'letters, digits, _ or -')
    .default('switchyard')
    .describe('Cluster name: the prefix of the expert subjects and the JetStream key-value bucket holding the cluster placement. Gateways and hosts of one cluster use the same name.'),
  placementFile: z
    .string()
    .min(1)
    .nullable()
    .default(null)
    .describe('JSON cluster placement ({"assignments": [{"layer", "expert", "hosts": [host ids, "gateway" for this gateway]}]}) that the gateway publishes at start; null uses the one already in the bucket.'),
  token: z.string().min(1).nullable().default(null).describe('NATS token (nats-server --auth); also $SWITCHYARD_NATS_TOKEN.'),
  credentialsFile: z.string().min(1).nullable().default(null).describe('NATS credentials file (JWT + nkey seed) for decentralized auth.'),
  tls: z
    .strictObject({
      caFile: z.string().min(1).nullable().default(null).describe('PEM file of the CA that signed nats-server\'s certificate (null: the system CAs).'),
      certFile: z.string().min(1).nullable().default(null).describe('PEM client certificate, when nats-server verifies clients (tls verify).'),
      keyFile: z.string().min(1).nullable().default(null).describe('PEM key of the client certificate.'),
    })
    .prefault({})
    .describe('TLS to nats-server: used whenever the server offers it; these files name a private CA and a client certificate.'),
  requestTimeoutMs: int(1).default(2000).describe('How long the gateway waits for a host to answer one expert batch before it tries another replica.'),
  hostTimeoutMs: int(100)
    .default(6000)
    .describe('A host that has not renewed its announcement for this long is gone: gateways take it out of the cluster placement (experts left without a host go to the live hosts, or to the gateway). Hosts renew every third of it.'),
  attempts: int(1, 10).default(3).describe('Tries per expert batch across the replicas before the local fallback (or an error).'),
  localFallback: z
    .boolean()
    .default(true)
    .describe('true: an expert no host answers for is served on the gateway\'s own workers for a while (then hosts are asked again); false: the scheduler step that needed it fails, its requests get 503 naming the expert.'),
});

export const ConfigSchema = z
  .strictObject({
    host: z.string().min(1).default('127.0.0.1').describe('Interface to listen on (0.0.0.0 listens on all).'),
    port: int(0, 65535).default(8080).describe('TCP port to listen on; 0 picks a free ephemeral port.'),
    model: z
      .string()
      .min(1)
      .default('models/switchyard-moe')
      .describe('Model package folder; a relative path resolves against the working directory.'),
    workers: int(1).nullable().default(null).describe('Expert worker threads; null uses one per CPU core.'),
    placementFile: z
      .string()
      .min(1)
      .nullable()
      .default(null)
      .describe('JSON expert placement file; null places experts round-robin over the workers.'),
    routing: RoutingSchema.prefault({}).describe('Router behaviour at inference time.'),
    limits: LimitsSchema.prefault({}).describe('Request and scheduling limits.'),
    onnx: OnnxSchema.prefault({}).describe('ONNX Runtime settings.'),
    allocator: AllocatorSchema.prefault({}).describe('Process-wide memory allocator settings (applied when the server starts).'),
    experts: ExpertsSchema.prefault({}).describe('Where the experts run (worker pool or in-process compute team) and how each expert FFN is computed.'),
    telemetry: TelemetrySchema.prefault({}).describe('OpenTelemetry and load-trace output.'),
    cache: CacheSchema.prefault({}).describe('Prefix (key/value) and response caches.'),
    placement: PlacementSchema.prefault({}).describe('Expert placement limits and dispatch.'),
    admin: AdminSchema.prefault({}).describe('Token-protected admin API: live placement changes, load, rebalancing.'),
    shutdown: ShutdownSchema.prefault({}).describe('Graceful shutdown: stop accepting, let requests in flight finish.'),
    openai: OpenAiSchema.prefault({}).describe('The OpenAI-compatible routes (/v1/*).'),
    cors: CorsSchema.prefault({}).describe('Cross-origin (CORS) access for browser front ends; off by default.'),
    nats: NatsSchema.prefault({}).describe('Scale-out: experts on expert hosts of other machines, over NATS (docs/scale-out.md).'),
  })
  .superRefine((config, ctx) => {
    if (config.experts.execution === 'in-process') {
      const conflicts: Array<[string[], boolean, string]> = [
        [['nats', 'url'], config.nats.url !== null, 'scale-out over NATS places experts on worker threads and expert hosts'],
        [['experts', 'kernel'], !['auto', 'dense-native'].includes(config.experts.kernel), "in-process experts run the fp32 dense-native kernel; other kernels run in workers"],
        [['onnx', 'executionProviders', 'experts'], config.onnx.executionProviders.experts.some((p) => p !== 'cpu'), 'in-process experts run on the CPU; execution providers apply to workers'],
        [['experts', 'maxResidentPerWorker'], config.experts.maxResidentPerWorker !== null, 'in-process experts are all resident'],
        [['workers'], config.workers !== null, 'in-process experts have no worker threads (experts.teamThreads sizes the compute team)'],
        [['placementFile'], config.placementFile !== null, 'in-process experts have one fixed placement'],
      ];
      for (const [path, conflict, why] of conflicts) {
        if (conflict) ctx.addIssue({ code: 'custom', path, message: `cannot be set with experts.execution 'in-process' (${why}); set experts.execution to 'workers' or leave this at its default` });
      }
    }
    if (config.limits.defaultMaxNewTokens > config.limits.maxNewTokens) {
      ctx.addIssue({
        code: 'custom',
        path: ['limits', 'defaultMaxNewTokens'],
        message: `must not exceed limits.maxNewTokens (${config.limits.maxNewTokens})`,
      });
    }
  })
  .describe('Switchyard gateway configuration.');

const SECTIONS: Record<string, { shape: object }> = {
  '': ConfigSchema,
  routing: RoutingSchema,
  limits: LimitsSchema,
  onnx: OnnxSchema,
  'onnx.executionProviders': OnnxSchema.shape.executionProviders.unwrap(),
  allocator: AllocatorSchema,
  experts: ExpertsSchema,
  telemetry: TelemetrySchema,
  cache: CacheSchema,
  'cache.prefix': PrefixCacheSchema,
  'cache.response': ResponseCacheSchema,
  'cache.kvPool': KvPoolSchema,
  placement: PlacementSchema,
  admin: AdminSchema,
  shutdown: ShutdownSchema,
  openai: OpenAiSchema,
  cors: CorsSchema,
  nats: NatsSchema,
  'nats.tls': NatsSchema.shape.tls.unwrap(),
};

export type Config = z.infer<typeof ConfigSchema>;
/** What a config file or an override may hold: every field optional. */
export type ConfigInput = z.input<typeof ConfigSchema>;

/** Configuration that fails validation; the message names every offending field and where its value came from. */
export class ConfigError extends Error {
  override readonly name = 'ConfigError';
  constructor(
    message: string,
    readonly issues: Array<{ path: string; message: string; source: string }> = [],
  ) {
    super(message);
  }
}

export interface LoadConfigOptions {
  /** JSON config file; null reads none. Default: $SWITCHYARD_CONFIG, else config/default.json if present. */
  file?: string | null;
  /** Environment to read overrides from (default process.env). */
  env?: Record<string, string | undefined>;
  /** Highest-precedence values (CLI flags); undefined fields are ignored. */
  overrides?: ConfigInput;
  /** Directory relative paths resolve against (default process.cwd()). */
  cwd?: string;
}

export const DEFAULT_CONFIG_FILE = 'config/default.json';

/** Environment variables that override config fields. */
export const ENV_OVERRIDES: ReadonlyArray<{ name: string; path: readonly string[]; kind: 'string' | 'int' | 'intOrAuto' }> = [
  { name: 'HOST', path: ['host'], kind: 'string' },
  { name: 'PORT', path: ['port'], kind: 'int' },
  { name: 'SWITCHYARD_MODEL', path: ['model'], kind: 'string' },
  { name: 'SWITCHYARD_WORKERS', path: ['workers'], kind: 'intOrAuto' },
  { name: 'SWITCHYARD_ADMIN_TOKEN', path: ['admin', 'token'], kind: 'string' },
  { name: 'SWITCHYARD_NATS_TOKEN', path: ['nats', 'token'], kind: 'string' },
];

type Json = Record<string, unknown>;

const isPlainObject = (value: unknown): value is Json =>
  typeof value === 'object' && value !== null && !Array.isArray(value);

function deepMerge(base: Json, over: Json): Json {
  const out: Json = { ...base };
  for (const [key, value] of Object.entries(over)) {
    if (value === undefined) continue;
    out[key] = isPlainObject(value) && isPlainObject(out[key]) ? deepMerge(out[key] as Json, value) : value;
  }
  return out;
}

function getPath(obj: unknown, keys: readonly PropertyKey[]): unknown {
  let cur = obj;
  for (const key of keys) {
    if (Array.isArray(cur) && typeof key === 'number') cur = cur[key];
    else if (isPlainObject(cur)) cur = cur[key as string];
    else return undefined;
  }
  return cur;
}

function setPath(obj: Json, keys: readonly string[], value: unknown): void {
  let cur = obj;
  for (const key of keys.slice(0, -1)) {
    if (!isPlainObject(cur[key])) cur[key] = {};
    cur = cur[key] as Json;
  }
  cur[keys[keys.length - 1]] = value;
}

function readConfigFile(file: string, origin: string): Json {
  let text: string;
  try {
    text = readFileSync(file, 'utf8');
  } catch (err) {
    throw new ConfigError(`cannot read config file ${file} (${origin}): ${(err as Error).message}`);
  }
  let parsed: unknown;
  try {
    parsed = JSON.parse(text);
  } catch (err) {
    throw new ConfigError(`config file ${file} is not valid JSON: ${(err as Error).message}`);
  }
  if (!isPlainObject(parsed)) {
    throw new ConfigError(`config file ${file} must hold a JSON object, e.g. {"port": 8080}`);
  }
  return parsed;
}

function envLayer(env: Record<string, string | undefined>): { values: Json; names: Map<string, string> } {
  const values: Json = {};
  const names = new Map<string, string>();
  for (const { name, path: keys, kind } of ENV_OVERRIDES) {
    const raw = env[name]?.trim();
    if (raw === undefined || raw === '') continue;
    let value: unknown = raw;
    if (kind === 'intOrAuto' && raw.toLowerCase() === 'auto') value = null;
    else if (kind !== 'string' && Number.isFinite(Number(raw))) value = Number(raw);
    // Anything else stays a string, so the schema reports it as a type error naming the field.
    setPath(values, keys, value);
    names.set(keys.join('.'), name);
  }
  return { values, names };
}

const describeValue = (value: unknown): string => {
  const text = JSON.stringify(value) ?? String(value);
  return text.length > 60 ? `${text.slice(0, 57)}...` : text;
};

/** Load, merge and validate the configuration. Throws ConfigError with a message naming each bad field. */
export function loadConfig(options: LoadConfigOptions = {}): Config {
  const env = options.env ?? process.env;
  const cwd = options.cwd ?? process.cwd();

  let file: string | null = null;
  let fileOrigin = '';
  if (options.file !== undefined) {
    file = options.file;
    fileOrigin = 'given explicitly';
  } else if (env.SWITCHYARD_CONFIG) {
    file = env.SWITCHYARD_CONFIG;
    fileOrigin = 'from SWITCHYARD_CONFIG';
  } else if (existsSync(path.resolve(cwd, DEFAULT_CONFIG_FILE))) {
    file = DEFAULT_CONFIG_FILE;
    fileOrigin = 'default location';
  }
  const filePath = file === null ? null : path.resolve(cwd, file);
  const fileValues = filePath === null ? {} : readConfigFile(filePath, fileOrigin);
  const { values: envValues, names: envNames } = envLayer(env);
  const overrides = (options.overrides ?? {}) as Json;

  const merged = deepMerge(deepMerge(fileValues, envValues), overrides);
  const result = ConfigSchema.safeParse(merged);
  if (!result.success) {
    const sourceOf = (keys: PropertyKey[]): string => {
      if (getPath(overrides, keys) !== undefined) return 'command-line override';
      const envName = envNames.get(keys.join('.'));
      if (envName) return `environment variable ${envName}`;
      if (getPath(fileValues, keys) !== undefined) return `config file ${filePath}`;
      return 'default';
    };
    const issues = result.error.issues.flatMap((issue) => {
      if (issue.code === 'unrecognized_keys') {
        return issue.keys.map((key) => {
          const keys = [...issue.path, key];
          const known = Object.keys(SECTIONS[issue.path.join('.')]?.shape ?? {});
          return {
            path: keys.join('.'),
            message: `unknown field; known fields here: ${known.join(', ')}`,
            source: sourceOf(keys),
          };
        });
      }
      const value = getPath(merged, issue.path);
      const got = value === undefined ? '' : ` (got ${describeValue(value)})`;
      return [{ path: issue.path.join('.') || '(root)', message: `${issue.message}${got}`, source: sourceOf(issue.path) }];
    });
    const lines = issues.map((i) => `  - ${i.path}: ${i.message} [from ${i.source}]`);
    throw new ConfigError(`invalid configuration:\n${lines.join('\n')}`, issues);
  }

  const config = result.data;
  const resolve = (p: string | null) => (p === null ? null : path.resolve(cwd, p));
  return {
    ...config,
    model: path.resolve(cwd, config.model),
    placementFile: resolve(config.placementFile),
    telemetry: { ...config.telemetry, loadTraceFile: resolve(config.telemetry.loadTraceFile) },
  };
}

/** The number of expert workers to start: config.workers, or one per CPU core when it is null. */
export function resolveWorkers(config: Pick<Config, 'workers'>): number {
  return config.workers ?? Math.max(1, os.availableParallelism());
}

/** Where the experts run, for logs and benchmark records: "2 expert workers" or "in-process, compute team of 2 threads". */
export function describeExecution(config: Pick<Config, 'workers' | 'experts'>): string {
  return config.experts.execution === 'in-process'
    ? `in-process, compute team of ${config.experts.teamThreads ?? Math.max(1, os.availableParallelism())} threads`
    : `${resolveWorkers(config)} expert workers`;
}
