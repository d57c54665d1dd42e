/**
 * Start the HTTP gateway: load the engine, build the app, listen; and its graceful shutdown (close()). No signal
 * handling here (the CLI owns that).
 */
import { getRequestListener } from '@hono/node-server';
import type { SpanExporter } from '@opentelemetry/sdk-trace-base';
import { createServer, type IncomingMessage, type Server, type ServerResponse } from 'node:http';
import type { AddressInfo, Socket } from 'node:net';
import { tuneAllocator } from './allocator.ts';
import { describeExecution, resolveWorkers, type Config } from './config.ts';
import type { GenerationService } from './engine/types.ts';
import type { StepObserver } from './engine/scheduler.ts';
import { createTelemetry } from './telemetry/index.ts';
import { instrument } from './server/instrumented-service.ts';
import { basename } from 'node:path';
import { log, type Logger } from './log.ts';
import { createApp } from './server/app.ts';
import type { ErrorBody } from './server/errors.ts';
import { clusterAdminOf, placementAdminOf } from './server/routes/admin.ts';
import type { TracePlanner } from './server/routes/admin-insights.ts';

export type EngineLoader = (config: Config, observer?: StepObserver) => Promise<GenerationService>;

export interface StartServerOptions {
  /** Default: `loadEngine` from src/engine/engine.ts (imported only when needed). Tests pass a fake. */
  loadEngine?: EngineLoader;
  logger?: Logger;
  /** Overrides config.shutdown.graceMs: how long close() lets requests in flight finish, in milliseconds. */
  closeGraceMs?: number;
  /** The capacity planner behind POST /admin/plan (the CLI passes src/planning's; offline tools stay out of here). */
  planner?: TracePlanner | null;
  /** Tests: receives every span as it ends (e.g. an InMemorySpanExporter), in place of the config's span export. */
  spanExporter?: SpanExporter;
}

/** What happened to the requests that were in flight when close() began. */
export interface ShutdownReport {
  /** Finished on their own within the grace period. */
  finished: number;
  /**
   * Still running when the grace period ran out: streams got a terminal error event, other requests a 503
   * `overloaded`, and connections still open after that were closed.
   */
  cut: number;
}

export interface RunningServer {
  /** e.g. http://127.0.0.1:8080 */
  url: string;
  /** The port actually bound (the real one when config.port is 0). */
  port: number;
  /**
   * Graceful shutdown: stops accepting connections, answers requests that still arrive on open connections with
   * 503 `overloaded` (Connection: close), closes idle keep-alive connections, lets requests in flight finish for
   * up to the grace period (config.shutdown.graceMs, in ms), then ends what is left (see ShutdownReport), closes
   * the engine and telemetry. Calling it again returns the same promise. Never rejects for cut requests.
   */
  close(): Promise<ShutdownReport>;
}

/**
 * After the grace period, how long connections may stay open (the requests cut by the engine writing their error
 * event or 503) before they are closed regardless, in ms; it only matters for clients that do not read, or that
 * never finish sending a request.
 */
const CUT_FLUSH_MS = 5_000;

/** Resolves true when `promise` resolves within `ms` milliseconds, false otherwise. */
function within(promise: Promise<unknown>, ms: number): Promise<boolean> {
  let timer: NodeJS.Timeout | undefined;
  const timeout = new Promise<boolean>((resolve) => (timer = setTimeout(() => resolve(false), ms)));
  return Promise.race([promise.then(() => true), timeout]).finally(() => clearTimeout(timer));
}

const defaultLoader: EngineLoader = async (config, observer) => (await import('./engine/engine.ts')).loadEngine(config, observer);

function listen(server: Server, port: number, host: string): Promise<AddressInfo> {
  return new Promise((resolve, reject) => {
    const onError = (err: Error) => reject(err);
    server.once('error', onError);
    server.once('listening', () => {
      server.off('error', onError);
      resolve(server.address() as AddressInfo);
    });
    server.listen(port, host);
  });
}

