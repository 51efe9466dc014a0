/**
 * Loads Kubernetes manifests from files and folders (`--manifests PATH`,
 * repeatable) into the typed objects of objects.ts.
 *
 * A path may be a file or a folder; folders are walked recursively for
 * `*.yaml`, `*.yml` and `*.json` in a stable (sorted) order. Each file may hold
 * several YAML documents and `kind: List` wrappers (what `kubectl get -o yaml`
 * prints). A document that does not parse gives a problem naming the file and
 * the document index (0-based, as `yaml` counts them) and the parser's
 * message; the other documents of the file still load. Unknown kinds are
 * ignored and counted, because real manifest folders hold ConfigMaps, RBAC,
 * CRDs and so on. Linkerd's authorization resources (AuthorizationPolicy,
 * MeshTLSAuthentication, NetworkAuthentication) are read like the other
 * kinds (k8s/authz-objects.ts). Results are kept per file so a caller that reloads can keep
 * a file's last good content while the file is broken.
 *
 * No file can take the proxy down: each document is read on its own, inside
 * its own error boundary, and anything it throws (a deeply nested value, a
 * recursive alias) becomes a problem naming the file and document. YAML
 * aliases are expanded only when the expansion is bounded: a benign file
 * with hundreds of aliases loads, an alias bomb ("billion laughs": aliases of
 * aliases, each doubling the size) is refused as a problem before anything
 * is expanded. A file larger than MAX_MANIFEST_BYTES is refused unread.
 */

import { readdir, stat } from 'node:fs/promises';
import { join } from 'node:path';
import { isAlias, isMap, isPair, isScalar, isSeq, parseAllDocuments, type Document } from 'yaml';
import {
  normalizeObject,
  type EndpointSliceObject,
  type AuthzObject,
  type NamespaceObject,
  type ObjectProblem,
  type PolicyObject,
  type ServerObject,
  type ServiceObject,
  type WorkloadObject,
} from './objects.js';
import { objectProblem, type PolicyProblem } from '../problems.js';
import { isPipe, readPipeOnce, readWatchedText } from '../../config/watched-file.js';

/** Every object the policy layer reads, grouped by kind. */
export interface ManifestSet {
  readonly namespaces: readonly NamespaceObject[];
  readonly services: readonly ServiceObject[];
  readonly workloads: readonly WorkloadObject[];
  readonly servers: readonly ServerObject[];
  /** EndpointSlices: the endpoints of Services, for HTTP balancing (ts/policy/endpoints.ts). */
  readonly endpointSlices: readonly EndpointSliceObject[];
  /** AuthorizationPolicy, MeshTLSAuthentication, NetworkAuthentication. */
  readonly authz: readonly AuthzObject[];
  /** Objects of kinds the policy layer does not read. */
  readonly ignored: number;
  readonly problems: readonly PolicyProblem[];
}

/** What one file gave. `parsed` is false when at least one document failed to parse. */
export interface ManifestFile {
  readonly file: string;
  readonly objects: readonly PolicyObject[];
  readonly ignored: number;
  readonly problems: readonly PolicyProblem[];
  readonly parsed: boolean;
}

export const EMPTY_MANIFESTS: ManifestSet = Object.freeze({
  namespaces: [], services: [], workloads: [], servers: [], endpointSlices: [], authz: [], ignored: 0, problems: [],
});

const EXTENSIONS = /\.(ya?ml|json)$/i;

/** A manifest file larger than this is refused (a problem), never read into memory. */
export const MAX_MANIFEST_BYTES = 32 * 1024 * 1024;

/** How many nodes aliases may add to one document when expanded (beyond the nodes written). */
export const MAX_ALIAS_EXPANSION = 1_000_000;

/**
 * The nodes a document has when its aliases are expanded, counted without
 * expanding anything (each node's size is computed once). Stops counting
 * past `limit`. An alias inside its own anchor (a recursive structure) counts
 * as one node: toJS makes it a reference, not a copy.
 */
function expandedNodes(doc: Document, limit: number): number {
  const memo = new Map<unknown, number>();
  const visiting = new Set<unknown>();
  const size = (node: unknown): number => {
    if (node === null || node === undefined || isScalar(node)) return 1;
    if (isAlias(node)) {
      const target = node.resolve(doc);
      return target === undefined || visiting.has(target) ? 1 : size(target);
    }
    const known = memo.get(node);
    if (known !== undefined) return known;
    visiting.add(node);
    let n = 1;
    if (isMap(node) || isSeq(node)) {
      for (const item of node.items as unknown[]) {
        n += isPair(item) ? size(item.key) + size(item.value) : size(item);
        if (n > limit) break;
      }
    }
    visiting.delete(node);
    memo.set(node, n);
    return n;
  };
  return size(doc.contents);
}

