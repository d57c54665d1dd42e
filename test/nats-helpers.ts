/** A real nats-server for the scale-out tests: Debian's binary (test/ensure-deps.sh installs it), JetStream on. */
import { spawn, spawnSync, type ChildProcess } from 'node:child_process';
import { mkdtempSync } from 'node:fs';
import { createServer } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';

/** nats-server from PATH or Debian's /usr/sbin; test/ensure-deps.sh installs it. */
function natsServerBinary(): string {
  for (const candidate of ['nats-server', '/usr/sbin/nats-server']) {
    if (spawnSync(candidate, ['--version']).status === 0) return candidate;
  }
  throw new Error('nats-server is not installed: run `bash test/ensure-deps.sh` (it installs Debian\'s nats-server)');
}

export async function freePort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const server = createServer();
    server.listen(0, '127.0.0.1', () => {
      const { port } = server.address() as { port: number };
      server.close(() => resolve(port));
    });
    server.on('error', reject);
  });
}

/** Starts nats-server with JetStream on a free loopback port (plus `extraArgs`, e.g. --auth); resolves with its URL once it accepts connections. */
export async function startNats(extraArgs: string[] = []): Promise<{ url: string; process: ChildProcess }> {
  const port = await freePort();
  const store = mkdtempSync(join(tmpdir(), 'sy-nats-'));
  const child = spawn(natsServerBinary(), ['-a', '127.0.0.1', '-p', String(port), '-js', '-sd', store, ...extraArgs], { stdio: ['ignore', 'ignore', 'pipe'] });
  let log = '';
  child.stderr!.on('data', (d) => (log += d));
  const deadline = Date.now() + 10_000;
  while (!/Server is ready/.test(log)) {
    if (child.exitCode !== null || Date.now() > deadline) throw new Error(`nats-server did not start: ${log}`);
    await new Promise((r) => setTimeout(r, 50));
  }
  return { url: `nats://127.0.0.1:${port}`, process: child };
}

