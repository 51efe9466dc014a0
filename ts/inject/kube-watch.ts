/**
 * Whether the injected proxy watches the Kubernetes API (`meshpipe proxy
 * --kube`), read from the pod's (or its namespace's) annotation over the
 * injector's cluster-wide default.
 *
 * With the watch, the proxy learns from the API server which destinations
 * are meshed (pods with the sidecar and an identity: it originates mutual
 * TLS to them) and the Servers, AuthorizationPolicies, authentications and
 * annotations of the other workloads. Without it the proxy knows only its
 * own pod's annotations: it accepts mutual TLS inbound, but sends everything
 * outbound in plaintext. So the watch is on by default; its price is read
 * access to the API for the pod's service account
 * (deploy/kubernetes/proxy-rbac.yaml). Without that access the proxy still
 * starts and serves (the problem is logged and shown on /ready).
 *
 * The watch authenticates with the pod's service account token, which the
 * API server's ServiceAccount admission mounts into every container, the
 * proxy's included (built-in admission runs again after a webhook changes a
 * pod). Injection never turns it off, and never turns it on against the
 * pod's choice: a pod whose spec sets `automountServiceAccountToken: false`
 * gets a proxy without `--kube` (with it, the proxy could not load its
 * credentials and would not start) and a warning saying so. A ServiceAccount
 * that sets it false is not visible here; such a proxy exits at start naming
 * the missing token and this annotation.
 */
import { PROXY_RBAC_MANIFEST } from '../policy/index.js';
import { lookup, problemWith, type AnnotationProblem, type AnnotationSources } from './annotations.js';
import type { JsonObject } from './kinds.js';

/** `enabled` | `disabled`, on the pod or its namespace. */
export const KUBE_WATCH_KEY = 'config.meshpipe.io/kube-watch';

export { PROXY_RBAC_MANIFEST };

/** The flag that turns the watch on in `meshpipe proxy`. */
export const KUBE_WATCH_FLAG = '--kube';

export interface KubeWatchSettings {
  readonly enabled: boolean;
  /** Why a watch that was asked for is left out (the pod has no token), for the report; undefined otherwise. */
  readonly warning: AnnotationProblem | undefined;
}

/**
 * The watch for one pod: its own annotation, else its namespace's, else
 * `defaultEnabled` (`--kube-watch`); off when the pod disables its service
 * account token. A bad value is appended to `problems` and decides nothing.
 */
export function readKubeWatch(src: AnnotationSources, defaultEnabled: boolean, spec: JsonObject, problems: AnnotationProblem[]): KubeWatchSettings {
  const found = lookup(src, KUBE_WATCH_KEY);
  let enabled = defaultEnabled;
  if (found !== undefined) {
    const v = found.value.trim();
    if (v === 'enabled') enabled = true;
    else if (v === 'disabled') enabled = false;
    else problemWith(src, problems, found, KUBE_WATCH_KEY, 'expected "enabled" or "disabled"');
  }
  if (enabled && spec['automountServiceAccountToken'] === false) {
    return {
      enabled: false,
      warning: {
        object: src.podObject, field: true, key: 'spec.automountServiceAccountToken', value: 'false',
        message: `no API token for the proxy, so it runs without ${KUBE_WATCH_FLAG} (no outbound mTLS, no other workloads' policy): `
          + `set it to true, or annotate ${KUBE_WATCH_KEY}: disabled`,
      },
    };
  }
  return { enabled, warning: undefined };
}

/** The proxy's flags for these settings. */
export function kubeWatchArgs(s: KubeWatchSettings): string[] {
  return s.enabled ? [KUBE_WATCH_FLAG] : [];
}
