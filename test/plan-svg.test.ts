/** `switchyard plan --svg`: time axis, the trace's gaps (idle, missing steps, restarts) and the worker bars' scale. */
import { describe, expect, it } from 'vitest';
import { planCapacity } from '../src/planning/capacity.ts';
import { formatPlan } from '../src/planning/plan-command.ts';
import { niceStep, planSvg } from '../src/planning/svg.ts';
import { parseLoadTrace, traceGaps, type LoadTrace } from '../src/planning/trace.ts';

const T0 = Date.UTC(2026, 0, 1);

/**
 * A trace of 2 layers × 4 experts on 2 workers, one line per step and layer. `steps` gives each step's number and
 * end time (ms after T0); `step_ms` is 2.
 */
function traceText(steps: Array<{ step: number; at: number }>): string {
  const lines: string[] = [];
  for (const { step, at } of steps) {
    for (let layer = 0; layer < 2; layer++) {
      const perExpert = [14, 2, 2, 2];
      const workers = [{ worker: 0, tokens: 16, experts: [0, 2], queue_ms: 0.05, compute_ms: 0.2 }, { worker: 1, tokens: 4, experts: [1, 3], queue_ms: 0.05, compute_ms: 0.08 }];
      lines.push(JSON.stringify({
        ts: new Date(T0 + at).toISOString(), step, layer, tokens: 20, tokens_per_expert: perExpert, overflow: 0, capacity: 20,
        sequences: 4, step_ms: 2, dispatch_ms: 0.4, workers,
      }));
    }
  }
  return lines.join('\n') + '\n';
}

/** Steps `from..to` (inclusive), one every 10 ms starting at `at`. */
const run = (from: number, to: number, at: number) => Array.from({ length: to - from + 1 }, (_, i) => ({ step: from + i, at: at + 10 * i }));

/** 0..29 steady; 5 s idle; 30..39; steps 40..44 missing; 45..49; the gateway restarts 8 s later: 0..19. */
const gappy = () => parseLoadTrace(traceText([...run(0, 29, 0), ...run(30, 39, 5290), ...run(45, 49, 5440), ...run(0, 19, 13_480)]));
const clean = () => parseLoadTrace(traceText(run(0, 59, 0)));

const plan = (trace: LoadTrace) => planCapacity(trace, { workersMax: 3, cores: 2, maxExpertsPerWorker: null, minSplitRows: 1 });

