/**
 * PolicyProblem: something wrong in the policy inputs (an object's annotation
 * or field, a line of the downward-API file, a manifest document, the
 * Kubernetes API), named precisely enough to fix, while the rest of the
 * policy still applies.
 *
 * A leaf of the policy layer: the loaders in k8s/ and the compiler both
 * report problems, and model.ts (whose PolicyInputs holds the loaded
 * manifests) depends on k8s/, so the problem type lives here rather than in
 * model.ts, which would make k8s/ and model.ts import each other.
 */

import { describeRef, type ObjectRef } from './k8s/objects.js';

/** Something wrong in the inputs; the rest of the policy still applies. */
export interface PolicyProblem {
  /** The object carrying the bad value (undefined for file-level problems). */
  readonly object: ObjectRef | undefined;
  readonly file: string | undefined;
  /** 0-based YAML document index within `file`. */
  readonly document: number | undefined;
  /** 1-based line (downward-API file). */
  readonly line: number | undefined;
  /** The annotation (or field) that carried the bad value. */
  readonly annotation: string | undefined;
  /** The bad token as written. */
  readonly token: string;
  readonly reason: string;
  /** One line naming all of the above. */
  readonly message: string;
}

/** A problem in an object's annotation or field. */
export function objectProblem(object: ObjectRef, annotation: string, token: string, reason: string, file?: string): PolicyProblem {
  const where = file === undefined ? '' : ` (${file})`;
  const tok = ` "${token}"`;
  return Object.freeze({
    object, file, document: undefined, line: undefined, annotation, token, reason,
    message: `${describeRef(object)}${where}: ${annotation}:${tok}: ${reason}`,
  });
}

/** A problem on a line of a downward-API file. */
export function lineProblem(file: string, line: number, reason: string, annotation?: string): PolicyProblem {
  return Object.freeze({
    object: undefined, file, document: undefined, line, annotation, token: '', reason,
    message: `${file}: ${reason}`,
  });
}

/** A problem not tied to an object or a file (e.g. the Kubernetes API being unreachable). */
export function generalProblem(reason: string, token = ''): PolicyProblem {
  return Object.freeze({
    object: undefined, file: undefined, document: undefined, line: undefined, annotation: undefined, token, reason,
    message: reason,
  });
}
