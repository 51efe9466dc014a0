/**
 * The human log format, for a terminal: one pino JSON line rendered as
 * `12:34:56.789Z INFO  listener bound listener=forward:127.0.0.1:15432 port=15432`.
 *
 * The engine renders its own trace lines with the same rules
 * (crates/meshpipe-core/src/log/text.rs), so a terminal shows one format
 * whoever wrote the line: the time of day (UTC), the level in capitals, the
 * message, then every other field as `key=value` in the order written
 * (`level`, `time`, `pid` and `name` are left out), strings quoted only when
 * they need it, an error as its message, a `hint` on a line of its own.
 *
 * `auto` (the default) is text when stderr is a terminal and JSON otherwise:
 * a container's stderr is a pipe to the log collector, which wants JSON.
 */

import { LOG_FORMATS, type LogFormat } from '../config/index.js';

export { LOG_FORMATS, type LogFormat };

/** `auto` decided: text for a terminal on stderr, JSON otherwise. */
export function effectiveLogFormat(format: LogFormat, stderrIsTty: boolean = process.stderr.isTTY === true): 'json' | 'text' {
  return format === 'auto' ? (stderrIsTty ? 'text' : 'json') : format;
}

const LEFT_OUT = new Set(['level', 'time', 'pid', 'name', 'msg', 'hostname']);

function valueText(value: unknown): string {
  if (typeof value === 'string') {
    return value !== '' && /^[^\s"=\p{Cc}]+$/u.test(value) ? value : JSON.stringify(value);
  }
  // An error (pino's serializer gives {type, message, stack}): its message says what happened.
  if (value !== null && typeof value === 'object' && !Array.isArray(value) && typeof (value as { message?: unknown }).message === 'string') {
    return valueText((value as { message: string }).message);
  }
  return JSON.stringify(value) ?? String(value);
}

/** Renders one JSON line (with or without its newline) as text with a newline; other text passes through. */
export function renderTextLine(json: string): string {
  let record: Record<string, unknown>;
  try {
    const parsed: unknown = JSON.parse(json);
    if (parsed === null || typeof parsed !== 'object' || Array.isArray(parsed)) return json.endsWith('\n') ? json : `${json}\n`;
    record = parsed as Record<string, unknown>;
  } catch {
    return json.endsWith('\n') ? json : `${json}\n`;
  }
  const time = typeof record['time'] === 'string' ? record['time'] : new Date().toISOString();
  const level = (typeof record['level'] === 'string' ? record['level'] : 'info').toUpperCase();
  let out = `${time.length > 11 ? time.slice(11) : time} ${level.padEnd(5)} ${typeof record['msg'] === 'string' ? record['msg'] : ''}`;
  let hint: unknown;
  for (const [key, value] of Object.entries(record)) {
    if (LEFT_OUT.has(key) || value === undefined) continue;
    if (key === 'hint') {
      hint = value;
      continue;
    }
    out += ` ${key}=${valueText(value)}`;
  }
  if (hint !== undefined) out += `\n  hint: ${typeof hint === 'string' ? hint : JSON.stringify(hint)}`;
  return `${out}\n`;
}
