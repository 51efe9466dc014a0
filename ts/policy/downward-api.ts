/**
 * Parser for the Kubernetes downward-API annotations (and labels) file format,
 * as the kubelet writes it into a `downwardAPI` volume, e.g.
 * /etc/podinfo/annotations:
 *
 *     config.linkerd.io/opaque-ports="3306,mysql"
 *     kubernetes.io/description="line one\nline two"
 *
 * One `key="value"` per line, keys sorted, values quoted the way Go's
 * `strconv.Quote` does (`\"`, `\\`, `\n`, `\t`, `\xNN`, `\NNN`, `\uNNNN`,
 * `\UNNNNNNNN`, ...). Parsing is lenient per line: a malformed line is reported
 * with its line number and what is wrong, and every valid line still applies,
 * so one bad hand edit cannot silently drop the other annotations.
 */

/** One problem in the file, with a 1-based line number. */
/**
 * The most an annotations file may hold: Kubernetes caps a pod's annotations
 * at 256 KiB in all, so a larger file is not the kubelet's.
 */
export const MAX_ANNOTATIONS_BYTES = 1024 * 1024;

export interface DownwardApiError {
  readonly line: number;
  /** The key, when the line got far enough to name one (lets callers keep its last good value). */
  readonly key: string | undefined;
  readonly message: string;
}

export interface DownwardApiFile {
  /** key -> decoded value, in file order. */
  readonly values: ReadonlyMap<string, string>;
  readonly errors: readonly DownwardApiError[];
}

const SIMPLE_ESCAPES: Record<string, number> = {
  a: 0x07, b: 0x08, f: 0x0c, n: 0x0a, r: 0x0d, t: 0x09, v: 0x0b, '\\': 0x5c, '"': 0x22,
};

/** A qualified Kubernetes key: optional DNS prefix and `/`, then a name. Kept permissive on purpose. */
const KEY = /^[A-Za-z0-9]([A-Za-z0-9._/-]*[A-Za-z0-9])?$/;

function pushUtf8(bytes: number[], codePoint: number): void {
  for (const b of Buffer.from(String.fromCodePoint(codePoint), 'utf8')) bytes.push(b);
}

/**
 * Decodes the body of a Go double-quoted string (without the quotes).
 * @returns the decoded text, or an error naming the column and the problem.
 */
export function unquoteGo(body: string): { value: string } | { error: string } {
  const bytes: number[] = [];
  for (let i = 0; i < body.length; ) {
    const ch = body[i] as string;
    if (ch === '"') return { error: `unescaped " at column ${i + 1} inside the value` };
    if (ch === '\n') return { error: 'newline inside the value' };
    if (ch !== '\\') {
      const cp = body.codePointAt(i) as number;
      pushUtf8(bytes, cp);
      i += cp > 0xffff ? 2 : 1;
      continue;
    }
    const kind = body[i + 1];
    if (kind === undefined) return { error: 'value ends with a lone backslash' };
    const simple = SIMPLE_ESCAPES[kind];
    if (simple !== undefined) {
      bytes.push(simple);
      i += 2;
      continue;
    }
    const hexLen = kind === 'x' ? 2 : kind === 'u' ? 4 : kind === 'U' ? 8 : 0;
    if (hexLen > 0) {
      const digits = body.slice(i + 2, i + 2 + hexLen);
      if (digits.length !== hexLen || !/^[0-9A-Fa-f]+$/.test(digits)) {
        return { error: `bad escape \\${kind}${digits}: expected ${hexLen} hex digits` };
      }
      const n = parseInt(digits, 16);
      if (kind === 'x') {
        bytes.push(n); // a raw byte, as in Go; multi-byte UTF-8 sequences are reassembled below
      } else if (n > 0x10ffff || (n >= 0xd800 && n <= 0xdfff)) {
        return { error: `bad escape \\${kind}${digits}: not a valid Unicode code point` };
      } else {
        pushUtf8(bytes, n);
      }
      i += 2 + hexLen;
      continue;
    }
    if (/[0-7]/.test(kind)) {
      const digits = body.slice(i + 1, i + 4);
      if (!/^[0-7]{3}$/.test(digits) || parseInt(digits, 8) > 255) {
        return { error: `bad escape \\${digits}: expected three octal digits 000-377` };
      }
      bytes.push(parseInt(digits, 8));
      i += 4;
      continue;
    }
    return { error: `unknown escape \\${kind} at column ${i + 1}` };
  }
  return { value: Buffer.from(bytes).toString('utf8') };
}

