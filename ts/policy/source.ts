/**
 * PolicySource: gathers the policy inputs (the workload's downward-API
 * annotations file, manifest files and folders, the static meshed
 * destinations file, and optionally a live Kubernetes watch), feeds them to the incremental compiler (compiler.ts)
 * and emits a `policy` event with each new generation: the change for the
 * engine (a delta of the addresses and tables that changed; the whole table
 * first) and the problems.
 *
 * Change detection uses fs.watch on the annotations file's directory (the
 * kubelet swaps a `..data` symlink rather than writing the file) and on the
 * manifest paths and the destinations file's directory, plus a periodic stat fallback (watchers miss events on some
 * filesystems and across symlink swaps); file bursts are debounced, and a
 * reload parses only the files whose stat signature changed. Kubernetes
 * events go to the compiler as they arrive and are published together at the
 * end of the current turn of the event loop (no debounce: one pod's change
 * reaches the engine in milliseconds). Bad input never takes the good policy
 * away: an unreadable annotations file keeps the last good annotations, a
 * malformed line keeps that key's last good value, a manifest file that stops
 * parsing keeps its last good content, an unreadable destinations file keeps
 * its last good entries (a bad line is left out, the others count), and the Kubernetes watch keeps its
 * last objects while the API is down. Each of those stays in `problems` until
 * it is fixed.
 *
 * With `endpoints` set (the HTTP layer is on), Services and EndpointSlices
 * also feed the endpoints compiler (endpoints.ts), and each change of the
 * endpoints table is an `endpoints` event: the Service addresses that
 * changed, as an EndpointsUpdate onto the previous endpoints generation (the
 * whole table first, with `endpointsTable()`). The endpoints have their own
 * generations: a scaling Deployment does not touch the port policy. The
 * static `--endpoints FILE` is watched like the destinations file and read
 * again only once its signature changed (its first entries and signature
 * come from the owner's start-up read, or from an earlier worker's last good
 * read): an edit replaces its entries (an `endpointsFile` event), while an
 * edit with a bad line, or a deleted file, keeps the last good entries and
 * stays in `problems` until fixed.
 *
 * In the sidecar this runs in a worker thread (worker.ts), so parsing and
 * compiling never hold up the proxy's event loop.
 */

import { EventEmitter } from 'node:events';
import { watch, type FSWatcher } from 'node:fs';
import { basename, dirname } from 'node:path';
import { MAX_ANNOTATIONS_BYTES, parseDownwardApi } from './downward-api.js';
import { listManifestFiles, loadManifestFile, MAX_MANIFEST_BYTES, parseManifestText, type ManifestFile } from './k8s/manifests.js';
import type { KubeWatch, KubeWatchOptions } from './k8s/watch.js';
import { PolicyCompiler, type CompilerChange } from './compiler.js';
import { EndpointsCompiler } from './endpoints.js';
import type { EndpointsUpdate, ServiceEndpointsSpec } from '../engine/index.js';
import { settingsOf } from './compile.js';
import type { EffectivePolicy, MeshSettings, PolicyChange, PolicyFrame, PolicyTable } from './model.js';
import { parseDestinationsFile } from './mesh-destinations.js';
import { parseEndpointsFile } from './endpoints-file.js';
import { fileSignature } from './file-signature.js';
import { generalProblem, lineProblem, type PolicyProblem } from './problems.js';
import { readWatchedText, type PortRange } from '../config/index.js';

/**
 * Bounds of the files this source re-reads (regular files only:
 * ts/config/watched-file.ts): the annotations file's is downward-api.ts's; a
 * destinations or endpoints file gets a manifest file's.
 */
const MAX_POLICY_FILE_BYTES = MAX_MANIFEST_BYTES;