/** Elements `<tag class="cls" …>` with their attributes and (for text) content. */
function elements(svg: string, tag: string, cls: string): Array<{ attrs: Record<string, string>; text: string }> {
  const re = new RegExp(`<${tag} class="${cls}"([^>]*?)(?:/>|>([\\s\\S]*?)</${tag}>)`, 'g');
  return [...svg.matchAll(re)].map((m) => ({
    attrs: Object.fromEntries([...m[1].matchAll(/([\w-]+)="([^"]*)"/g)].map((a) => [a[1], a[2]])),
    text: m[2] ?? '',
  }));
}

describe('traceGaps', () => {
  it('finds idle stretches, missing step numbers and restarts, with their times', () => {
    const gaps = traceGaps(gappy());
    expect(gaps.map((g) => [g.kind, g.missingSteps])).toEqual([['idle', 0], ['missing', 5], ['restart', 0]]);
    const [idle, missing, restart] = gaps;
    // Idle: from the end of step 29 (290 ms) to the start of step 30 (5290 − 2 ms).
    expect([idle.from - T0, idle.to - T0]).toEqual([290, 5288]);
    expect([missing.from - T0, missing.to - T0]).toEqual([5380, 5438]);
    expect(restart.to - T0).toBe(13_478);
    expect(gappy().steps[restart.next]).toMatchObject({ run: 1, step: 0 });
  });

  it('finds none in a steady trace, and counts only idle stretches of at least minIdleMs', () => {
    expect(traceGaps(clean())).toEqual([]);
    expect(traceGaps(clean(), 8)).toHaveLength(59); // 8 ms between steps that take 2 ms, every 10 ms
  });
});

describe('planSvg', () => {
  it('draws a time axis with ticks labelled in seconds, placed in proportion to their values', () => {
    const trace = gappy();
    const svg = planSvg(trace, plan(trace));
    const ticks = elements(svg, 'line', 'time-tick').map((t) => Number(t.attrs.x1));
    const labels = elements(svg, 'text', 'time-tick-label');
    expect(labels.length).toBeGreaterThanOrEqual(4);
    expect(labels.length).toBe(ticks.length);
    expect(labels.every((l) => / s$/.test(l.text))).toBe(true);
    const values = labels.map((l) => Number(l.text.replace(/ s$/, '')));
    expect(values[0]).toBe(0);
    // Evenly spaced round values covering the trace (13.67 s from the first step's end to the last's).
    const step = values[1] - values[0];
    expect([1, 2, 5].some((m) => Math.abs(step / 10 ** Math.floor(Math.log10(step)) - m) < 1e-9)).toBe(true);
    values.forEach((v, i) => expect(v).toBeCloseTo(i * step, 9));
    expect(values.at(-1)!).toBeLessThanOrEqual(13.67);
    expect(values.at(-1)! + step).toBeGreaterThan(13.67);
    // x is linear in the value, and the label sits on its tick.
    const pxPerS = (ticks.at(-1)! - ticks[0]) / (values.at(-1)! - values[0]);
    values.forEach((v, i) => expect(ticks[i]).toBeCloseTo(ticks[0] + v * pxPerS, 0));
    labels.forEach((l, i) => expect(Number(l.attrs.x)).toBe(ticks[i]));
  });

  it('marks the idle stretch, the missing steps and the restart where they are on the time axis', () => {
    const trace = gappy();
    const svg = planSvg(trace, plan(trace));
    const idle = elements(svg, 'rect', 'gap gap-idle');
    const missing = elements(svg, 'rect', 'gap gap-missing');
    const restart = elements(svg, 'rect', 'gap gap-restart');
    expect([idle.length, missing.length, restart.length]).toEqual([1, 1, 1]);
    expect(idle[0].text).toMatch(/idle from 0.3 s to 5.3 s \(5 s\): no steps ran/);
    expect(missing[0].text).toMatch(/5 steps missing from the trace/);
    expect(restart[0].text).toMatch(/gateway restart: run 1 begins/);
    const lines = elements(svg, 'line', 'restart');
    expect(lines).toHaveLength(1);
    // Positions agree with the axis: seconds since the first step's end (T0 + 10 ms) through the tick scale.
    const ticks = elements(svg, 'line', 'time-tick').map((t) => Number(t.attrs.x1));
    const values = elements(svg, 'text', 'time-tick-label').map((l) => Number(l.text.replace(/ s$/, '')));
    const xOf = (ms: number) => ticks[0] + ((ms - 10) / 1000) * ((ticks.at(-1)! - ticks[0]) / values.at(-1)!);
    expect(Number(idle[0].attrs.x)).toBeCloseTo(xOf(290), 0);
    expect(Number(idle[0].attrs.x) + Number(idle[0].attrs.width)).toBeCloseTo(xOf(5288), 0);
    expect(Number(lines[0].attrs.x1)).toBeCloseTo(xOf(13_478), 0);
    expect(svg).toMatch(/gateway restart \(step numbers start again\)/); // the legend
  });

  it('marks nothing on a trace without gaps', () => {
    const trace = clean();
    const svg = planSvg(trace, plan(trace));
    expect(elements(svg, 'line', 'time-tick').length).toBeGreaterThan(1);
    expect(svg).not.toMatch(/class="gap|class="restart/);
    expect(svg).not.toMatch(/steps missing|gateway restart/);
  });

  it('labels the ticks in steps when the trace has no times, and still marks a restart', () => {
    const text = traceText([...run(0, 9, 0), ...run(0, 9, 1000)]).replace(/"ts":"[^"]*"/g, '"ts":"?"');
    const trace = parseLoadTrace(text);
    const svg = planSvg(trace, plan(trace));
    const labels = elements(svg, 'text', 'time-tick-label').map((l) => l.text);
    expect(labels[0]).toBe('0');
    expect(labels.every((l) => /^\d+$/.test(l))).toBe(true);
    expect(elements(svg, 'line', 'restart')).toHaveLength(1);
    expect(elements(svg, 'rect', 'gap gap-idle')).toHaveLength(0); // idle time cannot be told without times
  });

  it('falls back to step ticks when every step has the same time (no stacked labels)', () => {
    const trace = parseLoadTrace(traceText(run(0, 19, 0).map((s) => ({ ...s, at: 0 }))));
    const labels = elements(planSvg(trace, plan(trace)), 'text', 'time-tick-label').map((l) => l.text);
    expect(labels.every((l) => /^\d+$/.test(l))).toBe(true);
    expect(new Set(labels).size).toBe(labels.length);
  });

  it('puts a percent scale on the worker bars that reads each bar\'s share back', () => {
    const trace = clean();
    const p = plan(trace);
    const svg = planSvg(trace, p);
    const ticks = elements(svg, 'line', 'bar-scale-tick').map((t) => Number(t.attrs.y1));
    const labels = elements(svg, 'text', 'bar-scale-label');
    expect(labels.length).toBeGreaterThanOrEqual(3);
    expect(labels.every((l) => / %$/.test(l.text))).toBe(true);
    const values = labels.map((l) => Number(l.text.replace(/ %$/, '')));
    expect(values[0]).toBe(0);
    // y of a share, from the scale's first and last ticks.
    const yOf = (percent: number) => ticks[0] + (percent / values.at(-1)!) * (ticks.at(-1)! - ticks[0]);
    const bars = [...elements(svg, 'rect', 'bar-before'), ...elements(svg, 'rect', 'bar-after')];
    expect(bars).toHaveLength(2 * p.recommended.workers);
    for (const bar of bars) {
      const share = Number(/: ([\d.]+) %/.exec(bar.text)![1]);
      expect(Number(bar.attrs.y)).toBeCloseTo(yOf(share), 0);
      expect(Number(bar.attrs.y) + Number(bar.attrs.height)).toBeCloseTo(ticks[0], 6); // bars stand on 0 %
    }
    // The scale reaches the busiest bar, within one tick step.
    const peak = Math.max(...bars.map((b) => Number(/: ([\d.]+) %/.exec(b.text)![1])));
    expect(values.at(-1)!).toBeLessThanOrEqual(peak + 0.05);
    expect(values.at(-1)! + (values[1] - values[0])).toBeGreaterThan(peak);
  });

  it('the text report counts the gaps, and says nothing of them for a steady trace', () => {
    const options = { trace: 't', workersMax: 3, cores: 2, maxExpertsPerWorker: null, minSplitRows: 1, svg: 'p.svg' };
    const trace = gappy();
    expect(formatPlan(trace, plan(trace), options)).toMatch(/^gaps: 1 idle stretch \(no steps for ≥ 1 s\), 5 steps missing from the trace, 1 gateway restart \(marked in the SVG\)$/m);
    expect(formatPlan(clean(), plan(clean()), options)).not.toMatch(/^gaps:/m);
  });

  it('picks round tick steps', () => {
    expect([0.013, 0.7, 1, 1.5, 3, 7, 40, 120].map(niceStep)).toEqual([0.02, 1, 1, 2, 5, 10, 50, 200]);
  });
});
