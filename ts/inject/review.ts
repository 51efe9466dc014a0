/**
 * One AdmissionReview (admission.k8s.io/v1) in, its answer out: the
 * injection decision of transform.ts applied to a Pod being created, as a
 * JSONPatch.
 *
 * Only `CREATE` of `pods` (no subresource) is considered; anything else the
 * webhook is sent is allowed unchanged. An injected pod gets `allowed: true`
 * with `patchType: JSONPatch` and the base64 patch. A pod that cannot be
 * injected as asked (invalid annotations, the namespace's annotations not
 * known yet, an internal error) is answered per the failure mode:
 * `allow` lets it through unchanged with a warning naming the problem
 * (kubectl prints it; the pod runs without the proxy), `deny` refuses it
 * with that message (the owner's events show it, e.g. the ReplicaSet's).
 * A pod injected with less than it asked for (a proxy without the API
 * watch: kube-watch.ts) is injected, with a warning naming why (kubectl
 * prints it to whoever created the pod; the log line has it too).
 * The MutatingWebhookConfiguration's `failurePolicy` is separate: it applies
 * only when the API server gets no answer at all (README: the failurePolicy
 * guide).
 */
import type { Annotations } from './annotations.js';
import { formatProblem } from './annotations.js';
import { describeObject, isObject, objectName, type JsonObject, type JsonValue } from './kinds.js';
import { diff } from './patch.js';
import type { InjectOptions } from './sidecar.js';
import { injectTemplate } from './transform.js';

export type FailureMode = 'allow' | 'deny';

/** The outcome of one review, for logs and metrics. */
export type ReviewResult = 'injected' | 'updated' | 'uninjected' | 'unchanged' | 'skipped' | 'ignored' | 'invalid' | 'error';

export interface ReviewContext {
  readonly opts: InjectOptions;
  readonly failureMode: FailureMode;
  /** The namespace's annotations, or why they are not known. */
  namespaceAnnotations(name: string): { readonly annotations: Annotations } | { readonly error: string };
}

export interface ReviewAnswer {
  /** The AdmissionReview to send back. */
  readonly body: JsonObject;
  readonly result: ReviewResult;
  /** What happened, for the log line (object and reason). */
  readonly detail: string;
}

/** A request that is not an AdmissionReview v1 (answered with HTTP 400). */
export class BadReview extends Error {}

const API_VERSION = 'admission.k8s.io/v1';

/** Checks the envelope of a parsed AdmissionReview; returns its request. */
export function readReview(body: unknown): JsonObject {
  const review = body as JsonValue;
  if (!isObject(review)) throw new BadReview('expected a JSON object (an AdmissionReview)');
  if (review['apiVersion'] !== API_VERSION || review['kind'] !== 'AdmissionReview') {
    throw new BadReview(`expected apiVersion ${API_VERSION}, kind AdmissionReview; got ${JSON.stringify(review['apiVersion'])}, ${JSON.stringify(review['kind'])} (set admissionReviewVersions: ["v1"] in the MutatingWebhookConfiguration)`);
  }
  const request = review['request'];
  if (!isObject(request) || typeof request['uid'] !== 'string' || request['uid'] === '') {
    throw new BadReview('the AdmissionReview has no request.uid');
  }
  return request;
}

function respond(uid: string, response: JsonObject): JsonObject {
  return { apiVersion: API_VERSION, kind: 'AdmissionReview', response: { uid, ...response } };
}

/** A failure answered per the failure mode. */
function failure(uid: string, ctx: ReviewContext, what: string, messages: string[], result: ReviewResult): ReviewAnswer {
  const detail = `${what}: ${messages.join('; ')}`;
  if (ctx.failureMode === 'deny') {
    return {
      body: respond(uid, { allowed: false, status: { code: 400, reason: 'BadRequest', message: `meshpipe: ${what} not injected: ${messages.join('; ')}` } }),
      result,
      detail,
    };
  }
  return {
    body: respond(uid, { allowed: true, warnings: [`meshpipe: ${what} created without the meshpipe proxy`, ...messages.map((m) => `meshpipe: ${m}`)] }),
    result,
    detail,
  };
}

/** Answers one review request (see the module doc). Never throws. */
export function answerReview(request: JsonObject, ctx: ReviewContext): ReviewAnswer {
  const uid = request['uid'] as string;
  const kind = isObject(request['kind']) ? request['kind'] : {};
  const resource = isObject(request['resource']) ? request['resource'] : {};
  const isPodCreate = request['operation'] === 'CREATE' && kind['kind'] === 'Pod' && resource['resource'] === 'pods'
    && (request['subResource'] === undefined || request['subResource'] === '');
  if (!isPodCreate) {
    return { body: respond(uid, { allowed: true }), result: 'ignored', detail: `${JSON.stringify(request['operation'] ?? null)} ${JSON.stringify(kind['kind'] ?? null)}: not a pod creation` };
  }
  const pod = request['object'];
  const namespace = typeof request['namespace'] === 'string' ? request['namespace'] : undefined;
  if (!isObject(pod)) return failure(uid, ctx, 'the pod', ['the request carries no pod object'], 'error');
  const object = objectName(pod, namespace);
  const what = describeObject(object);
  try {
    const ns = ctx.namespaceAnnotations(object.namespace ?? 'default');
    if ('error' in ns) return failure(uid, ctx, what, [`the annotations of its namespace are not known: ${ns.error}`], 'error');
    const outcome = injectTemplate({ template: pod, object, namespaceAnnotations: ns.annotations }, ctx.opts, false);
    switch (outcome.action) {
      case 'injected':
      case 'updated':
      case 'uninjected': {
        const patch = diff(pod, outcome.template);
        const warned = outcome.action === 'uninjected' ? [] : outcome.warnings.map(formatProblem);
        return {
          body: respond(uid, {
            allowed: true, patchType: 'JSONPatch', patch: Buffer.from(JSON.stringify(patch)).toString('base64'),
            ...(warned.length > 0 ? { warnings: warned.map((w) => `meshpipe: ${w}`) } : {}),
          }),
          result: outcome.action,
          detail: `${what}: ${outcome.because}${outcome.action === 'uninjected' ? '' : `; ${outcome.identity}`}${warned.map((w) => `; warning: ${w}`).join('')}`,
        };
      }
      case 'unchanged': {
        const warned = outcome.warnings.map(formatProblem);
        return {
          body: respond(uid, warned.length > 0 ? { allowed: true, warnings: warned.map((w) => `meshpipe: ${w}`) } : { allowed: true }),
          result: 'unchanged',
          detail: `${what}: ${outcome.because}${warned.map((w) => `; warning: ${w}`).join('')}`,
        };
      }
      case 'skipped':
        return {
          body: respond(uid, outcome.warn ? { allowed: true, warnings: [`meshpipe: ${what} not injected: ${outcome.because}`] } : { allowed: true }),
          result: 'skipped',
          detail: `${what}: ${outcome.because}`,
        };
      case 'invalid':
        return failure(uid, ctx, what, outcome.problems.map(formatProblem), 'invalid');
    }
  } catch (err) {
    return failure(uid, ctx, what, [`internal error: ${err instanceof Error ? err.message : String(err)}`], 'error');
  }
}