export interface PolicySourceOptions {
  /** Downward-API annotations file (`--annotations`). */
  readonly annotationsFile?: string | undefined;
  /** Manifest files or folders (`--manifests`, repeatable). */
  readonly manifests?: readonly string[] | undefined;
  /** Watch the Kubernetes API (`--kube`). */
  readonly kube?: boolean | undefined;
  /** `--kubeconfig`; without it, in-cluster config (or the default kubeconfig outside a cluster). */
  readonly kubeconfig?: string | undefined;
  /** Extra options for the watch (tests: backoff). */
  readonly kubeWatch?: Partial<KubeWatchOptions> | undefined;
  readonly clusterNetworks: readonly string[];
  readonly defaultOpaquePorts: readonly PortRange[];
  readonly opaquePorts?: readonly PortRange[] | undefined;
  /** Where `opaquePorts` came from, for sources. */
  readonly opaquePortsOrigin?: string | undefined;
  readonly inboundDetectTimeoutMs: number;
  readonly outboundDetectTimeoutMs: number;
  /** `--namespace` / POD_NAMESPACE. */
  readonly namespace?: string | undefined;
  /** `--pod` / POD_NAME. */
  readonly pod?: string | undefined;
  readonly debounceMs?: number | undefined;
  readonly pollIntervalMs?: number | undefined;
  /** The first table's generation (default 1): a restarted source continues above the engine's. */
  readonly firstGeneration?: number | undefined;
  /**
   * Compile the endpoints table for HTTP balancing (Services and
   * EndpointSlices; the watch then lists EndpointSlices too), starting from
   * the static file's entries; undefined: no endpoints.
   */
  readonly endpoints?: { readonly fromFile: readonly ServiceEndpointsSpec[] } | undefined;
  /** The first endpoints table's generation (default 1). */
  readonly firstEndpointsGeneration?: number | undefined;
  /** `--trust-domain`, `--identity-template`, `--default-inbound-policy` (default: Linkerd's). */
  readonly mesh?: MeshSettings | undefined;
  /** `--destinations FILE`: static meshed destinations. */
  readonly destinationsFile?: string | undefined;
  /**
   * The text of the annotations, destinations or manifest paths that were
   * pipes at start (`<(generate)`), read once by the sidecar's main thread
   * (`readStartPipes`): used instead of opening those paths, which are not
   * watched.
   */
  readonly pipeTexts?: Readonly<Record<string, string>> | undefined;
  /**
   * `--endpoints FILE`, watched: a change replaces the static entries
   * (`endpoints.fromFile` holds the last good ones, read at start or by an
   * earlier worker). Only with `endpoints`.
   */
  readonly endpointsFile?: string | undefined;
  /**
   * The file's signature (file-signature.ts) when `endpoints.fromFile` was
   * read: the file is read again only once it changed.
   */
  readonly endpointsFileSignature?: string | undefined;
}

/** What a `policy` event carries. */
export interface PolicyUpdate {
  readonly generation: number;
  /**
   * `whole`: the first table (get it with `table()`); `delta`: `change`
   * applies to generation `change.base`; `problems`: the table did not
   * change, the problems did.
   */
  readonly kind: 'whole' | 'delta' | 'problems';
  readonly change: PolicyChange | null;
  readonly problems: readonly PolicyProblem[];
  /** Destinations recompiled for this update (first few names, for logs). */
  readonly changed: readonly string[];
}

export interface PolicySourceEvents {
  policy: [PolicyUpdate];
  /** A change of the endpoints table, onto generation `base` (after the first, whole table). */
  endpoints: [EndpointsUpdate];
  /** `--endpoints FILE` changed and its entries now apply (`signature`: the file's, as read). */
  endpointsFile: [services: readonly ServiceEndpointsSpec[], signature: string];
  /**
   * A reload or change check started by a file or Kubernetes change failed
   * (an unexpected error: bad input is a problem in the update, not this);
   * the last good policy stays in force and the next change retries.
   */
  reloadFailed: [err: unknown];
}

/** The origin of objects from the Kubernetes API. */
const KUBE = 'kubernetes-api';
const MANIFEST_PATHS = 'manifest paths';
const DESTINATIONS = 'destinations file';
const ENDPOINTS_FILE = 'endpoints file';