/**
 * Whether `doc`'s aliases, expanded, would add more than
 * `MAX_ALIAS_EXPANSION` nodes to the ones written: the written count when
 * they would (an alias bomb), else undefined.
 */
export function aliasBomb(doc: Document): number | undefined {
  const written = writtenNodes(doc);
  return expandedNodes(doc, written + MAX_ALIAS_EXPANSION) > written + MAX_ALIAS_EXPANSION ? written : undefined;
}

/** The nodes written in a document (aliases count as one). */
function writtenNodes(doc: Document): number {
  let n = 0;
  const walk = (node: unknown): void => {
    n++;
    if (isPair(node)) {
      walk(node.key);
      walk(node.value);
    } else if (isMap(node) || isSeq(node)) {
      for (const item of node.items as unknown[]) walk(item);
    }
  };
  walk(doc.contents);
  return n;
}

/** Lists the manifest files under a path (the path itself if it is a file), sorted. */
export async function listManifestFiles(path: string): Promise<string[]> {
  const info = await stat(path);
  if (!info.isDirectory()) return [path];
  const out: string[] = [];
  const entries = await readdir(path, { withFileTypes: true });
  entries.sort((a, b) => (a.name < b.name ? -1 : a.name > b.name ? 1 : 0));
  for (const entry of entries) {
    // Skip hidden entries: Kubernetes ConfigMap volumes keep their real data in ..data/..timestamp dirs.
    if (entry.name.startsWith('.')) continue;
    const full = join(path, entry.name);
    if (entry.isDirectory()) out.push(...(await listManifestFiles(full)));
    else if (EXTENSIONS.test(entry.name)) out.push(full);
  }
  return out;
}

function fileProblem(file: string, document: number | undefined, reason: string, token = ''): PolicyProblem {
  const where = document === undefined ? file : `${file} document ${document}`;
  return Object.freeze({
    object: undefined, file, document, line: undefined, annotation: undefined, token, reason,
    message: `${where}: ${reason}`,
  });
}

/** Parses the text of one manifest file. Never throws. */
export function parseManifestText(file: string, text: string): ManifestFile {
  const objects: PolicyObject[] = [];
  const problems: PolicyProblem[] = [];
  let ignored = 0;
  let parsed = true;
  let docs;
  try {
    docs = parseAllDocuments(text, { prettyErrors: true });
  } catch (err) {
    return { file, objects, ignored, parsed: false, problems: [fileProblem(file, undefined, `YAML does not parse: ${(err as Error).message}`)] };
  }
  const list = Array.isArray(docs) ? docs : [docs];
  list.forEach((doc, index) => {
    if ('errors' in doc && doc.errors.length > 0) {
      parsed = false;
      const first = doc.errors[0];
      const pos = first?.linePos?.[0];
      const at = pos ? ` (line ${pos.line}, column ${pos.col})` : '';
      problems.push(fileProblem(file, index, `YAML does not parse${at}: ${first?.message.split('\n')[0] ?? 'unknown error'}`));
      return;
    }
    try {
      const written = aliasBomb(doc);
      if (written !== undefined) {
        parsed = false;
        problems.push(fileProblem(file, index,
          `YAML aliases would expand this document's ${written} nodes by more than ${MAX_ALIAS_EXPANSION} (an alias bomb?); the document is ignored`));
        return;
      }
      const value: unknown = doc.toJS({ maxAliasCount: -1 });
      const items = isList(value) ? (value as { items: unknown[] }).items : [value];
      for (const item of items) {
        if (item === null || item === undefined) continue;
        const objProblems: ObjectProblem[] = [];
        const obj = normalizeObject(item, objProblems);
        for (const pr of objProblems) problems.push(objectProblem(pr.object, pr.field, pr.token, pr.reason, file));
        if (obj) objects.push(obj);
        else if (objProblems.length === 0) ignored++;
      }
    } catch (err) {
      // A document that defeats the reader (nesting deeper than the stack, a value
      // that cannot be converted) is a problem in that document, never a crash.
      parsed = false;
      problems.push(fileProblem(file, index, `cannot be read: ${err instanceof Error ? err.message : String(err)}`));
    }
  });
  return { file, objects, ignored, problems, parsed };
}

