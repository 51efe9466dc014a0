/**
 * JSONPatch (RFC 6902) between two JSON values, and its application.
 *
 * Injection computes the pod it wants; this module turns "from this pod to
 * that one" into patch operations. The webhook sends them to the API server
 * as its AdmissionReview `patch`; the CLI applies the same operations to the
 * YAML document (yaml-docs.ts), so both paths change exactly the same fields.
 *
 * The diff is small on purpose: maps are compared key by key (`add`,
 * `remove`, recursion), and an array whose old items all survive in order
 * gets one `add` per new item (inserted at its final index, in ascending
 * order, so each operation sees the array as RFC 6902 applies them one by
 * one); removals likewise (descending). Arrays of equal length are compared
 * item by item; anything else is replaced whole. JSON Pointers escape `~` and
 * `/` (RFC 6901: `~0`, `~1`), which annotation keys such as
 * `meshpipe.io/injected` need.
 */
import { isObject, type JsonValue } from './kinds.js';

export type PatchOp =
  | { readonly op: 'add'; readonly path: string; readonly value: JsonValue }
  | { readonly op: 'remove'; readonly path: string }
  | { readonly op: 'replace'; readonly path: string; readonly value: JsonValue };

/** RFC 6901: a JSON Pointer from reference tokens. */
export function pointer(tokens: readonly string[]): string {
  return tokens.map((t) => `/${t.replaceAll('~', '~0').replaceAll('/', '~1')}`).join('');
}

/** RFC 6901: the reference tokens of a JSON Pointer. */
export function parsePointer(path: string): string[] {
  if (path === '') return [];
  if (!path.startsWith('/')) throw new Error(`JSON Pointer "${path}" must start with "/"`);
  return path.slice(1).split('/').map((t) => t.replaceAll('~1', '/').replaceAll('~0', '~'));
}

/** Structural equality of JSON values (key order does not matter). */
export function jsonEqual(a: JsonValue | undefined, b: JsonValue | undefined): boolean {
  if (a === b) return true;
  if (Array.isArray(a)) return Array.isArray(b) && a.length === b.length && a.every((x, i) => jsonEqual(x, b[i]));
  if (isObject(a)) {
    if (!isObject(b)) return false;
    const ka = Object.keys(a);
    return ka.length === Object.keys(b).length && ka.every((k) => Object.hasOwn(b, k) && jsonEqual(a[k], b[k]));
  }
  return false;
}

/** Indices of `longer` that are not matched when `shorter` is walked in order, or undefined if `shorter` is not a subsequence. */
function extraIndices(shorter: readonly JsonValue[], longer: readonly JsonValue[]): number[] | undefined {
  const extra: number[] = [];
  let j = 0;
  for (let i = 0; i < longer.length; i++) {
    if (j < shorter.length && jsonEqual(longer[i], shorter[j])) j++;
    else extra.push(i);
  }
  return j === shorter.length ? extra : undefined;
}

/** The operations that turn `from` into `to`, with paths under `base`. */
export function diff(from: JsonValue, to: JsonValue, base: readonly string[] = []): PatchOp[] {
  if (jsonEqual(from, to)) return [];
  if (isObject(from) && isObject(to)) {
    const ops: PatchOp[] = [];
    for (const key of Object.keys(from)) if (!Object.hasOwn(to, key)) ops.push({ op: 'remove', path: pointer([...base, key]) });
    for (const [key, value] of Object.entries(to)) {
      if (!Object.hasOwn(from, key)) ops.push({ op: 'add', path: pointer([...base, key]), value });
      else ops.push(...diff(from[key] as JsonValue, value, [...base, key]));
    }
    return ops;
  }
  if (Array.isArray(from) && Array.isArray(to)) {
    if (to.length > from.length) {
      const added = extraIndices(from, to);
      if (added !== undefined) return added.map((i) => ({ op: 'add', path: pointer([...base, String(i)]), value: to[i] as JsonValue }));
    } else if (to.length < from.length) {
      const removed = extraIndices(to, from);
      if (removed !== undefined) return removed.reverse().map((i) => ({ op: 'remove', path: pointer([...base, String(i)]) }));
    } else {
      return from.flatMap((x, i) => diff(x, to[i] as JsonValue, [...base, String(i)]));
    }
  }
  return [{ op: 'replace', path: pointer(base), value: to }];
}

function clone<T extends JsonValue>(v: T): T {
  return structuredClone(v);
}

/**
 * Applies operations to a copy of `value` (RFC 6902 semantics for add,
 * remove and replace). Throws naming the operation when a path does not exist.
 */
export function applyPatch(value: JsonValue, ops: readonly PatchOp[]): JsonValue {
  let root = clone(value);
  for (const op of ops) {
    const tokens = parsePointer(op.path);
    if (tokens.length === 0) {
      if (op.op === 'remove') throw new Error('cannot remove the document root');
      root = clone(op.value);
      continue;
    }
    const last = tokens[tokens.length - 1] as string;
    let parent: JsonValue | undefined = root;
    for (const t of tokens.slice(0, -1)) {
      parent = Array.isArray(parent) ? parent[Number(t)] : isObject(parent) ? parent[t] : undefined;
    }
    if (Array.isArray(parent)) {
      const index = last === '-' ? parent.length : Number(last);
      const max = op.op === 'add' ? parent.length : parent.length - 1;
      if (!/^(\d+|-)$/.test(last) || index > max) throw new Error(`${op.op} ${op.path}: index out of range`);
      if (op.op === 'add') parent.splice(index, 0, clone(op.value));
      else if (op.op === 'remove') parent.splice(index, 1);
      else parent[index] = clone(op.value);
    } else if (isObject(parent)) {
      if (op.op !== 'add' && !Object.hasOwn(parent, last)) throw new Error(`${op.op} ${op.path}: no such member`);
      if (op.op === 'remove') delete parent[last];
      else parent[last] = clone(op.value);
    } else {
      throw new Error(`${op.op} ${op.path}: the parent does not exist`);
    }
  }
  return root;
}
