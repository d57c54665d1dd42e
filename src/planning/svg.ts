/**
 * A hand-written SVG report of a capacity plan: (1) expert load over time — per layer, a heat map with time
 * across and experts down, shade = the expert's share of the layer's tokens in that time slice; (2) per-worker
 * load before (round-robin) and after rebalancing at the recommended worker count, as bars of the worker's share
 * of the expert work, summed over layers.
 */
import type { CapacityPlan } from './capacity.ts';
import type { LoadTrace } from './trace.ts';

const esc = (s: string) => s.replace(/&/g, '&amp;').replace(/</g, '&lt;').replace(/>/g, '&gt;');
const f = (x: number) => (Math.round(x * 10) / 10).toString();

/** Colour for a share in [0, 1]: white → dark blue. */
function shade(share: number): string {
  const t = Math.max(0, Math.min(1, share));
  const mix = (a: number, b: number) => Math.round(a + (b - a) * t);
  return `rgb(${mix(255, 8)},${mix(255, 48)},${mix(255, 107)})`;
}

export function planSvg(trace: LoadTrace, plan: CapacityPlan, options: { bins?: number } = {}): string {
  const { layers, experts } = trace;
  const bins = Math.max(1, Math.min(options.bins ?? 96, trace.steps.length));
  // Time slices: by step time when the trace has it, else by step order.
  const times = trace.steps.map((s, i) => (Number.isFinite(s.time) ? s.time : i));
  const t0 = Math.min(...times);
  const span = Math.max(1e-9, Math.max(...times) - t0);
  const counts = Array.from({ length: layers }, () => Array.from({ length: bins }, () => new Array<number>(experts).fill(0)));
  trace.steps.forEach((s, i) => {
    const b = Math.min(bins - 1, Math.floor(((times[i] - t0) / span) * bins));
    for (const l of s.layers) l.tokensPerExpert.forEach((n, e) => (counts[l.layer][b][e] += n));
  });

  const cell = { w: Math.max(3, Math.floor(600 / bins)), h: Math.max(6, Math.min(14, Math.floor(120 / experts))) };
  const left = 70;
  const heatW = bins * cell.w;
  const layerH = experts * cell.h + 22;
  const parts: string[] = [];
  let y = 40;
  parts.push(`<text x="10" y="24" font-size="16" font-weight="bold">Expert load over time (share of each layer's tokens)</text>`);
  for (let l = 0; l < layers; l++) {
    parts.push(`<text x="10" y="${y + 12}" font-size="11">layer ${l}</text>`);
    for (let b = 0; b < bins; b++) {
      const total = counts[l][b].reduce((a, c) => a + c, 0);
      for (let e = 0; e < experts; e++) {
        const share = total === 0 ? 0 : counts[l][b][e] / total;
        parts.push(`<rect x="${left + b * cell.w}" y="${y + e * cell.h}" width="${cell.w}" height="${cell.h}" fill="${shade(share * 2)}"><title>layer ${l} expert ${e}: ${f(share * 100)} %</title></rect>`);
      }
    }
    for (let e = 0; e < experts; e += Math.max(1, Math.ceil(experts / 8))) {
      parts.push(`<text x="${left - 4}" y="${y + e * cell.h + cell.h - 1}" font-size="9" text-anchor="end">e${e}</text>`);
    }
    y += layerH;
  }
  const seconds = Number.isFinite(trace.steps[0]?.time) ? `${f(span / 1000)} s` : `${trace.steps.length} steps`;
  parts.push(`<text x="${left}" y="${y}" font-size="10">time → (${esc(seconds)}, ${bins} slices; darker = hotter, full colour at ≥ 50 %)</text>`);

  // Per-worker load before / after at the recommended count.
  const rec = plan.recommended;
  const share = (rows: number[][]) => {
    const perWorker = new Array<number>(rec.workers).fill(0);
    for (const row of rows) row.forEach((x, w) => (perWorker[w] += x));
    const total = perWorker.reduce((a, b) => a + b, 0) || 1;
    return perWorker.map((x) => x / total);
  };
  const before = share(rec.before.balance.workerLoad);
  const after = share(rec.after.balance.workerLoad);
  y += 40;
  parts.push(`<text x="10" y="${y}" font-size="16" font-weight="bold">Per-worker load at ${rec.workers} workers: round-robin vs rebalanced</text>`);
  y += 16;
  parts.push(`<text x="10" y="${y}" font-size="11">balancedness (mean/max per layer, Σ mean / Σ max): before ${rec.before.balance.overall.toFixed(3)}, after ${rec.after.balance.overall.toFixed(3)}; predicted output tok/s ${f(rec.before.replay.outputTokensPerS)} → ${f(rec.after.replay.outputTokensPerS)}</text>`);
  y += 14;
  const barMax = 160;
  const peak = Math.max(...before, ...after, 1e-9);
  const groupW = Math.max(24, Math.min(80, Math.floor(600 / rec.workers)));
  const base = y + barMax;
  for (let w = 0; w < rec.workers; w++) {
    const x = left + w * groupW;
    const hb = (before[w] / peak) * barMax;
    const ha = (after[w] / peak) * barMax;
    parts.push(`<rect x="${x}" y="${base - hb}" width="${groupW / 2 - 3}" height="${hb}" fill="#c8c8c8"><title>worker ${w} before: ${f(before[w] * 100)} %</title></rect>`);
    parts.push(`<rect x="${x + groupW / 2 - 2}" y="${base - ha}" width="${groupW / 2 - 3}" height="${ha}" fill="#08306b"><title>worker ${w} after: ${f(after[w] * 100)} %</title></rect>`);
    parts.push(`<text x="${x + groupW / 2 - 2}" y="${base + 12}" font-size="10" text-anchor="middle">w${w}</text>`);
  }
  const even = (1 / rec.workers / peak) * barMax;
  parts.push(`<line x1="${left - 4}" x2="${left + rec.workers * groupW}" y1="${base - even}" y2="${base - even}" stroke="#d62728" stroke-dasharray="4 3"/>`);
  parts.push(`<text x="${left + rec.workers * groupW + 4}" y="${base - even + 4}" font-size="10" fill="#d62728">even share</text>`);
  y = base + 30;
  parts.push(`<rect x="${left}" y="${y - 9}" width="10" height="10" fill="#c8c8c8"/><text x="${left + 14}" y="${y}" font-size="10">before (round-robin)</text>`);
  parts.push(`<rect x="${left + 140}" y="${y - 9}" width="10" height="10" fill="#08306b"/><text x="${left + 154}" y="${y}" font-size="10">after (planned)</text>`);

  const width = Math.max(left + heatW + 20, left + rec.workers * groupW + 120, 720);
  const height = y + 20;
  return `<?xml version="1.0" encoding="UTF-8"?>
<svg xmlns="http://www.w3.org/2000/svg" width="${width}" height="${height}" viewBox="0 0 ${width} ${height}" font-family="sans-serif">
<rect width="100%" height="100%" fill="white"/>
${parts.join('\n')}
</svg>
`;
}