/** Encodes a value the way the kubelet writes it (Go `%q`); used by tests and for display. */
export function quoteGo(value: string): string {
  let out = '"';
  for (const ch of value) {
    const cp = ch.codePointAt(0) as number;
    if (ch === '"' || ch === '\\') out += `\\${ch}`;
    else if (ch === '\n') out += '\\n';
    else if (ch === '\t') out += '\\t';
    else if (ch === '\r') out += '\\r';
    else if (cp < 0x20 || cp === 0x7f) out += `\\x${cp.toString(16).padStart(2, '0')}`;
    else out += ch;
  }
  return `${out}"`;
}

/** Parses one line. Blank lines are `null`. */
function parseLine(line: string): { key: string; value: string } | { key: string | undefined; error: string } | null {
  const text = line.replace(/\r$/, '');
  if (text.trim() === '') return null;
  const eq = text.indexOf('=');
  if (eq < 0) return { key: undefined, error: 'expected key="value" but found no "="' };
  const key = text.slice(0, eq);
  if (key === '') return { key: undefined, error: 'empty key before "="' };
  if (!KEY.test(key)) return { key: undefined, error: `invalid key "${key}": expected a Kubernetes annotation key such as config.linkerd.io/opaque-ports` };
  const rest = text.slice(eq + 1);
  if (!rest.startsWith('"')) return { key, error: `value of ${key} is not quoted: expected ${key}="..."` };
  if (rest.length < 2 || !rest.endsWith('"')) return { key, error: `value of ${key} has no closing quote` };
  const body = rest.slice(1, -1);
  // A body ending in an odd number of backslashes means the last quote was escaped.
  const trailing = /\\*$/.exec(body)?.[0].length ?? 0;
  if (trailing % 2 === 1) return { key, error: `value of ${key} has no closing quote (the last quote is escaped)` };
  const decoded = unquoteGo(body);
  if ('error' in decoded) return { key, error: `value of ${key}: ${decoded.error}` };
  return { key, value: decoded.value };
}

/** Parses the whole file. Never throws. */
export function parseDownwardApi(text: string): DownwardApiFile {
  const values = new Map<string, string>();
  const errors: DownwardApiError[] = [];
  const seenAt = new Map<string, number>();
  const lines = text.split('\n');
  lines.forEach((line, index) => {
    const n = index + 1;
    const parsed = parseLine(line);
    if (parsed === null) return;
    if ('error' in parsed) {
      errors.push({ line: n, key: parsed.key, message: `line ${n}: ${parsed.error}` });
      return;
    }
    const first = seenAt.get(parsed.key);
    if (first !== undefined) {
      // The kubelet never writes a key twice: a duplicate is a hand edit. The later line wins, visibly.
      errors.push({ line: n, key: parsed.key, message: `line ${n}: duplicate key ${parsed.key} (first on line ${first}); line ${n} wins` });
    } else {
      seenAt.set(parsed.key, n);
    }
    values.set(parsed.key, parsed.value);
  });
  return { values, errors };
}

// A type guard: `instanceof Map` alone narrows to Map<any, any>.
function isMap(values: ReadonlyMap<string, string> | Readonly<Record<string, string>>): values is ReadonlyMap<string, string> {
  return values instanceof Map;
}

/** Serialises values back into the file format, keys sorted as the kubelet writes them. */
export function formatDownwardApi(values: ReadonlyMap<string, string> | Readonly<Record<string, string>>): string {
  const entries = isMap(values) ? [...values.entries()] : Object.entries(values);
  return entries
    .sort(([a], [b]) => (a < b ? -1 : a > b ? 1 : 0))
    .map(([k, v]) => `${k}=${quoteGo(v)}`)
    .join('\n');
}