const jsonError = (status: number, reason: string, body: ErrorBody): string => {
  const text = JSON.stringify(body);
  return `HTTP/1.1 ${status} ${reason}\r\nContent-Type: application/json\r\nContent-Length: ${Buffer.byteLength(text)}\r\n` +
    `Connection: close\r\n\r\n${text}`;
};

/**
 * Node's answer to a request it cannot parse (its default 'clientError' behaviour), with our JSON error body
 * instead of an empty one.
 */
function onClientError(err: NodeJS.ErrnoException, socket: Socket): void {
  const inFlight = (socket as Socket & { _httpMessage?: ServerResponse | null })._httpMessage;
  // Answer only when nothing of another response is on the wire yet, or the peer would read a corrupted stream.
  if (socket.writable && (!inFlight || !inFlight.headersSent)) {
    const answer = (() => {
      switch (err.code) {
        case 'HPE_HEADER_OVERFLOW':
          return jsonError(431, 'Request Header Fields Too Large', { error: 'the request headers are too large; send fewer or shorter headers', error_type: 'validation' });
        case 'HPE_CHUNK_EXTENSIONS_OVERFLOW':
          return jsonError(413, 'Payload Too Large', { error: 'the chunk extensions are too large', error_type: 'validation' });
        case 'ERR_HTTP_REQUEST_TIMEOUT':
          return jsonError(408, 'Request Timeout', { error: 'the request was not received in full in time', error_type: 'validation' });
        default:
          return jsonError(400, 'Bad Request', { error: `malformed HTTP request (${err.code ?? err.message}); send valid HTTP/1.1`, error_type: 'validation' });
      }
    })();
    socket.write(answer);
  }
  socket.destroy(err);
}

/**
 * Requests @hono/node-server cannot turn into a fetch Request (no Host header, a backslash in the path, a bad
 * absolute URL) would get an empty 400; give them the JSON error shape.
 */
function onRequestError(err: unknown): Response {
  const body: ErrorBody = {
    error: `malformed request: ${err instanceof Error ? err.message : String(err)}; send a Host header and a path like /generate`,
    error_type: 'validation',
  };
  return new Response(JSON.stringify(body), { status: 400, headers: { 'content-type': 'application/json', connection: 'close' } });
}

