/**
 * Dependencies point one way (shared DESIGN.md, "Seams"): router/ and src/format/ (pure math, file formats) ←
 * src/placement/ (pure planning) ← experts/ (expert runtime: pool, worker, kernels, remote hosts) ← src/engine/ ←
 * src/server/. Offline tools (src/pruning, src/convert, src/eval, src/planning) sit beside the engine and use it;
 * nothing at run time imports them. The expert worker reaches nothing above the expert runtime. Checked on the
 * import statements of every source file, so a new cycle fails here with the offending line.
 */
import { readdirSync, readFileSync, statSync } from 'node:fs';
import path from 'node:path';
import { describe, expect, it } from 'vitest';

const ROOT = path.join(import.meta.dirname, '..');

/** Lower ranks are lower layers; a file may import its own rank or lower. Utilities (log, config, progress) are rank 0. */
const LAYERS: Array<[prefix: string, rank: number]> = [
  ['router/', 0], ['src/format/', 0], ['src/log.ts', 0], ['src/progress.ts', 0],
  ['src/placement/', 1],
  ['experts/', 2],
  ['src/engine/', 3], ['src/telemetry/', 3], ['src/config.ts', 0],
  ['src/pruning/', 4], ['src/convert/', 4], ['src/eval/', 4], ['src/planning/', 4],
  ['src/server/', 5], ['src/serve.ts', 5], ['src/allocator.ts', 5], ['src/expert-host.ts', 5],
  ['src/cli.ts', 6],
];
const OFFLINE = ['src/pruning/', 'src/convert/', 'src/eval/', 'src/planning/'];

function rankOf(file: string): number | null {
  const hit = LAYERS.filter(([prefix]) => file === prefix || file.startsWith(prefix)).sort((a, b) => b[0].length - a[0].length)[0];
  return hit ? hit[1] : null;
}

function sources(dir: string): string[] {
  return readdirSync(path.join(ROOT, dir)).flatMap((name) => {
    const rel = path.join(dir, name);
    if (statSync(path.join(ROOT, rel)).isDirectory()) return name === 'node_modules' ? [] : sources(rel);
    return name.endsWith('.ts') ? [rel] : [];
  });
}

/** Every relative import of a file (static, dynamic and type-only), as repository paths. */
function importsOf(file: string): string[] {
  const text = readFileSync(path.join(ROOT, file), 'utf8');
  return [...text.matchAll(/(?:from|import)\s*\(?\s*'(\.{1,2}\/[^']+)'/g)].map((m) => path.normalize(path.join(path.dirname(file), m[1])));
}

const files = ['router', 'experts', 'src'].flatMap(sources);

describe('module layering', () => {
  it('knows the layer of every source file', () => {
    expect(files.filter((f) => rankOf(f) === null)).toEqual([]);
  });

  it('has no import from a lower layer to a higher one', () => {
    const upward = files.flatMap((file) => importsOf(file)
      .filter((target) => rankOf(target) !== null && rankOf(target)! > rankOf(file)!)
      .map((target) => `${file} -> ${target}`));
    expect(upward).toEqual([]);
  });

  it('keeps the offline tools out of the runtime (only the CLI and the tools themselves import them)', () => {
    const runtime = files.filter((f) => !OFFLINE.some((o) => f.startsWith(o)) && f !== 'src/cli.ts');
    const offending = runtime.flatMap((file) => importsOf(file).filter((t) => OFFLINE.some((o) => t.startsWith(o))).map((t) => `${file} -> ${t}`));
    expect(offending).toEqual([]);
  });

  it('lets the expert worker reach only the expert runtime and the formats below it', () => {
    const seen = new Set<string>();
    const queue = ['experts/worker.ts'];
    while (queue.length > 0) {
      const file = queue.pop()!;
      if (seen.has(file)) continue;
      seen.add(file);
      queue.push(...importsOf(file).filter((t) => t.endsWith('.ts')));
    }
    expect([...seen].filter((f) => rankOf(f)! > 2).sort()).toEqual([]);
  });
});
