// Builds the native addons (experts/kernels/native: the sparse and dense expert kernels, the trunk's layer and
// attention kernels, and the malloc tuning of src/allocator.ts) with node-gyp; run by the root package's `install`
// script, so `npm ci` compiles them. Never fails the install: without a compiler or headers the addons are simply
// missing, the native expert kernels are reported unavailable (never chosen), the trunk runs in onnxruntime and
// attention in its TypeScript twin, and the gateway logs both and that it could not tune malloc.
// SWITCHYARD_NATIVE=off skips the build. Output: build.log.
import { spawnSync } from 'node:child_process';
import { existsSync, writeFileSync } from 'node:fs';
import path from 'node:path';

const here = import.meta.dirname;
const logFile = path.join(here, 'build.log');

if ((process.env.SWITCHYARD_NATIVE ?? '').toLowerCase() === 'off') {
  writeFileSync(logFile, 'skipped: SWITCHYARD_NATIVE=off\n');
  console.log('switchyard: native addons build skipped (SWITCHYARD_NATIVE=off)');
  process.exit(0);
}

// npm tells scripts where its bundled node-gyp is; otherwise look next to this node's npm.
const candidates = [
  process.env.npm_config_node_gyp,
  path.join(path.dirname(process.execPath), '..', 'lib', 'node_modules', 'npm', 'node_modules', 'node-gyp', 'bin', 'node-gyp.js'),
].filter((p) => p && existsSync(p));
const args = ['rebuild'];
// Use the headers installed with this node (Debian's nodejs-dev, or an official tarball) instead of downloading them.
const prefix = path.resolve(path.dirname(process.execPath), '..');
if (!process.env.npm_config_nodedir && existsSync(path.join(prefix, 'include', 'node', 'node_api.h'))) args.push(`--nodedir=${prefix}`);

let log;
let ok = false;
if (candidates.length === 0) log = 'node-gyp not found (neither $npm_config_node_gyp nor npm\'s bundled copy)\n';
else {
  const run = spawnSync(process.execPath, [candidates[0], ...args], { cwd: here, encoding: 'utf8', timeout: 300_000 });
  log = `$ node ${candidates[0]} ${args.join(' ')}\n${run.stdout ?? ''}${run.stderr ?? ''}${run.error ? `${run.error.message}\n` : ''}exit: ${run.status}\n`;
  ok = run.status === 0 && ['sparse_ffn.node', 'model.node', 'allocator.node'].every((f) => existsSync(path.join(here, 'build', 'Release', f)));
}
writeFileSync(logFile, log);
console.log(ok
  ? 'switchyard: built the native addons (experts/kernels/native/build/Release: sparse_ffn.node, model.node (trunk, attention, dense experts, forward), allocator.node)'
  : `switchyard: the native addons did not build; the native expert kernels (sparse, dense) will be unavailable, the trunk in onnxruntime and attention in TypeScript (slower) and malloc untuned (see ${path.relative(process.cwd(), logFile)})`);