export async function startServer(config: Config, options: StartServerOptions = {}): Promise<RunningServer> {
  const logger = options.logger ?? log;
  // Before the engine loads: the threshold applies to blocks allocated after it is set.
  tuneAllocator(config.allocator, logger);
  const modelId = basename(config.model);
  const telemetry = createTelemetry(config.telemetry, {
    modelId,
    ...(options.spanExporter ? { spanExporter: options.spanExporter } : {}),
    onError: (err) => logger.warn('telemetry error', { err }),
  });
  let service: GenerationService;
  let admin: ReturnType<typeof placementAdminOf> = null;
  let cluster: ReturnType<typeof clusterAdminOf> = null;
  try {
    const loaded = await (options.loadEngine ?? defaultLoader)(config, telemetry.observer);
    admin = placementAdminOf(loaded);
    cluster = clusterAdminOf(loaded);
    service = instrument(loaded, telemetry, modelId);
    const engine = service;
    telemetry.observeCaches(() => engine.info().caches);
  } catch (err) {
    await telemetry.shutdown();
    throw err;
  }

  let shuttingDown = false;
  // Requests whose response has not closed yet (finished, or its connection gone), among those that arrived before
  // the shutdown began (later ones are refused at once); the shutdown waits for these.
  const inFlight = new Set<ServerResponse>();
  let onInFlightEmpty: (() => void) | null = null;
  // Responses not closed yet per connection, all of them (pipelined ones and refusals included).
  const openResponses = new Map<Socket, number>();

  /** Counts a request; during the shutdown, closes its connection once it is idle (after its last response). */
  const track = (req: IncomingMessage, res: ServerResponse) => {
    const socket = req.socket;
    openResponses.set(socket, (openResponses.get(socket) ?? 0) + 1);
    if (!shuttingDown) inFlight.add(res);
    res.once('close', () => {
      const left = (openResponses.get(socket) ?? 1) - 1;
      if (left > 0) openResponses.set(socket, left);
      else openResponses.delete(socket);
      if (inFlight.delete(res) && inFlight.size === 0) onInFlightEmpty?.();
      // A keep-alive connection left idle must not wait out its keepAliveTimeout (server.close() waits for every
      // connection). Not server.closeIdleConnections(): it also drops connections whose ended response is still
      // being flushed, or queued behind a pipelined one. Responses refused now say Connection: close, and node
      // closes those connections itself after writing them.
      if (shuttingDown && left === 0) setImmediate(() => openResponses.has(socket) || socket.destroy());
    });
  };

  let server: Server;
  let address: AddressInfo;
  try {
    const app = createApp(service, config, {
      logger, telemetry, admin, cluster, shuttingDown: () => shuttingDown, planner: options.planner,
    });
    const listener = getRequestListener(app.fetch, { hostname: config.host, errorHandler: onRequestError });
    // Node's own requireHostHeader check answers with an empty 400: the same check here, with the JSON shape.
    server = createServer({ requireHostHeader: false }, (req, res) => {
      if (req.headers.host === undefined && req.httpVersionMajor === 1 && req.httpVersionMinor >= 1) {
        const body: ErrorBody = { error: 'an HTTP/1.1 request needs a Host header', error_type: 'validation' };
        const text = JSON.stringify(body);
        res.writeHead(400, { 'content-type': 'application/json', 'content-length': Buffer.byteLength(text), connection: 'close' }).end(text);
        return;
      }
      void listener(req, res);
    });
    server.on('clientError', onClientError);
    server.on('request', track);
    address = await listen(server, config.port, config.host);
  } catch (err) {
    await service.close().catch((closeErr: unknown) => logger.error('engine close failed', { err: closeErr }));
    await telemetry.shutdown();
    throw err;
  }

  const host = address.family === 'IPv6' ? `[${address.address}]` : address.address;
  const url = `http://${host}:${address.port}`;
  logger.info('listening', {
    url, host: address.address, port: address.port, pid: process.pid, model: config.model, workers: resolveWorkers(config), experts: describeExecution(config),
  });

  const graceMs = options.closeGraceMs ?? config.shutdown.graceMs;
  let closing: Promise<ShutdownReport> | undefined;
  const close = () =>
    (closing ??= (async () => {
      shuttingDown = true;
      const started = inFlight.size;
      const allFinished = new Promise<void>((resolve) => (inFlight.size === 0 ? resolve() : (onInFlightEmpty = resolve)));
      // Stops accepting; node also closes the connections that are idle now.
      const listenerClosed = new Promise<void>((resolve) => server.close(() => resolve()));
      logger.info('shutting down', { url, grace_ms: graceMs, in_flight: started });

      await within(allFinished, graceMs);
      const cut = inFlight.size;
      if (cut > 0) logger.warn('shutdown grace period over, ending the requests still in flight', { grace_ms: graceMs, cut });
      // The engine rejects what it still queues or runs with ShuttingDownError: streams send it as a terminal error
      // event, other requests answer 503 overloaded (Connection: close).
      const engineClosed = service.close();
      // Connections still open after that (a client that does not read, a body or request never finished) are cut.
      if (!(await within(listenerClosed, CUT_FLUSH_MS))) server.closeAllConnections();
      await listenerClosed;
      await engineClosed;
      await telemetry.shutdown();
      const report: ShutdownReport = { finished: started - cut, cut };
      logger.info('closed', { url, ...report });
      return report;
    })());

  return { url, port: address.port, close };
}