function delta(generation: number, base: number, c: CompilerChange): PolicyChange {
  return {
    generation, base, frame: c.frame, tables: c.tables, dropTables: c.dropTables, addresses: c.addresses, removeAddresses: c.removeAddresses,
  };
}

/** Annotation-derived port policy, kept current. */
export class PolicySource extends EventEmitter<PolicySourceEvents> {
  private readonly opts: PolicySourceOptions;
  private readonly compiler: PolicyCompiler;
  private readonly endpoints: EndpointsCompiler | undefined;
  /** The endpoints generation last published; undefined before the first publish. */
  private endpointsGeneration: number | undefined;
  private annotations: Map<string, string> | undefined;
  private annotationProblems: PolicyProblem[] = [];
  private destinationsRead = false;
  private readonly files = new Map<string, { signature: string; good: boolean }>();
  private kube: KubeWatch | undefined;
  private kubeProblems: PolicyProblem[] = [];
  private watchers: FSWatcher[] = [];
  private poll: NodeJS.Timeout | undefined;
  private debounce: NodeJS.Timeout | undefined;
  private immediate: NodeJS.Immediate | undefined;
  private signature = '';
  private running: Promise<PolicyUpdate> | undefined;
  private again = false;
  private closed = false;
  private last: PolicyUpdate | undefined;
  private problemsKey = '';
  private problems: readonly PolicyProblem[] = [];
  /** The signature of `--endpoints FILE` when last read (starts as the start-up read's). */
  private endpointsFileSeen: string | undefined;

  constructor(options: PolicySourceOptions) {
    super();
    this.opts = options;
    this.compiler = new PolicyCompiler(settingsOf({
      defaultOpaquePorts: options.defaultOpaquePorts,
      opaquePorts: options.opaquePorts ?? [],
      opaquePortsOrigin: options.opaquePortsOrigin,
      clusterNetworks: options.clusterNetworks,
      inboundDetectTimeoutMs: options.inboundDetectTimeoutMs,
      outboundDetectTimeoutMs: options.outboundDetectTimeoutMs,
      identity: { namespace: options.namespace, pod: options.pod },
      mesh: options.mesh,
    }));
    this.endpoints = options.endpoints === undefined ? undefined : new EndpointsCompiler(options.endpoints.fromFile);
    this.endpointsFileSeen = options.endpointsFileSignature;
  }

  /**
   * The problems of the sources themselves, not of their content: the
   * Kubernetes API failing (per kind) or not answered yet. Also part of
   * every update's `problems`.
   */
  sourceProblems(): readonly PolicyProblem[] {
    return this.kubeProblems;
  }

  /** The last published update (undefined before start). */
  current(): PolicyUpdate | undefined {
    return this.last;
  }

  /** The whole table at the current generation (publishes pending changes first). O(cluster). */
  table(): PolicyTable {
    if (this.last !== undefined && this.compiler.dirty) this.publish();
    return this.compiler.table(this.last?.generation ?? 0);
  }

  /** The effective policy (at most `limit` destinations shown) and the number of destinations. O(cluster). */
  effective(limit?: number): { effective: EffectivePolicy; destinations: number } {
    if (this.last !== undefined && this.compiler.dirty) this.publish();
    return this.compiler.effective(limit);
  }

  /** The table's ordered rules at the current generation. */
  frame(): PolicyFrame {
    if (this.last !== undefined && this.compiler.dirty) this.publish();
    return this.compiler.frame();
  }

  stats(): ReturnType<PolicyCompiler['stats']> {
    return this.compiler.stats();
  }

  /** Service addresses in the endpoints table. */
  endpointsSize(): number {
    return this.endpoints?.size ?? 0;
  }

  /**
   * The whole endpoints table at the current endpoints generation
   * (publishes pending changes first); undefined without endpoints. O(table).
   */
  endpointsTable(): EndpointsUpdate | undefined {
    if (this.endpoints === undefined) return undefined;
    if (this.last !== undefined && this.endpoints.dirty) this.publish();
    const generation = this.endpointsGeneration ?? this.opts.firstEndpointsGeneration ?? 1;
    return { generation, base: 0, replace: true, upsert: this.endpoints.whole(), remove: [] };
  }

