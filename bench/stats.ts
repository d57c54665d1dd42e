/**
 * Pure helpers for the benchmarks: percentiles, medians, ratios and Markdown tables. No I/O.
 */

function finiteSorted(values: readonly number[]): number[] {
  return values.filter((v) => Number.isFinite(v)).sort((a, b) => a - b);
}

/**
 * The p-th percentile (0 ≤ p ≤ 100) by the **nearest-rank** method: sort the finite values ascending and return
 * the one at rank ⌈p/100 · n⌉ (1-based; rank 0 is taken as 1). The result is always one of the measured values
 * (never interpolated), so with few samples a high percentile is simply the maximum: p99 of 16 requests is
 * the slowest one. Non-finite values (NaN, ±Infinity) are ignored; no finite values gives NaN.
 */
export function percentile(values: readonly number[], p: number): number {
  if (!Number.isFinite(p) || p < 0 || p > 100) throw new RangeError(`percentile p must be within 0..100 (got ${p})`);
  const sorted = finiteSorted(values);
  if (sorted.length === 0) return Number.NaN;
  const rank = Math.max(1, Math.ceil((p / 100) * sorted.length));
  return sorted[rank - 1];
}

/**
 * The conventional median of the finite values: the middle one, or the mean of the two middle ones when the count
 * is even (so it may differ from the nearest-rank `percentile(values, 50)`). No finite values gives NaN.
 */
export function median(values: readonly number[]): number {
  const sorted = finiteSorted(values);
  const n = sorted.length;
  if (n === 0) return Number.NaN;
  const mid = n >> 1;
  return n % 2 === 1 ? sorted[mid] : (sorted[mid - 1] + sorted[mid]) / 2;
}

/** a / b, or NaN when either is not finite or b is 0 (so a missing measurement never turns into a ratio). */
export function ratio(a: number, b: number): number {
  if (!Number.isFinite(a) || !Number.isFinite(b) || b === 0) return Number.NaN;
  return a / b;
}

/** A number with `digits` decimals, or an em dash when it is missing (NaN, ±Infinity, undefined, null). */
export function fmt(value: number | null | undefined, digits = 1): string {
  if (value === null || value === undefined || !Number.isFinite(value)) return '—';
  return value.toFixed(digits);
}

export type Align = 'left' | 'right';

function cellText(value: string | number): string {
  const text = typeof value === 'number' ? fmt(value, Number.isInteger(value) ? 0 : 2) : value;
  // A pipe would end the cell and a newline the row: escape the one, flatten the other.
  return text.replace(/\|/g, '\\|').replace(/\r?\n/g, ' ');
}

/**
 * A GitHub-flavoured Markdown table, padded so it also reads well in a terminal. Numbers in `rows` are printed with
 * `fmt` (integers without decimals, others with 2); format them yourself for other precision. `align` gives each
 * column's alignment (default: left for the first column, right for the others). Rows shorter than the header are
 * padded with empty cells; longer rows are an error.
 */
export function markdownTable(header: readonly string[], rows: ReadonlyArray<ReadonlyArray<string | number>>, align?: readonly Align[]): string {
  if (header.length === 0) throw new Error('a table needs at least one column');
  const cols = header.length;
  const cells = [header, ...rows].map((row, i) => {
    if (row.length > cols) throw new Error(`table row ${i} has ${row.length} cells but the header has ${cols}`);
    return Array.from({ length: cols }, (_, c) => (c < row.length ? cellText(row[c]) : ''));
  });
  const aligns = Array.from({ length: cols }, (_, c) => align?.[c] ?? (c === 0 ? 'left' : 'right'));
  const widths = Array.from({ length: cols }, (_, c) => Math.max(3, ...cells.map((row) => row[c].length)));
  const pad = (text: string, c: number) => (aligns[c] === 'right' ? text.padStart(widths[c]) : text.padEnd(widths[c]));
  const line = (row: readonly string[]) => `| ${row.map((text, c) => pad(text, c)).join(' | ')} |`;
  const rule = `| ${widths.map((w, c) => (aligns[c] === 'right' ? `${'-'.repeat(w - 1)}:` : '-'.repeat(w))).join(' | ')} |`;
  return [line(cells[0]), rule, ...cells.slice(1).map(line)].join('\n');
}