function isList(value: unknown): boolean {
  if (typeof value !== 'object' || value === null) return false;
  const v = value as Record<string, unknown>;
  return typeof v['kind'] === 'string' && v['kind'].endsWith('List') && Array.isArray(v['items']);
}

/** Reads and parses one file; an unreadable or oversized file is a problem, not an exception. */
export async function loadManifestFile(file: string): Promise<ManifestFile> {
  let text: string;
  try {
    const info = await stat(file);
    if (info.size > MAX_MANIFEST_BYTES) {
      return { file, objects: [], ignored: 0, parsed: false,
        problems: [fileProblem(file, undefined, `${(info.size / 1048576).toFixed(1)} MiB is more than the ${MAX_MANIFEST_BYTES / 1048576} MiB a manifest file may have; not read`)] };
    }
    // A regular file only: a FIFO would hold the reload until a writer came (ts/config/watched-file.ts).
    text = await readWatchedText(file, MAX_MANIFEST_BYTES);
  } catch (err) {
    return { file, objects: [], ignored: 0, parsed: false, problems: [fileProblem(file, undefined, `cannot read: ${(err as Error).message}`)] };
  }
  return parseManifestText(file, text);
}

/** Groups objects from several files (and other sources) into one set. */
export function mergeManifests(files: readonly ManifestFile[], extra: readonly PolicyProblem[] = []): ManifestSet {
  const namespaces: NamespaceObject[] = [];
  const services: ServiceObject[] = [];
  const workloads: WorkloadObject[] = [];
  const servers: ServerObject[] = [];
  const endpointSlices: EndpointSliceObject[] = [];
  const authz: AuthzObject[] = [];
  let ignored = 0;
  const problems: PolicyProblem[] = [...extra];
  for (const f of files) {
    ignored += f.ignored;
    problems.push(...f.problems);
    for (const o of f.objects) {
      if (o.kind === 'Namespace') namespaces.push(o);
      else if (o.kind === 'Service') services.push(o);
      else if (o.kind === 'Server') servers.push(o);
      else if (o.kind === 'EndpointSlice') endpointSlices.push(o);
      else if (o.kind === 'AuthorizationPolicy' || o.kind === 'MeshTLSAuthentication' || o.kind === 'NetworkAuthentication') authz.push(o);
      else workloads.push(o);
    }
  }
  return Object.freeze({ namespaces, services, workloads, servers, endpointSlices, authz, ignored, problems });
}

/** Concatenates manifest sets (e.g. files + live API). */
export function combineManifests(...sets: readonly ManifestSet[]): ManifestSet {
  return Object.freeze({
    namespaces: sets.flatMap((s) => s.namespaces),
    services: sets.flatMap((s) => s.services),
    workloads: sets.flatMap((s) => s.workloads),
    servers: sets.flatMap((s) => s.servers),
    endpointSlices: sets.flatMap((s) => s.endpointSlices),
    authz: sets.flatMap((s) => s.authz),
    ignored: sets.reduce((n, s) => n + s.ignored, 0),
    problems: sets.flatMap((s) => s.problems),
  });
}

/**
 * Loads every path (file or folder). A missing path is a problem naming it.
 * Returns the per-file results so callers can keep last good content.
 */
export async function loadManifestFiles(paths: readonly string[]): Promise<{ files: ManifestFile[]; problems: PolicyProblem[] }> {
  const files: ManifestFile[] = [];
  const problems: PolicyProblem[] = [];
  for (const path of paths) {
    if (await isPipe(path)) {
      // A one-shot command's `--manifests <(helm template ...)`: read once, to its end.
      try {
        files.push(parseManifestText(path, await readPipeOnce(path, MAX_MANIFEST_BYTES)));
      } catch (err) {
        problems.push(fileProblem(path, undefined, `cannot read manifests: ${(err as Error).message}`));
      }
      continue;
    }
    let list: string[];
    try {
      list = await listManifestFiles(path);
    } catch (err) {
      problems.push(fileProblem(path, undefined, `cannot read manifests: ${(err as Error).message}`));
      continue;
    }
    for (const file of list) files.push(await loadManifestFile(file));
  }
  return { files, problems };
}

/** Loads paths into one set (the CLI's one-shot use; a path may be a pipe). */
export async function loadManifests(paths: readonly string[]): Promise<ManifestSet> {
  const { files, problems } = await loadManifestFiles(paths);
  return mergeManifests(files, problems);
}