  /** Loads everything, compiles, starts watching. Resolves with the first policy (a whole table). */
  async start(): Promise<PolicyUpdate> {
    if (this.opts.kube) {
      const { KubeWatch } = await import('./k8s/watch.js');
      const identity = { namespace: this.opts.namespace, pod: this.opts.pod };
      this.kube = await KubeWatch.create({
        kubeconfig: this.opts.kubeconfig,
        // Workload controllers only serve to find this proxy's own workload.
        controllersNamespace: identity.pod === undefined ? undefined : (identity.namespace ?? 'default'),
        endpointSlices: this.endpoints !== undefined,
        ...this.opts.kubeWatch,
      });
      this.kube.on('event', (e) => {
        if (e.type === 'upsert') {
          this.compiler.upsert(KUBE, e.object, e.problems);
          this.endpoints?.upsert(KUBE, e.object);
        } else {
          this.compiler.remove(KUBE, e);
          this.endpoints?.remove(KUBE, e);
        }
        this.soon();
      });
      this.kube.on('status', () => {
        this.readKubeStatus();
        this.soon();
      });
      await this.kube.start();
      this.readKubeStatus();
    }
    // Watchers and the signature first: an edit made while the first
    // reload runs is seen by one or the other, never lost.
    this.installWatchers();
    this.signature = await this.computeSignature();
    const first = await this.reload();
    const every = this.opts.pollIntervalMs ?? 1000;
    this.poll = setInterval(() => {
      this.checkSignature().catch((err: unknown) => this.emit('reloadFailed', err));
    }, every);
    this.poll.unref();
    return first;
  }

  /** Stops watching (files and the Kubernetes API). */
  async close(): Promise<void> {
    this.closed = true;
    if (this.poll) clearInterval(this.poll);
    if (this.debounce) clearTimeout(this.debounce);
    if (this.immediate) clearImmediate(this.immediate);
    for (const w of this.watchers) w.close();
    this.watchers = [];
    await this.kube?.close();
    await this.running?.catch(() => undefined);
  }

  /** Re-reads the files and publishes (serialised; concurrent calls coalesce). */
  reload(): Promise<PolicyUpdate> {
    if (this.running) {
      this.again = true;
      return this.running;
    }
    this.running = (async () => {
      let update: PolicyUpdate;
      do {
        this.again = false;
        await this.readAnnotations();
        await this.readManifests();
        await this.readDestinations();
        await this.readEndpointsFile();
        update = this.publish();
      } while (this.again && !this.closed);
      return update;
    })().finally(() => {
      this.running = undefined;
    });
    return this.running;
  }

  /** Publishes what the Kubernetes watch changed, at the end of this turn of the event loop. */
  private soon(): void {
    if (this.closed || this.immediate || this.last === undefined) return;
    this.immediate = setImmediate(() => {
      this.immediate = undefined;
      if (this.closed) return;
      try {
        this.publish();
      } catch (err) {
        this.emit('reloadFailed', err);
      }
    });
  }

  /**
   * One problem per distinct failure, naming every kind it hits (a 403 for
   * one kind is not hidden behind another kind's error; an API server that
   * is down is one line, not one per kind), or, before any error, the kinds
   * whose first list has not answered yet.
   */
  private readKubeStatus(): void {
    const problems: PolicyProblem[] = [];
    const status = this.kube?.status();
    const failures = new Map<string, string[]>();
    for (const [kind, k] of Object.entries(status?.kinds ?? {})) {
      if (k.error === undefined) continue;
      const prefix = `${kind} watch: `;
      const reason = k.error.startsWith(prefix) ? k.error.slice(prefix.length) : k.error;
      failures.set(reason, [...(failures.get(reason) ?? []), kind]);
    }
    if (failures.size > 0) {
      for (const [reason, kinds] of failures) {
        problems.push(generalProblem(`Kubernetes API: ${kinds.join(', ')} ${kinds.length === 1 ? 'watch' : 'watches'}: ${reason}; keeping the last known objects`));
      }
    } else if (status && !status.synced) {
      const waiting = Object.entries(status.kinds).filter(([, k]) => !k.synced).map(([kind]) => kind);
      problems.push(generalProblem(`Kubernetes API: no answer yet to the first list of ${waiting.join(', ')}`));
    }
    this.kubeProblems = problems;
  }

