/**
 * In-process gateways for the benchmarks that start their own (bench/batching.ts, bench/prefix-cache.ts,
 * bench/skewed.ts): configured as `switchyard serve` reads it, on loopback with an ephemeral port, with limits that
 * leave room for the benchmark's load.
 */
import type { Config, ConfigInput } from '../src/config.ts';
import { createLogger, type Logger } from '../src/log.ts';
import { startServer, type RunningServer } from '../src/serve.ts';
import { createClient, type Client } from './clients.ts';

/** Overrides for a gateway on 127.0.0.1, ephemeral port; `model` and `workers` undefined: the configured ones. */
export function loopbackOverrides(model: string | undefined, workers: number | undefined): ConfigInput {
  return { host: '127.0.0.1', port: 0, model, workers };
}

/**
 * Room for the whole load: every client may wait in the queue, may ask for `maxTokens`, and (given `timeoutMs`, the
 * client's limit per request) the server must not time a request out before the client does (the server's
 * deadline counts queueing too). Each limit is the configured one raised where the load needs more.
 */
export function loadLimits(base: Config['limits'], load: { maxTokens: number; clients: number; timeoutMs?: number }) {
  return {
    maxNewTokens: Math.max(base.maxNewTokens, load.maxTokens),
    queueDepth: Math.max(base.queueDepth, load.clients),
    ...(load.timeoutMs === undefined ? {} : { requestTimeoutMs: Math.max(base.requestTimeoutMs, load.timeoutMs) }),
  };
}

let logger: Logger | undefined;

/** Starts a gateway in this process; log level $LOG_LEVEL, default warn. */
export function startGateway(config: Config): Promise<RunningServer> {
  logger ??= createLogger({ level: process.env.LOG_LEVEL ?? 'warn' });
  return startServer(config, { logger, closeGraceMs: 2_000 });
}

export interface Gateway<N extends string> {
  name: N;
  url: string;
  /** A TGI client of this gateway. */
  client: Client;
}

/**
 * Starts the gateways in the order given, each announced on stderr ("starting the NAME gateway (ABOUT, model M)",
 * ABOUT from `about`, e.g. the setting the benchmark varies), with TGI clients that give up on a request after
 * `timeoutMs`; runs `body` on them and closes every one that started, whether `body` returns or throws.
 */
export async function withGateways<N extends string, T>(
  configs: Record<N, Config>,
  options: { about: (config: Config) => string; timeoutMs: number },
  body: (started: Array<Gateway<N>>) => Promise<T>,
): Promise<T> {
  const servers: RunningServer[] = [];
  try {
    const started: Array<Gateway<N>> = [];
    for (const [name, config] of Object.entries(configs) as Array<[N, Config]>) {
      process.stderr.write(`starting the ${name} gateway (${options.about(config)}, model ${config.model})\n`);
      const server = await startGateway(config);
      servers.push(server);
      started.push({ name, url: server.url, client: await createClient('tgi', server.url, { timeoutMs: options.timeoutMs }) });
    }
    return await body(started);
  } finally {
    for (const server of servers) await server.close();
  }
}
