/**
 * Progress of the CLI's long offline jobs (eval, prune), on stderr: a cli-progress bar on a terminal, plain lines
 * in a log or a pipe (one per tenth of the work, so CI logs stay readable: no cursor control, no redraws).
 */
import cliProgress from 'cli-progress';

export interface Progress {
  /** `done` of `total` units so far; `detail` a short note on the current item. Counts only go up within a phase. */
  update(done: number, total: number, detail?: string): void;
  /** Ends the display (a bar leaves its last state on screen); safe to call more than once. */
  stop(): void;
}

export interface ProgressLabel {
  /** What runs, e.g. "calibrating". */
  label: string;
  /** What is counted, plural, e.g. "tokens". */
  unit: string;
}

export const silentProgress: Progress = { update() {}, stop() {} };

/**
 * One line per `1 / steps` of the work (the first update, each new tenth by default, and the end), e.g.
 * `calibrating: 1024/8192 tokens (12%)`. Deterministic: it counts work, not time.
 */
export function lineProgress(write: (line: string) => void, { label, unit }: ProgressLabel, steps = 10): Progress {
  let printed = -1;
  let lastTotal = NaN;
  return {
    update(done, total, detail) {
      if (total !== lastTotal) printed = -1; // a new phase with its own total
      lastTotal = total;
      const step = total > 0 ? Math.floor((Math.min(done, total) * steps) / total) : steps;
      if (step <= printed) return;
      printed = step;
      const percent = total > 0 ? Math.floor((100 * Math.min(done, total)) / total) : 100;
      write(`${label}: ${done}/${total} ${unit} (${percent}%)${detail ? ` ${detail}` : ''}`);
    },
    stop() {},
  };
}

/** A cli-progress bar redrawn in place on a terminal; it stops by itself when done reaches total. */
export function barProgress(stream: NodeJS.WritableStream, { label, unit }: ProgressLabel): Progress {
  const bar = new cliProgress.SingleBar({
    format: `${label} [{bar}] {percentage}% | {value}/{total} ${unit} | eta {eta_formatted} {detail}`,
    stream,
    hideCursor: true,
    stopOnComplete: true,
  }, cliProgress.Presets.shades_classic);
  let running = false;
  let finished = false;
  return {
    update(done, total, detail = '') {
      if (finished) return;
      if (!running) bar.start(total, 0, { detail });
      running = true;
      bar.setTotal(total);
      bar.update(done, { detail });
      if (done >= total) finished = true; // stopOnComplete stopped it
    },
    stop() {
      if (running && !finished) bar.stop();
      finished = true;
    },
  };
}

/** A bar when `stream` is a terminal, lines through `write` otherwise. */
export function progressOn(stream: NodeJS.WriteStream, write: (line: string) => void, what: ProgressLabel): Progress {
  return stream.isTTY ? barProgress(stream, what) : lineProgress(write, what);
}