  /** Flushes the endpoints compiler and emits its change (the first flush only sets the generation: the whole table goes first). */
  private publishEndpoints(): void {
    if (this.endpoints === undefined) return;
    const change = this.endpoints.flush();
    if (this.endpointsGeneration === undefined) {
      this.endpointsGeneration = this.opts.firstEndpointsGeneration ?? 1;
      return;
    }
    if (change === undefined) return;
    const base = this.endpointsGeneration;
    this.endpointsGeneration = base + 1;
    this.emit('endpoints', { generation: base + 1, base, replace: false, upsert: [...change.upsert], remove: [...change.remove] });
  }

  /** Flushes the compilers and emits the new generation (or new problems). */
  private publish(): PolicyUpdate {
    this.publishEndpoints();
    const change = this.compiler.flush();
    const key = `${this.compiler.problemsVersion}\u0000${this.annotationProblems.map((p) => p.message).join('\u0000')}\u0000${this.kubeProblems.map((p) => p.message).join('\u0000')}`;
    const problemsChanged = key !== this.problemsKey;
    if (problemsChanged) {
      this.problemsKey = key;
      this.problems = Object.freeze([...this.annotationProblems, ...this.kubeProblems, ...this.compiler.problems()]);
    }
    let update: PolicyUpdate;
    if (this.last === undefined) {
      update = { generation: this.opts.firstGeneration ?? 1, kind: 'whole', change: null, problems: this.problems, changed: change?.changed ?? [] };
    } else if (change !== undefined) {
      const generation = this.last.generation + 1;
      update = { generation, kind: 'delta', change: delta(generation, this.last.generation, change), problems: this.problems, changed: change.changed };
    } else if (problemsChanged) {
      update = { generation: this.last.generation, kind: 'problems', change: null, problems: this.problems, changed: [] };
    } else {
      return this.last;
    }
    this.last = Object.freeze(update);
    this.emit('policy', this.last);
    return this.last;
  }

  private schedule(): void {
    if (this.closed) return;
    if (this.debounce) clearTimeout(this.debounce);
    this.debounce = setTimeout(() => {
      this.debounce = undefined;
      this.reload().catch((err: unknown) => this.emit('reloadFailed', err));
    }, this.opts.debounceMs ?? 100);
    this.debounce.unref();
  }

  private installWatchers(): void {
    // Paths given as pipes at start are not watched: their text is fixed.
    const file = this.opts.annotationsFile;
    if (file && this.given(file) === undefined) {
      // The kubelet replaces the file through a `..data` symlink swap: watch the directory, not the file.
      const name = basename(file);
      this.watch(dirname(file), (changed) => changed === null || changed === name || changed.startsWith('..'));
    }
    for (const p of this.opts.manifests ?? []) if (this.given(p) === undefined) this.watch(p, () => true);
    for (const f of [this.opts.destinationsFile, this.endpointsFile()]) {
      if (!f || this.given(f) !== undefined) continue;
      const name = basename(f);
      this.watch(dirname(f), (changed) => changed === null || changed === name || changed.startsWith('..'));
    }
  }

  /** The watched `--endpoints FILE` (only when the endpoints table is compiled). */
  private endpointsFile(): string | undefined {
    return this.endpoints === undefined ? undefined : this.opts.endpointsFile;
  }

  private watch(path: string, relevant: (name: string | null) => boolean): void {
    try {
      const w = watch(path, { persistent: false, recursive: false }, (_event, name) => {
        if (relevant(name)) this.schedule();
      });
      w.on('error', () => undefined); // the stat poll still covers this path
      this.watchers.push(w);
    } catch {
      // A path that does not exist yet: the stat poll notices when it appears.
    }
  }

