/**
 * Injection (and uninjection) over a whole stream of manifests, for the CLI:
 * finds every pod template (kinds.ts), takes namespace annotations from the
 * Namespace objects of the same stream, decides per template
 * (transform.ts), and turns each change into patch operations on its
 * document (patch.ts), with one report line per pod template.
 *
 * An object with invalid annotations is left unchanged (in a List, the
 * other items are still injected: their operations do not depend on it).
 * Documents without pod templates are never touched.
 */
import type { AnnotationProblem, Annotations } from './annotations.js';
import { formatProblem } from './annotations.js';
import { describeObject, findTemplates, getPath, isObject, type JsonObject, type ObjectName } from './kinds.js';
import { diff, type PatchOp } from './patch.js';
import type { InjectOptions } from './sidecar.js';
import { injectTemplate, isInjected, uninjectTemplate, type InjectOutcome } from './transform.js';
import type { ParsedStream } from './yaml-docs.js';

export interface ReportLine {
  readonly object: ObjectName;
  readonly action: InjectOutcome['action'] | 'not injected';
  /** The reason (for `invalid`: "left unchanged"). */
  readonly detail: string;
  /**
   * For `invalid`: each problem, naming the object, the annotation, the value and what is expected;
   * for an injected object: what it got less of than it asked for, and why.
   */
  readonly problems?: readonly string[];
  readonly warn: boolean;
}

export interface StreamResult {
  readonly ops: ReadonlyMap<number, PatchOp[]>;
  readonly report: readonly ReportLine[];
  /** True when some object had invalid annotations (and was left unchanged). */
  readonly invalid: boolean;
}

/** Namespace name -> annotations, from the Namespace objects in the stream. */
export function namespaceAnnotations(stream: ParsedStream): Map<string, Annotations> {
  const out = new Map<string, Annotations>();
  for (const d of stream.documents) {
    const objects = isObject(d.json) && Array.isArray(d.json['items']) ? d.json['items'] : [d.json];
    for (const o of objects) {
      if (!isObject(o) || o['kind'] !== 'Namespace') continue;
      const meta = isObject(o['metadata']) ? o['metadata'] : {};
      const ann = isObject(meta['annotations']) ? meta['annotations'] : {};
      if (typeof meta['name'] !== 'string') continue;
      out.set(meta['name'], Object.fromEntries(Object.entries(ann).filter((e): e is [string, string] => typeof e[1] === 'string')));
    }
  }
  return out;
}

/** One report line, and one indented line per problem. */
export function formatReport(line: ReportLine): string {
  const head = `${describeObject(line.object)}: ${line.action}${line.detail !== '' ? ` (${line.detail})` : ''}`;
  return [head, ...(line.problems ?? []).map((p) => `  ${p}`)].join('\n');
}

/** A report line's warning fields for an injected object's warnings. */
function warnings(list: readonly AnnotationProblem[]): Pick<ReportLine, 'problems' | 'warn'> {
  return list.length === 0 ? { warn: false } : { problems: list.map(formatProblem), warn: true };
}

/** Runs injection over every pod template of the stream. */
export function injectStream(stream: ParsedStream, opts: InjectOptions): StreamResult {
  const namespaces = namespaceAnnotations(stream);
  const ops = new Map<number, PatchOp[]>();
  const report: ReportLine[] = [];
  let invalid = false;
  for (const d of stream.documents) {
    const docOps: PatchOp[] = [];
    for (const site of findTemplates(d.json)) {
      const template = getPath(d.json, site.path) as JsonObject;
      const outcome = injectTemplate({
        template,
        object: site.object,
        namespaceAnnotations: namespaces.get(site.object.namespace ?? '') ?? {},
      }, opts, true);
      switch (outcome.action) {
        case 'injected':
        case 'updated':
          docOps.push(...diff(template, outcome.template, site.path));
          report.push({ object: site.object, action: outcome.action, detail: `${outcome.because}; ${outcome.identity}`, ...warnings(outcome.warnings) });
          break;
        case 'uninjected':
          docOps.push(...diff(template, outcome.template, site.path));
          report.push({ object: site.object, action: outcome.action, detail: outcome.because, warn: false });
          break;
        case 'unchanged':
          report.push({ object: site.object, action: 'unchanged', detail: outcome.because, ...warnings(outcome.warnings) });
          break;
        case 'skipped':
          report.push({ object: site.object, action: 'not injected', detail: outcome.because, warn: outcome.warn });
          break;
        case 'invalid':
          invalid = true;
          report.push({ object: site.object, action: 'invalid', detail: 'left unchanged', problems: outcome.problems.map(formatProblem), warn: true });
          break;
      }
    }
    if (docOps.length > 0) ops.set(d.index, docOps);
  }
  return { ops, report, invalid };
}

/** Removes meshpipe from every pod template of the stream. */
export function uninjectStream(stream: ParsedStream): StreamResult {
  const ops = new Map<number, PatchOp[]>();
  const report: ReportLine[] = [];
  for (const d of stream.documents) {
    const docOps: PatchOp[] = [];
    for (const site of findTemplates(d.json)) {
      const template = getPath(d.json, site.path) as JsonObject;
      if (!isInjected(template)) {
        report.push({ object: site.object, action: 'unchanged', detail: 'not injected', warn: false });
        continue;
      }
      docOps.push(...diff(template, uninjectTemplate(template), site.path));
      report.push({ object: site.object, action: 'uninjected', detail: '', warn: false });
    }
    if (docOps.length > 0) ops.set(d.index, docOps);
  }
  return { ops, report, invalid: false };
}
