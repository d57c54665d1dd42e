/**
 * Options of one capacity-planning run over a load trace (the CLI's `plan` flags, POST /admin/plan's query): shared
 * by the planner (src/planning/plan-service.ts) and the admin route (src/server/routes/admin-insights.ts), which may
 * not import the offline planner itself (test/layering.test.ts).
 */
export interface TracePlanOptions {
  /** Most expert workers a scenario may use. */
  workersMax: number;
  /** CPU cores of the machine planned for. */
  cores: number;
  /** Most experts one worker may host; null: no limit. */
  maxExpertsPerWorker: number | null;
  /** A replicated expert's batch is split over its hosts only in parts of at least this many rows. */
  minSplitRows: number;
  /** Tokens per second the plan must sustain, if given. */
  targetTokensPerS?: number;
  /** Step time p99 the plan must stay under (ms), if given. */
  p99Ms?: number;
}