  private async checkSignature(): Promise<void> {
    if (this.closed) return;
    const sig = await this.computeSignature();
    if (sig !== this.signature) {
      this.signature = sig;
      this.schedule();
    }
  }

  /** mtime/size/inode of a file (file-signature.ts). */
  private static fileSignature(f: string): Promise<string> {
    return fileSignature(f);
  }

  private async computeSignature(): Promise<string> {
    const parts: string[] = [];
    // Paths given as pipes are left out: their text is fixed, and the
    // descriptor `/dev/fd/N` named is closed and may be reused by anything.
    const watched = (p: string | undefined): p is string => p !== undefined && p !== '' && this.given(p) === undefined;
    if (watched(this.opts.annotationsFile)) parts.push(`${this.opts.annotationsFile}:${await PolicySource.fileSignature(this.opts.annotationsFile)}`);
    if (watched(this.opts.destinationsFile)) parts.push(`${this.opts.destinationsFile}:${await PolicySource.fileSignature(this.opts.destinationsFile)}`);
    const endpointsFile = this.endpointsFile();
    if (endpointsFile) parts.push(`${endpointsFile}:${await PolicySource.fileSignature(endpointsFile)}`);
    for (const p of (this.opts.manifests ?? []).filter(watched)) {
      try {
        for (const f of await listManifestFiles(p)) parts.push(`${f}:${await PolicySource.fileSignature(f)}`);
      } catch {
        parts.push(`${p}:missing`);
      }
    }
    return parts.join('|');
  }

  private async readAnnotations(): Promise<void> {
    const file = this.opts.annotationsFile;
    if (!file) return;
    let text: string;
    try {
      text = this.given(file) ?? (await readWatchedText(file, MAX_ANNOTATIONS_BYTES));
    } catch (err) {
      const keep = this.annotations ? '; keeping the last good annotations' : '';
      this.annotationProblems = [generalProblem(`annotations file ${file}: cannot read: ${(err as Error).message}${keep}`, file)];
      return;
    }
    const parsed = parseDownwardApi(text);
    const values = new Map(parsed.values);
    const problems: PolicyProblem[] = [];
    for (const e of parsed.errors) {
      let reason = e.message;
      // A malformed line must not silently drop that annotation: keep its last good value.
      if (e.key !== undefined && !values.has(e.key) && this.annotations?.has(e.key)) {
        values.set(e.key, this.annotations.get(e.key) as string);
        reason += `; keeping the last good value of ${e.key}`;
      }
      problems.push(lineProblem(file, e.line, reason, e.key));
    }
    this.annotations = values;
    this.annotationProblems = problems;
    this.compiler.setSelfAnnotations(Object.fromEntries(values), file);
  }

  /**
   * The text of a path given as a pipe at start (`--destinations
   * <(generate)`), which the sidecar read once before this source ran
   * (`PolicySourceOptions.pipeTexts`); undefined for a path to read as a
   * watched file. The path itself is never opened here: a restarted worker
   * would find the pipe drained, and a FIFO that appears later in place of a
   * file is refused by `readWatchedText` instead of waited on.
   */
  private given(path: string): string | undefined {
    const texts = this.opts.pipeTexts;
    return texts !== undefined && Object.hasOwn(texts, path) ? texts[path] : undefined;
  }

  /** `--destinations FILE`: an unreadable file keeps its last good entries. */
  private async readDestinations(): Promise<void> {
    const file = this.opts.destinationsFile;
    if (!file) return;
    let text: string;
    try {
      text = this.given(file) ?? (await readWatchedText(file, MAX_POLICY_FILE_BYTES));
    } catch (err) {
      const keep = this.destinationsRead ? '; keeping the last good entries' : '';
      this.compiler.setOriginProblems(DESTINATIONS, [generalProblem(`destinations file ${file}: cannot read: ${(err as Error).message}${keep}`, file)]);
      return;
    }
    this.destinationsRead = true;
    const parsed = parseDestinationsFile(file, text);
    this.compiler.setMeshDestinations(DESTINATIONS, parsed.entries, parsed.problems);
  }

