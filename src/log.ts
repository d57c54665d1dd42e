/**
 * The one structured logger: one JSON object per line on stderr, {"time","level","msg",...fields}.
 * Level from LOG_LEVEL (debug|info|warn|error|silent; default info).
 */

export const LOG_LEVELS = ['debug', 'info', 'warn', 'error', 'silent'] as const;
export type LogLevel = (typeof LOG_LEVELS)[number];
export type LogFields = Record<string, unknown>;

export interface Logger {
  readonly level: LogLevel;
  debug(msg: string, fields?: LogFields): void;
  info(msg: string, fields?: LogFields): void;
  warn(msg: string, fields?: LogFields): void;
  error(msg: string, fields?: LogFields): void;
  /** A logger that adds `fields` to every line. */
  child(fields: LogFields): Logger;
}

export interface LoggerOptions {
  /** Default: $LOG_LEVEL, else 'info'. An unknown name falls back to 'info'. */
  level?: LogLevel | string;
  /** Where finished lines go (without trailing newline). Default: process.stderr. */
  write?: (line: string) => void;
  /** Fields added to every line. */
  fields?: LogFields;
}

const RANK: Record<LogLevel, number> = { debug: 10, info: 20, warn: 30, error: 40, silent: 100 };

export function parseLogLevel(value: string | undefined): LogLevel {
  const v = value?.trim().toLowerCase();
  return (LOG_LEVELS as readonly string[]).includes(v ?? '') ? (v as LogLevel) : 'info';
}

/** Errors serialise to {name, message, stack, cause?}; bigints to strings. */
function replacer(_key: string, value: unknown): unknown {
  if (value instanceof Error) {
    const out: LogFields = { name: value.name, message: value.message, stack: value.stack };
    if (value.cause !== undefined) out.cause = value.cause;
    return out;
  }
  if (typeof value === 'bigint') return value.toString();
  return value;
}

function serialise(record: LogFields): string {
  try {
    return JSON.stringify(record, replacer);
  } catch (err) {
    // Circular structures and throwing getters: keep the event, drop the fields.
    return JSON.stringify({
      time: record.time,
      level: record.level,
      msg: record.msg,
      log_error: `fields not serialisable: ${(err as Error).message}`,
    });
  }
}

export function createLogger(options: LoggerOptions = {}): Logger {
  const level = parseLogLevel(options.level ?? process.env.LOG_LEVEL);
  const write = options.write ?? ((line: string) => void process.stderr.write(`${line}\n`));
  const bound = options.fields ?? {};
  const threshold = RANK[level];

  const emit = (lvl: Exclude<LogLevel, 'silent'>, msg: string, fields?: LogFields) => {
    if (RANK[lvl] < threshold) return;
    const head = { time: new Date().toISOString(), level: lvl, msg };
    // Key order time, level, msg first; fields cannot overwrite them.
    write(serialise(Object.assign({ ...head }, bound, fields, head)));
  };

  return {
    level,
    debug: (msg, fields) => emit('debug', msg, fields),
    info: (msg, fields) => emit('info', msg, fields),
    warn: (msg, fields) => emit('warn', msg, fields),
    error: (msg, fields) => emit('error', msg, fields),
    child: (fields) => createLogger({ level, write, fields: { ...bound, ...fields } }),
  };
}

/** The process-wide logger. */
export const log: Logger = createLogger();
