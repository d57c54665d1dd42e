/** Start the HTTP gateway: load the engine, build the app, listen. No signal handling here (the CLI owns that). */
import { serve, type ServerType } from '@hono/node-server';
import type { AddressInfo } from 'node:net';
import { resolveWorkers, type Config } from './config.ts';
import type { GenerationService } from './engine/types.ts';
import type { StepObserver } from './engine/scheduler.ts';
import { createTelemetry } from './telemetry/index.ts';
import { instrument } from './server/instrumented-service.ts';
import { basename } from 'node:path';
import { log, type Logger } from './log.ts';
import { createApp } from './server/app.ts';
import { placementAdminOf } from './server/routes/admin.ts';

export type EngineLoader = (config: Config, observer?: StepObserver) => Promise<GenerationService>;

export interface StartServerOptions {
  /** Default: `loadEngine` from src/engine/engine.ts (imported only when needed). Tests pass a fake. */
  loadEngine?: EngineLoader;
  logger?: Logger;
  /** How long close() waits for in-flight requests before cutting their connections (default 10 s). */
  closeGraceMs?: number;
}

export interface RunningServer {
  /** e.g. http://127.0.0.1:8080 */
  url: string;
  /** The port actually bound (the real one when config.port is 0). */
  port: number;
  /** Stops accepting connections, lets in-flight requests finish (up to the grace period), then closes the engine. */
  close(): Promise<void>;
}

const defaultLoader: EngineLoader = async (config, observer) => (await import('./engine/engine.ts')).loadEngine(config, observer);

function listen(server: ServerType): Promise<AddressInfo> {
  return new Promise((resolve, reject) => {
    const onError = (err: Error) => reject(err);
    server.once('error', onError);
    server.once('listening', () => {
      server.off('error', onError);
      resolve(server.address() as AddressInfo);
    });
  });
}

function closeServer(server: ServerType, graceMs: number): Promise<void> {
  return new Promise((resolve) => {
    const http = server as import('node:http').Server;
    const timer = setTimeout(() => http.closeAllConnections?.(), graceMs);
    timer.unref();
    http.close(() => {
      clearTimeout(timer);
      resolve();
    });
    http.closeIdleConnections?.();
  });
}

export async function startServer(config: Config, options: StartServerOptions = {}): Promise<RunningServer> {
  const logger = options.logger ?? log;
  const modelId = basename(config.model);
  const telemetry = createTelemetry(config.telemetry, {
    modelId,
    onError: (err) => logger.warn('telemetry error', { err }),
  });
  let service: GenerationService;
  let admin: ReturnType<typeof placementAdminOf> = null;
  try {
    const loaded = await (options.loadEngine ?? defaultLoader)(config, telemetry.observer);
    admin = placementAdminOf(loaded);
    service = instrument(loaded, telemetry, modelId);
    const engine = service;
    telemetry.observeCaches(() => engine.info().caches);
  } catch (err) {
    await telemetry.shutdown();
    throw err;
  }

  let server: ServerType;
  let address: AddressInfo;
  try {
    const app = createApp(service, config, { logger, telemetry, admin });
    server = serve({ fetch: app.fetch, hostname: config.host, port: config.port });
    address = await listen(server);
  } catch (err) {
    await service.close().catch((closeErr: unknown) => logger.error('engine close failed', { err: closeErr }));
    await telemetry.shutdown();
    throw err;
  }

  const host = address.family === 'IPv6' ? `[${address.address}]` : address.address;
  const url = `http://${host}:${address.port}`;
  logger.info('listening', { url, host: address.address, port: address.port, model: config.model, workers: resolveWorkers(config) });

  let closing: Promise<void> | undefined;
  const close = () =>
    (closing ??= (async () => {
      await closeServer(server, options.closeGraceMs ?? 10_000);
      await service.close();
      await telemetry.shutdown();
      logger.info('closed', { url });
    })());

  return { url, port: address.port, close };
}
