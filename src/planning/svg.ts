/**
 * A hand-written SVG report of a capacity plan: (1) expert load over time — per layer, a heat map with time
 * across and experts down, shade = the expert's share of the layer's tokens in that time slice, over a time axis
 * in seconds, with the trace's gaps marked (idle stretches, missing steps, gateway restarts: traceGaps); (2)
 * per-worker load before (round-robin) and after rebalancing at the recommended worker count, as bars of the
 * worker's share of the expert work, summed over layers, on a percent scale.
 *
 * Marks carry a class for tools and tests: `time-tick`/`time-tick-label`, `gap gap-idle|gap-missing|gap-restart`,
 * `restart`, `bar-scale-tick`/`bar-scale-label`, `bar-before`/`bar-after`.
 */
import type { CapacityPlan } from './capacity.ts';
import { traceGaps, type LoadTrace, type TraceGap } from './trace.ts';

const esc = (s: string) => s.replace(/&/g, '&amp;').replace(/</g, '&lt;').replace(/>/g, '&gt;');
const f = (x: number) => (Math.round(x * 10) / 10).toString();

/** Colour for a share in [0, 1]: white → dark blue. */
function shade(share: number): string {
  const t = Math.max(0, Math.min(1, share));
  const mix = (a: number, b: number) => Math.round(a + (b - a) * t);
  return `rgb(${mix(255, 8)},${mix(255, 48)},${mix(255, 107)})`;
}

/** A round step (1, 2 or 5 × 10^k) near `raw`, for axis ticks. */
export function niceStep(raw: number): number {
  if (!(raw > 0) || !Number.isFinite(raw)) return 1;
  const p = 10 ** Math.floor(Math.log10(raw));
  const m = raw / p;
  return (m <= 1 ? 1 : m <= 2 ? 2 : m <= 5 ? 5 : 10) * p;
}

/** Ticks 0, step, 2·step, … up to `max`, with the decimals the step needs. */
function ticks(max: number, target: number): Array<{ value: number; label: string }> {
  const step = niceStep(max / target);
  const decimals = Math.max(0, Math.ceil(-Math.log10(step) - 1e-9));
  const out: Array<{ value: number; label: string }> = [];
  for (let k = 0; k * step <= max * (1 + 1e-9); k++) out.push({ value: k * step, label: (k * step).toFixed(decimals) });
  return out;
}

export interface PlanSvgOptions {
  /** Time slices of the heat maps (default 96, at most one per step). */
  bins?: number;
  /** Shortest stretch without steps marked as idle, ms (default: 1 s or one time slice, whichever is longer). */
  minIdleMs?: number;
}

