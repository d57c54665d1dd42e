/**
 * The gateway process of bench/soak.ts: started by it with `node --expose-gc --import tsx`, so that its memory is
 * the gateway's alone (the load client runs in the parent). Speaks over the IPC channel:
 *
 * - parent → child: `{ type: 'start', config }` (a parsed Config), `{ type: 'sample' }`, `{ type: 'close' }`;
 * - child → parent: `{ type: 'ready', url }`, `{ type: 'sample', memory }` (process.memoryUsage() in bytes after
 *   forced full GCs), `{ type: 'error', message }`, and exits 0 after close.
 */
import type { Config } from '../src/config.ts';
import type { RunningServer } from '../src/serve.ts';
import { startGateway } from './servers.ts';

export type ToGateway = { type: 'start'; config: Config } | { type: 'sample' } | { type: 'close' };
export type FromGateway =
  | { type: 'ready'; url: string }
  | { type: 'sample'; memory: NodeJS.MemoryUsage }
  | { type: 'error'; message: string };

const gc = (globalThis as { gc?: () => void }).gc;

/** Full GCs with turns of the event loop between them, so that finalizers (undici's request registry) run too. */
async function collect(): Promise<void> {
  for (let i = 0; i < 3; i++) {
    gc!();
    await new Promise((resolve) => setImmediate(resolve));
  }
}

function send(message: FromGateway): void {
  process.send!(message);
}

if (!process.send) throw new Error('bench/soak-gateway.ts is started by bench/soak.ts (it needs an IPC channel)');

let server: RunningServer | undefined;
process.on('message', (message: ToGateway) => {
  const handle = async () => {
    if (message.type === 'start') {
      if (!gc) throw new Error('start this process with --expose-gc');
      server = await startGateway(message.config);
      send({ type: 'ready', url: server.url });
    } else if (message.type === 'sample') {
      await collect();
      send({ type: 'sample', memory: process.memoryUsage() });
    } else if (message.type === 'close') {
      await server?.close();
      process.disconnect();
    }
  };
  handle().catch((err: unknown) => send({ type: 'error', message: (err as Error).message ?? String(err) }));
});
