/**
 * PolicySource: gathers the policy inputs (the workload's downward-API
 * annotations file, manifest files and folders, and optionally a live
 * Kubernetes watch), recompiles when any of them changes and emits a
 * `policy` event with the new PolicyTable, EffectivePolicy and problems.
 *
 * Change detection uses fs.watch on the annotations file's directory (the
 * kubelet swaps a `..data` symlink rather than writing the file) and on the
 * manifest paths, plus a periodic stat fallback (watchers miss events on some
 * filesystems and across symlink swaps); bursts are debounced. Bad input
 * never takes the good policy away: an unreadable annotations file keeps the
 * last good annotations, a malformed line keeps that key's last good value,
 * a manifest file that stops parsing keeps its last good content, and the
 * Kubernetes informers keep their last objects while the API is down. Each of
 * those stays in `problems` until it is fixed.
 */

import type { ServiceEndpointsSpec } from '../engine/index.js';
import { compileEndpoints } from './endpoints.js';
import { EventEmitter } from 'node:events';
import { watch, type FSWatcher } from 'node:fs';
import { readFile, stat } from 'node:fs/promises';
import { basename, dirname } from 'node:path';
import { parseDownwardApi } from './downward-api.js';
import {
  combineManifests,
  listManifestFiles,
  loadManifestFiles,
  mergeManifests,
  type ManifestFile,
} from './k8s/manifests.js';
import type { KubeWatch, KubeWatchOptions } from './k8s/watch.js';
import { compilePolicy, toPolicyTable } from './compile.js';
import type { EffectivePolicy, PolicyInputs, PolicyTable } from './model.js';
import { generalProblem, lineProblem, type PolicyProblem } from './problems.js';
import type { PortRange } from '../config/index.js';

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
  readonly inboundDetectTimeoutMs: number;
  readonly outboundDetectTimeoutMs: number;
  /** `--namespace` / POD_NAMESPACE. */
  readonly namespace?: string | undefined;
  /** `--pod` / POD_NAME. */
  readonly pod?: string | undefined;
  readonly debounceMs?: number | undefined;
  readonly pollIntervalMs?: number | undefined;
}

/** What a `policy` event carries. */
export interface PolicyUpdate {
  readonly generation: number;
  readonly table: PolicyTable;
  readonly effective: EffectivePolicy;
  readonly problems: readonly PolicyProblem[];
  /** Services and their ready endpoints (EndpointSlices), for HTTP balancing (endpoints.ts). */
  readonly endpoints: readonly ServiceEndpointsSpec[];
}

export interface PolicySourceEvents {
  policy: [PolicyUpdate];
  /**
   * A reload or change check started by a file or Kubernetes change failed
   * (an unexpected error: bad input is a problem in the update, not this);
   * the last good policy stays in force and the next change retries.
   */
  reloadFailed: [err: unknown];
}

/** Annotation-derived port policy, kept current. */
export class PolicySource extends EventEmitter<PolicySourceEvents> {
  private readonly opts: PolicySourceOptions;
  private annotations: Map<string, string> | undefined;
  private annotationProblems: PolicyProblem[] = [];
  private readonly goodFiles = new Map<string, ManifestFile>();
  private manifestFiles: ManifestFile[] = [];
  private manifestProblems: PolicyProblem[] = [];
  private kube: KubeWatch | undefined;
  private watchers: FSWatcher[] = [];
  private poll: NodeJS.Timeout | undefined;
  private debounce: NodeJS.Timeout | undefined;
  private signature = '';
  private running: Promise<PolicyUpdate> | undefined;
  private again = false;
  private closed = false;
  private last: PolicyUpdate | undefined;
  private lastRulesJson = '';
  private lastJson = '';

  constructor(options: PolicySourceOptions) {
    super();
    this.opts = options;
  }

  /** The last compiled policy (undefined before start). */
  current(): PolicyUpdate | undefined {
    return this.last;
  }

  /** Loads everything, compiles, starts watching. Resolves with the first policy. */
  async start(): Promise<PolicyUpdate> {
    if (this.opts.kube) {
      const { KubeWatch } = await import('./k8s/watch.js');
      this.kube = new KubeWatch({ kubeconfig: this.opts.kubeconfig, ...this.opts.kubeWatch });
      this.kube.on('change', () => this.schedule());
      await this.kube.start();
    }
    const first = await this.reload();
    this.signature = await this.computeSignature();
    this.installWatchers();
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
    for (const w of this.watchers) w.close();
    this.watchers = [];
    await this.kube?.close();
    await this.running?.catch(() => undefined);
  }

