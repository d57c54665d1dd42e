/** Routing statistics: how many tokens each expert received, and how even that is. */

export function tokensPerExpert(choice: Int32Array, experts: number): number[] {
  const counts = new Array<number>(experts).fill(0);
  for (const e of choice) counts[e]++;
  return counts;
}

/** Mean over max load: 1 when perfectly even, 1/n when one of n takes everything (0 loads count as even). */
export function balancedness(loads: number[]): number {
  const max = Math.max(...loads);
  if (loads.length === 0 || max === 0) return 1;
  return loads.reduce((a, b) => a + b, 0) / loads.length / max;
}
