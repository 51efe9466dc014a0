/**
 * ts/inject/: Kubernetes injection, as pure transformations of parsed
 * manifests plus the admission webhook that applies them to pods as they are
 * created.
 *
 * kinds.ts finds pod templates; annotations.ts reads what the pod and its
 * namespace ask for (and validates it); identity.ts decides the proxy's mesh
 * identity (cert-manager's CSI driver, a Secret, or none); sidecar.ts builds
 * the containers and volumes; transform.ts injects or uninjects one template; patch.ts turns a
 * change into JSONPatch operations; yaml-docs.ts applies them to YAML
 * documents without disturbing the rest; manifests.ts runs it over a stream
 * (the CLI); review.ts answers one AdmissionReview; webhook.ts serves them
 * over HTTPS (tls-files.ts reloads the certificate, namespaces.ts watches
 * Namespace annotations).
 *
 * Other folders import from here, except namespaces.ts, which is deliberately
 * not re-exported: it loads the Kubernetes client, which only `meshpipe
 * injector` needs (it imports it directly), not `meshpipe inject`.
 */
export { CONFIG_KEYS, DEFAULT_PROXY_UID, INJECT_KEYS, MARKER_KEYS, formatProblem, type AnnotationProblem, type Annotations } from './annotations.js';
export { INJECTABLE_KINDS, POD_TEMPLATE_PATHS, describeObject, findTemplates, getPath, isObject, type JsonObject, type JsonValue, type ObjectName } from './kinds.js';
export { formatReport, injectStream, namespaceAnnotations, uninjectStream, type ReportLine, type StreamResult } from './manifests.js';
export { applyPatch, diff, jsonEqual, pointer, type PatchOp } from './patch.js';
export { parseQuantity } from './quantity.js';
export {
  CSI_DRIVER, DEFAULT_IDENTITY, IDENTITY_DIR, IDENTITY_KEYS, goDuration, groupProblem, kindProblem, namingProblem, objectNameProblem, parseCertDuration, parseRenewBefore,
  type IdentityDefaults, type IdentitySettings,
} from './identity.js';
export { KUBE_WATCH_FLAG, KUBE_WATCH_KEY, PROXY_RBAC_MANIFEST, type KubeWatchSettings } from './kube-watch.js';
export { BINARY, NAMES, PODINFO_DIR, PORTS, initCommand, proxyCommand, type InjectOptions, type SidecarMode } from './sidecar.js';
export { injectTemplate, isInjected, uninjectTemplate, type InjectOutcome, type TemplateInput } from './transform.js';
export { parseStream, renderStream, type ParsedStream } from './yaml-docs.js';
export { answerReview, readReview, BadReview, type FailureMode, type ReviewContext, type ReviewResult } from './review.js';
export { loadTlsPair, TlsFiles } from './tls-files.js';
export { MAX_REVIEW_BYTES, startWebhook, type Webhook, type WebhookOptions } from './webhook.js';