  /** Re-reads every source and recompiles now (serialised; concurrent calls coalesce). */
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
        update = this.compile();
      } while (this.again && !this.closed);
      return update;
    })().finally(() => {
      this.running = undefined;
    });
    return this.running;
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
    const file = this.opts.annotationsFile;
    if (file) {
      // The kubelet replaces the file through a `..data` symlink swap: watch the directory, not the file.
      const name = basename(file);
      this.watch(dirname(file), (changed) => changed === null || changed === name || changed.startsWith('..'));
    }
    for (const p of this.opts.manifests ?? []) this.watch(p, () => true);
  }

  private watch(path: string, relevant: (name: string | null) => boolean): void {
    try {
      const w = watch(path, { persistent: false }, (_event, name) => {
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

  /** mtime/size/inode of every input file: cheap, and catches symlink swaps. */
  private async computeSignature(): Promise<string> {
    const parts: string[] = [];
    const add = async (f: string): Promise<void> => {
      try {
        const s = await stat(f);
        parts.push(`${f}:${s.mtimeMs}:${s.size}:${s.ino}`);
      } catch {
        parts.push(`${f}:missing`);
      }
    };
    if (this.opts.annotationsFile) await add(this.opts.annotationsFile);
    for (const p of this.opts.manifests ?? []) {
      try {
        for (const f of await listManifestFiles(p)) await add(f);
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
      text = await readFile(file, 'utf8');
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
  }

  private async readManifests(): Promise<void> {
    const paths = this.opts.manifests ?? [];
    if (paths.length === 0) return;
    const { files, problems } = await loadManifestFiles(paths);
    const used: ManifestFile[] = [];
    const extra: PolicyProblem[] = [...problems];
    for (const f of files) {
      if (f.parsed) {
        this.goodFiles.set(f.file, f);
        used.push(f);
        continue;
      }
      const good = this.goodFiles.get(f.file);
      if (good) {
        used.push({ ...good, problems: f.problems });
        extra.push(generalProblem(`${f.file}: keeping its last good content until it parses again`, f.file));
      } else {
        used.push(f); // never parsed: its valid documents still count
      }
    }
    this.manifestFiles = used;
    this.manifestProblems = extra;
  }

  private compile(): PolicyUpdate {
    const files = mergeManifests(this.manifestFiles, this.manifestProblems);
    const kubeProblems: PolicyProblem[] = [];
    let manifests = files;
    if (this.kube) {
      manifests = combineManifests(files, this.kube.snapshot());
      const status = this.kube.status();
      if (status.lastError !== undefined) {
        kubeProblems.push(generalProblem(`Kubernetes API: ${status.lastError}; keeping the last known objects`));
      } else if (!status.synced) {
        const waiting = Object.entries(status.kinds).filter(([, k]) => !k.synced).map(([kind]) => kind);
        kubeProblems.push(generalProblem(`Kubernetes API: no answer yet to the first list of ${waiting.join(', ')}`));
      }
    }
    const inputs: PolicyInputs = {
      defaultOpaquePorts: this.opts.defaultOpaquePorts,
      opaquePorts: this.opts.opaquePorts ?? [],
      clusterNetworks: this.opts.clusterNetworks,
      inboundDetectTimeoutMs: this.opts.inboundDetectTimeoutMs,
      outboundDetectTimeoutMs: this.opts.outboundDetectTimeoutMs,
      workloadAnnotations: this.annotations ? Object.fromEntries(this.annotations) : undefined,
      workloadAnnotationsOrigin: this.opts.annotationsFile,
      manifests,
      identity: { namespace: this.opts.namespace, pod: this.opts.pod },
    };
    const result = compilePolicy(inputs);
    const problems = [...this.annotationProblems, ...kubeProblems, ...result.problems];
    const rulesJson = JSON.stringify(toPolicyTable(result.effective, 0).rules);
    const generation = (this.last?.generation ?? 0) + (rulesJson === this.lastRulesJson ? 0 : 1);
    const endpoints = compileEndpoints(manifests.services, manifests.endpointSlices);
    const update: PolicyUpdate = Object.freeze({
      generation,
      table: toPolicyTable(result.effective, generation),
      effective: result.effective,
      problems: Object.freeze(problems),
      endpoints: Object.freeze(endpoints),
    });
    const json = JSON.stringify({ e: update.effective, p: problems.map((p) => p.message), generation, endpoints });
    this.lastRulesJson = rulesJson;
    if (json !== this.lastJson) {
      this.lastJson = json;
      this.last = update;
      this.emit('policy', update);
    }
    return this.last ?? update;
  }
}

/** Creates a policy source; call `start()` to load and begin watching. */
export function createPolicySource(options: PolicySourceOptions): PolicySource {
  return new PolicySource(options);
}
