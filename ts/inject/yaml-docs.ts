/**
 * Multi-document YAML (or JSON) in, the same stream out with only the changed
 * documents rewritten.
 *
 * The input is split with the `yaml` package's CST parser, whose tokens
 * reproduce the source exactly: a document that is not changed, and
 * everything between documents (comments, `---`, `...`), is written back
 * byte for byte. A changed document is edited through the Document API
 * (patch operations applied to its nodes), so its comments, key order and
 * scalar styles survive, and re-rendered in the document's own indentation
 * and sequence style (detected from its text), without line folding. A
 * document written as JSON (`kubectl get -o json`) is written back as JSON
 * with its indentation.
 */
import { Composer, CST, isMap, isSeq, Parser, type Document, type Node } from 'yaml';
import { MeshpipeError } from '../errors.js';
import { aliasBomb, MAX_ALIAS_EXPANSION } from '../policy/k8s/manifests.js';
import type { JsonValue } from './kinds.js';
import { applyPatch, parsePointer, type PatchOp } from './patch.js';

export interface StreamDocument {
  readonly kind: 'doc';
  /** 0-based position among the stream's documents. */
  readonly index: number;
  /** Its source text (with its `---` marker, if any). */
  readonly text: string;
  readonly doc: Document;
  readonly json: JsonValue;
  readonly format: 'yaml' | 'json';
}

export type StreamItem = StreamDocument | { readonly kind: 'text'; readonly text: string };

export interface ParsedStream {
  readonly items: readonly StreamItem[];
  readonly documents: readonly StreamDocument[];
}

/** A document written as JSON (`kubectl get -o json`), not YAML flow style that merely starts with `{`. */
function isJson(text: string): boolean {
  const body = text.replace(/^---[^\n]*\n/, '').trim();
  if (!body.startsWith('{')) return false;
  try {
    JSON.parse(body);
    return true;
  } catch {
    return false;
  }
}

function lineOf(source: string, offset: number): number {
  let line = 1;
  for (let i = 0; i < offset && i < source.length; i++) if (source.charCodeAt(i) === 10) line++;
  return line;
}

/**
 * Splits and parses a stream.
 * @param name how the input is named in errors (a path, or `stdin`)
 * @throws MeshpipeError ERR_INVALID_ARGUMENT naming the document and line of a syntax error
 */
export function parseStream(source: string, name: string): ParsedStream {
  try {
    return parseDocuments(source, name);
  } catch (err) {
    if (err instanceof MeshpipeError) throw err;
    // Nesting deeper than the YAML library's recursion (a RangeError).
    throw new MeshpipeError('ERR_INVALID_ARGUMENT', `${name}: cannot be read: ${(err as Error).message} (nested too deeply?); expected Kubernetes manifests`);
  }
}

function parseDocuments(source: string, name: string): ParsedStream {
  const items: StreamItem[] = [];
  const documents: StreamDocument[] = [];
  let offset = 0;
  for (const token of new Parser().parse(source)) {
    const text = CST.stringify(token);
    const start = offset;
    offset += text.length;
    if (token.type !== 'document') {
      if (token.type === 'error') {
        throw new MeshpipeError('ERR_INVALID_ARGUMENT', `${name}:${lineOf(source, start)}: not valid YAML: ${token.message}`);
      }
      items.push({ kind: 'text', text });
      continue;
    }
    const where = `${name}:${lineOf(source, start)}: document ${documents.length + 1}`;
    let doc: Document | undefined;
    let json: JsonValue;
    try {
      [doc] = [...new Composer({ uniqueKeys: true }).compose([token], true)];
      if (doc === undefined) {
        items.push({ kind: 'text', text });
        continue;
      }
      const error = doc.errors[0];
      if (error !== undefined) {
        throw new MeshpipeError('ERR_INVALID_ARGUMENT', `${name}:${lineOf(source, error.pos[0])}: document ${documents.length + 1} is not valid YAML: ${error.message.split('\n')[0]}`);
      }
      // Aliases are fine within the budget the policy reader allows too
      // (manifests.ts); past it the document is an alias bomb.
      const written = aliasBomb(doc);
      if (written !== undefined) {
        throw new MeshpipeError('ERR_INVALID_ARGUMENT', `${where}: YAML aliases would expand its ${written} nodes by more than ${MAX_ALIAS_EXPANSION} (an alias bomb?); expected manifests without such aliases`);
      }
      json = (doc.toJS({ maxAliasCount: -1 }) ?? null) as JsonValue;
    } catch (err) {
      if (err instanceof MeshpipeError) throw err;
      // A document nested deeper than the YAML library's recursion (a RangeError).
      throw new MeshpipeError('ERR_INVALID_ARGUMENT', `${where}: cannot be read: ${(err as Error).message} (nested too deeply?); expected Kubernetes manifests`);
    }
    const d: StreamDocument = { kind: 'doc', index: documents.length, text, doc, json, format: isJson(text) ? 'json' : 'yaml' };
    items.push(d);
    documents.push(d);
  }
  return { items, documents };
}