  /**
   * `--endpoints FILE`, re-read on change. The file is taken whole or not at
   * all: one bad line (or an unreadable file) keeps every last good entry in
   * force and is reported as a problem naming the file and line, so a typo
   * never drops a Service's other endpoints. (At start a bad file is a
   * configuration error instead: sidecar.ts reads it first.)
   */
  private async readEndpointsFile(): Promise<void> {
    const file = this.endpointsFile();
    if (!file || this.endpoints === undefined) return;
    // Unchanged since its entries were read (at start, by an earlier worker,
    // or by the last reload): nothing to do.
    const signature = await fileSignature(file);
    if (signature === this.endpointsFileSeen) return;
    this.endpointsFileSeen = signature;
    let text: string;
    try {
      text = await readWatchedText(file, MAX_POLICY_FILE_BYTES);
    } catch (err) {
      this.compiler.setOriginProblems(ENDPOINTS_FILE, [generalProblem(`endpoints file ${file}: cannot read: ${(err as Error).message}; keeping the last good entries`, file)]);
      return;
    }
    const parsed = parseEndpointsFile(text, file);
    if (parsed.problems.length > 0) {
      // The parser's messages already start with `file:line:`.
      this.compiler.setOriginProblems(ENDPOINTS_FILE, parsed.problems.map((p) => generalProblem(`${p.message}; keeping the last good entries of the file`, file)));
      return;
    }
    this.compiler.setOriginProblems(ENDPOINTS_FILE, []);
    this.endpoints.setFile(parsed.services);
    this.emit('endpointsFile', parsed.services, signature);
  }

  /** Parses the manifest files whose signature changed, then applies them all at once. */
  private async readManifests(): Promise<void> {
    const paths = this.opts.manifests ?? [];
    if (paths.length === 0) return;
    const pathProblems: PolicyProblem[] = [];
    const present = new Set<string>();
    const parsed: { file: string; signature: string; result: ManifestFile }[] = [];
    for (const path of paths) {
      const piped = this.given(path);
      if (piped !== undefined) {
        // Parsed again only if it never was: the text does not change.
        present.add(path);
        if (!this.files.has(path)) parsed.push({ file: path, signature: 'pipe', result: parseManifestText(path, piped) });
        continue;
      }
      let list: string[];
      try {
        list = await listManifestFiles(path);
      } catch (err) {
        pathProblems.push(generalProblem(`${path}: cannot read manifests: ${(err as Error).message}`, path));
        continue;
      }
      for (const file of list) {
        present.add(file);
        const signature = await PolicySource.fileSignature(file);
        if (this.files.get(file)?.signature === signature) continue;
        parsed.push({ file, signature, result: await loadManifestFile(file) });
      }
    }
    // Applied together, after all the reading: a published table never shows half a reload.
    for (const { file, signature, result } of parsed) {
      const known = this.files.get(file);
      if (result.parsed) {
        this.compiler.setOrigin(file, result.objects, result.problems);
        this.endpoints?.setOrigin(file, result.objects);
        this.files.set(file, { signature, good: true });
      } else if (known?.good) {
        this.compiler.setOriginProblems(file, [...result.problems, generalProblem(`${file}: keeping its last good content until it parses again`, file)]);
        this.files.set(file, { signature, good: true });
      } else {
        this.compiler.setOrigin(file, result.objects, result.problems); // never parsed: its valid documents still count
        this.endpoints?.setOrigin(file, result.objects);
        this.files.set(file, { signature, good: false });
      }
    }
    for (const file of [...this.files.keys()]) {
      if (present.has(file)) continue;
      this.compiler.setOrigin(file, [], []);
      this.endpoints?.setOrigin(file, []);
      this.files.delete(file);
    }
    this.compiler.setOriginProblems(MANIFEST_PATHS, pathProblems);
  }
}

/** Creates a policy source; call `start()` to load and begin watching. */
export function createPolicySource(options: PolicySourceOptions): PolicySource {
  return new PolicySource(options);
}