export function planSvg(trace: LoadTrace, plan: CapacityPlan, options: PlanSvgOptions = {}): string {
  const { layers, experts } = trace;
  const bins = Math.max(1, Math.min(options.bins ?? 96, trace.steps.length));
  // Time slices: by step time when the trace has it, else by step order.
  // ...and only when the times spread over at least a millisecond (equal timestamps would stack every step and tick).
  const stamps = trace.steps.map((s) => s.time);
  const spread = (xs: number[]) => xs.reduce((m, x) => Math.max(m, x), -Infinity) - xs.reduce((m, x) => Math.min(m, x), Infinity);
  const timed = stamps.every((t) => Number.isFinite(t)) && spread(stamps) >= 1;
  const times = trace.steps.map((s, i) => (timed ? s.time : i));
  const t0 = times.reduce((m, x) => Math.min(m, x), Infinity);
  const span = Math.max(1e-9, spread(times));
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
  const heatTop = 40;
  let y = heatTop;
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

  // Time axis under the last heat map: seconds since the first step's end (steps when the trace has no times).
  const axisY = y - layerH + experts * cell.h + 2;
  const xAt = (t: number) => left + Math.max(0, Math.min(1, (t - t0) / span)) * heatW;
  parts.push(`<line x1="${left}" x2="${left + heatW}" y1="${axisY}" y2="${axisY}" stroke="#444"/>`);
  const unit = timed ? 1000 : 1;
  for (const tick of ticks(span / unit, 8)) {
    const x = f(xAt(t0 + tick.value * unit));
    parts.push(`<line class="time-tick" x1="${x}" x2="${x}" y1="${axisY}" y2="${axisY + 4}" stroke="#444"/>`);
    parts.push(`<text class="time-tick-label" x="${x}" y="${axisY + 14}" font-size="9" text-anchor="middle">${timed ? `${tick.label} s` : tick.label}</text>`);
  }

  // The trace's gaps, over every heat map; a restart also gets a line where the new run begins.
  const gaps = traceGaps(trace, options.minIdleMs ?? Math.max(1000, span / bins));
  const heatBottom = axisY - 2;
  const rel = (t: number) => `${f((t - t0) / 1000)} s`;
  const gapTitle = (g: TraceGap): string => {
    const when = timed ? ` from ${rel(g.from)} to ${rel(g.to)} (${f((g.to - g.from) / 1000)} s)` : ` after step ${g.next - 1} of the trace`;
    if (g.kind === 'idle') return `idle${when}: no steps ran (no requests)`;
    if (g.kind === 'missing') return `${g.missingSteps} step${g.missingSteps === 1 ? '' : 's'} missing from the trace${when} (dropped by the trace writer, or cut off)`;
    return `gateway restart: run ${trace.steps[g.next].run} begins (step numbers start again); no steps${when}`;
  };
  for (const g of gaps) {
    const x0 = timed ? xAt(g.from) : xAt(times[g.next - 1]);
    const x1 = Math.max(x0 + 2, timed ? xAt(g.to) : xAt(times[g.next]));
    parts.push(`<rect class="gap gap-${g.kind}" x="${f(x0)}" y="${heatTop}" width="${f(x1 - x0)}" height="${heatBottom - heatTop}" fill="url(#${g.kind === 'missing' ? 'hatch-missing' : 'hatch-idle'})"><title>${esc(gapTitle(g))}</title></rect>`);
    if (g.kind === 'restart') {
      parts.push(`<line class="restart" x1="${f(x1)}" x2="${f(x1)}" y1="${heatTop - 6}" y2="${axisY}" stroke="#d62728" stroke-width="1.5"><title>${esc(gapTitle(g))}</title></line>`);
      parts.push(`<text class="restart-label" x="${f(x1 + 2)}" y="${heatTop - 2}" font-size="9" fill="#d62728">restart</text>`);
    }
  }

  y = axisY + 28;
  const extent = timed ? `${f(span / 1000)} s` : `${trace.steps.length} steps`;
  parts.push(`<text x="${left}" y="${y}" font-size="10">time → ${timed ? 'seconds since the first step' : 'step (the trace has no times)'} (${esc(extent)}, ${bins} slices; darker = hotter, full colour at ≥ 50 %)</text>`);
  const kinds = new Set(gaps.map((g) => g.kind));
  if (kinds.size > 0) {
    y += 16;
    let x = left;
    const legend = (fill: string, text: string, line = false) => {
      parts.push(line
        ? `<line x1="${x + 5}" x2="${x + 5}" y1="${y - 10}" y2="${y + 1}" stroke="#d62728" stroke-width="1.5"/>`
        : `<rect x="${x}" y="${y - 9}" width="10" height="10" fill="${fill}" stroke="#999" stroke-width="0.5"/>`);
      parts.push(`<text x="${x + 14}" y="${y}" font-size="10">${esc(text)}</text>`);
      x += 14 + text.length * 5.5 + 16;
    };
    if (kinds.has('idle')) legend('url(#hatch-idle)', `idle: no steps for ≥ ${f((options.minIdleMs ?? Math.max(1000, span / bins)) / 1000)} s`);
    if (kinds.has('missing')) legend('url(#hatch-missing)', 'steps missing from the trace');
    if (kinds.has('restart')) legend('', 'gateway restart (step numbers start again)', true);
  }

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
  y += 24;
  parts.push(`<text x="10" y="${y}" font-size="10">share of the expert work (%), summed over layers</text>`);
  y += 8;
  const barMax = 160;
  const peak = Math.max(...before, ...after, 1e-9);
  const groupW = Math.max(24, Math.min(80, Math.floor(600 / rec.workers)));
  const base = y + barMax;
  // Percent scale: the bars are drawn relative to the busiest worker, so the axis says what a height means.
  const barY = (share: number) => base - (share / peak) * barMax;
  parts.push(`<line x1="${left - 6}" x2="${left - 6}" y1="${base - barMax}" y2="${base}" stroke="#444"/>`);
  for (const tick of ticks(peak * 100, 4)) {
    const ty = f(barY(tick.value / 100));
    parts.push(`<line class="bar-grid" x1="${left - 6}" x2="${left + rec.workers * groupW}" y1="${ty}" y2="${ty}" stroke="#e4e4e4"/>`);
    parts.push(`<line class="bar-scale-tick" x1="${left - 10}" x2="${left - 6}" y1="${ty}" y2="${ty}" stroke="#444"/>`);
    parts.push(`<text class="bar-scale-label" x="${left - 12}" y="${ty}" dy="3" font-size="9" text-anchor="end">${tick.label} %</text>`);
  }
  for (let w = 0; w < rec.workers; w++) {
    const x = left + w * groupW;
    const hb = (before[w] / peak) * barMax;
    const ha = (after[w] / peak) * barMax;
    parts.push(`<rect class="bar-before" x="${x}" y="${base - hb}" width="${groupW / 2 - 3}" height="${hb}" fill="#c8c8c8"><title>worker ${w} before: ${f(before[w] * 100)} %</title></rect>`);
    parts.push(`<rect class="bar-after" x="${x + groupW / 2 - 2}" y="${base - ha}" width="${groupW / 2 - 3}" height="${ha}" fill="#08306b"><title>worker ${w} after: ${f(after[w] * 100)} %</title></rect>`);
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
<defs>
<pattern id="hatch-idle" width="6" height="6" patternUnits="userSpaceOnUse" patternTransform="rotate(45)"><rect width="6" height="6" fill="#f4f4f4" fill-opacity="0.85"/><line x1="0" y1="0" x2="0" y2="6" stroke="#9a9a9a" stroke-width="2"/></pattern>
<pattern id="hatch-missing" width="6" height="6" patternUnits="userSpaceOnUse" patternTransform="rotate(-45)"><rect width="6" height="6" fill="#fff3e0" fill-opacity="0.85"/><line x1="0" y1="0" x2="0" y2="6" stroke="#e6550d" stroke-width="2"/></pattern>
</defs>
<rect width="100%" height="100%" fill="white"/>
${parts.join('\n')}
</svg>
`;
}