/** The document's indentation and whether sequences are indented under their key. */
function detectStyle(text: string): { indent: number; indentSeq: boolean } {
  const lines = text.split('\n').filter((l) => l.trim() !== '' && !l.trimStart().startsWith('#'));
  let indent = 0;
  let indentSeq: boolean | undefined;
  for (let i = 0; i + 1 < lines.length; i++) {
    const cur = lines[i] as string;
    const next = lines[i + 1] as string;
    if (!/:\s*(#.*)?$/.test(cur)) continue;
    const own = cur.length - cur.trimStart().length;
    const child = next.length - next.trimStart().length;
    const isSeqItem = next.trimStart().startsWith('- ') || next.trim() === '-';
    const keyOwn = cur.trimStart().startsWith('- ') ? own + 2 : own;
    if (isSeqItem && indentSeq === undefined) indentSeq = child > keyOwn;
    if (!isSeqItem && indent === 0 && child > keyOwn) indent = child - keyOwn;
    if (indent !== 0 && indentSeq !== undefined) break;
  }
  return { indent: indent === 0 ? 2 : indent, indentSeq: indentSeq ?? false };
}

function childNode(parent: Node, token: string, op: string, path: string): Node {
  if (isMap(parent)) {
    if (!parent.has(token)) throw new Error(`${op} ${path}: no member "${token}"`);
    return parent.get(token, true) as Node;
  }
  if (isSeq(parent)) {
    const child = parent.items[Number(token)];
    if (child === undefined) throw new Error(`${op} ${path}: no item ${token}`);
    return child as Node;
  }
  throw new Error(`${op} ${path}: "${token}" is inside a scalar`);
}

/** Applies patch operations to a YAML document's nodes, in place. */
export function patchDocument(doc: Document, ops: readonly PatchOp[]): void {
  for (const op of ops) {
    const tokens = parsePointer(op.path);
    if (tokens.length === 0) throw new Error(`${op.op} of the document root is not supported`);
    const last = tokens[tokens.length - 1] as string;
    let parent = doc.contents as Node;
    for (const t of tokens.slice(0, -1)) parent = childNode(parent, t, op.op, op.path);
    const value = op.op === 'remove' ? undefined : doc.createNode(op.value);
    if (isSeq(parent)) {
      const index = last === '-' ? parent.items.length : Number(last);
      if (op.op === 'add') parent.items.splice(index, 0, value);
      else if (op.op === 'remove') parent.items.splice(index, 1);
      else parent.items[index] = value;
    } else if (isMap(parent)) {
      if (op.op === 'remove') parent.delete(last);
      else parent.set(last, value);
    } else {
      throw new Error(`${op.op} ${op.path}: the parent is not a map or a sequence`);
    }
  }
}

/** The text of one document after `ops` (its own text when there are none). */
export function renderDocument(d: StreamDocument, ops: readonly PatchOp[]): string {
  if (ops.length === 0) return d.text;
  if (d.format === 'json') {
    const indentLine = d.text.split('\n').find((l, i) => i > 0 && /^\s+"/.test(l));
    const indent = indentLine === undefined ? 2 : indentLine.length - indentLine.trimStart().length;
    const marker = /^---[^\n]*\n/.exec(d.text)?.[0] ?? '';
    return `${marker}${JSON.stringify(applyPatch(d.json, ops), null, indent)}\n`;
  }
  const doc = d.doc.clone();
  patchDocument(doc, ops);
  const style = detectStyle(d.text);
  // `{a: 1}` or `{ a: 1 }`: flow collections keep the padding the document uses.
  const flowCollectionPadding = !/[{[][^\s}\]]/.test(d.text) || /[{[] /.test(d.text);
  return doc.toString({ lineWidth: 0, indent: style.indent, indentSeq: style.indentSeq, flowCollectionPadding });
}

/** The whole stream with each document's operations applied (documents without any are unchanged). */
export function renderStream(stream: ParsedStream, ops: ReadonlyMap<number, readonly PatchOp[]>): string {
  return stream.items.map((item) => (item.kind === 'text' ? item.text : renderDocument(item, ops.get(item.index) ?? []))).join('');
}
