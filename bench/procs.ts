/**
 * Child processes of the benchmarks (llama-server, a gateway): started with their output in a log file, tracked, and
 * killed however the benchmark ends; readiness by polling GET /health; the peer's version.
 */
import { spawn, spawnSync, type ChildProcess } from 'node:child_process';
import { closeSync, openSync, readFileSync } from 'node:fs';
import { createServer } from 'node:net';
import path from 'node:path';

const REPO = path.join(import.meta.dirname, '..');
/** The llama.cpp build the benchmarks compare against (never fetched or built here). */
export const DEFAULT_PEER = path.resolve(REPO, '..', 'shared', 'peer', 'llama-server');

// Child processes: every one is tracked and killed however this process ends.

const children = new Set<ChildProcess>();

function killAll(signal: NodeJS.Signals): void {
  for (const child of children) if (child.exitCode === null && child.signalCode === null) child.kill(signal);
}

// 'exit' runs on process.exit (runCli), on a normal end and after an uncaught error: no orphan llama-server.
process.on('exit', () => killAll('SIGKILL'));

export interface Proc {
  name: string;
  child: ChildProcess;
  log: string;
  exited: Promise<void>;
}

/** Starts a child with its output in a log file (a pipe nobody reads would fill and stall it). */
export function startProc(name: string, command: string, args: string[], logFile: string, env: NodeJS.ProcessEnv = process.env): Proc {
  const fd = openSync(logFile, 'a');
  const child = spawn(command, args, { cwd: REPO, stdio: ['ignore', fd, fd], env });
  closeSync(fd);
  children.add(child);
  const exited = new Promise<void>((resolve) => child.once('exit', () => {
    children.delete(child);
    resolve();
  }));
  child.once('error', () => children.delete(child));
  return { name, child, log: logFile, exited };
}

export function logTail(file: string, lines = 15): string {
  try {
    return readFileSync(file, 'utf8').trimEnd().split('\n').slice(-lines).join('\n');
  } catch {
    return '(no log)';
  }
}

/** SIGTERM, then SIGKILL after `graceMs`. */
export async function stopProc(proc: Proc, graceMs = 10_000): Promise<void> {
  if (proc.child.exitCode !== null || proc.child.signalCode !== null) return;
  proc.child.kill('SIGTERM');
  const timer = setTimeout(() => proc.child.kill('SIGKILL'), graceMs);
  await proc.exited;
  clearTimeout(timer);
}

/** Polls GET url/health until 200 (llama-server answers 503 while loading); fails if the process exits first. */
export async function waitHealthy(proc: Proc, url: string, timeoutMs = 120_000): Promise<void> {
  const end = Date.now() + timeoutMs;
  while (Date.now() < end) {
    if (proc.child.exitCode !== null || proc.child.signalCode !== null) {
      throw new Error(`${proc.name} exited before it was ready (status ${proc.child.exitCode ?? proc.child.signalCode}); its log:\n${logTail(proc.log)}`);
    }
    try {
      const res = await fetch(`${url}/health`, { signal: AbortSignal.timeout(2_000), redirect: 'error' });
      await res.body?.cancel();
      if (res.ok) return;
    } catch {
      // not listening yet
    }
    await new Promise((resolve) => setTimeout(resolve, 200));
  }
  throw new Error(`${proc.name} was not ready after ${timeoutMs / 1000} s; its log:\n${logTail(proc.log)}`);
}

export function freePort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const server = createServer();
    server.once('error', reject);
    server.listen(0, '127.0.0.1', () => {
      const { port } = server.address() as { port: number };
      server.close(() => resolve(port));
    });
  });
}

/**
 * What llama-server says it is. The shared build reports "version: 0 (unknown)" (built outside a git checkout),
 * so the release named in the README beside it is used then.
 */
export function peerVersion(binary: string): string {
  const run = spawnSync(binary, ['--version'], { encoding: 'utf8', timeout: 10_000 });
  const line = `${run.stdout ?? ''}\n${run.stderr ?? ''}`.split('\n').find((l) => l.startsWith('version:'))?.trim();
  if (line && !line.includes('unknown')) return line;
  try {
    const readme = readFileSync(path.join(path.dirname(binary), 'README.md'), 'utf8');
    const release = /release (b\d+) \(commit ([0-9a-f]{7})/.exec(readme);
    if (release) return `${release[1]} (${release[2]}, from the README beside it)`;
  } catch {
    // no README
  }
  return line ?? 'version unknown';
}
