/**
 * The containers and volumes injection adds to a pod, built from the pod's
 * settings (annotations.ts) and the injector's options.
 *
 * - `meshpipe-init`: runs `meshpipe init` (iptables redirection: inbound to
 *   4143, outbound to 4140, the proxy's uid and the admin port exempt, plus the
 *   pod's skip ports and subnets), as root with only NET_ADMIN and NET_RAW, a
 *   read-only root filesystem and an emptyDir on /run for the xtables lock.
 * - `meshpipe-proxy`: runs `meshpipe proxy` in its sidecar layout as the
 *   proxy uid (2102 unless `config.linkerd.io/proxy-uid` says otherwise, the
 *   uid `meshpipe init` exempts), no capabilities, read-only root filesystem.
 *   It reads the pod's annotations from the downward-API volume (re-read on
 *   change) and its identity from POD_NAMESPACE/POD_NAME, with POD_IP and
 *   POD_IPS (`status.podIPs`) for the inbound address check; with
 *   `--kube` (kube-watch.ts, on unless the pod or `--kube-watch` says
 *   otherwise) it also watches the API with the pod's service account for
 *   the meshed destinations and the other workloads' policy. Admin on
 *   0.0.0.0:4191, where the kubelet's probes reach it: startup and readiness on
 *   `/ready`, liveness on `/live`. Native sidecar (an init container with
 *   `restartPolicy: Always`, Kubernetes >= 1.29: it starts, and passes its
 *   startup probe, before the app's init containers and containers, and stops
 *   after them) or a classic first container.
 * - Volumes: `meshpipe-podinfo` (downward API: annotations, labels),
 *   `meshpipe-xtables-lock` (emptyDir) and, unless the pod's identity is
 *   off, `meshpipe-identity` (identity.ts: cert-manager's CSI driver or a
 *   Secret), mounted read-only at /var/run/meshpipe/identity for
 *   `--identity-dir`.
 *
 * Everything added is named `meshpipe-*`, which is how uninject finds it.
 * The proxy's pieces are assembled from parts (below): volumes, mounts, env
 * and flags; the identity is one of them.
 */
import { formatDuration } from '../config/index.js';
import type { PodSettings } from './annotations.js';
import { IDENTITY_VOLUME, identityPart, type IdentityDefaults, type IdentitySettings } from './identity.js';
import type { JsonObject } from './kinds.js';
import { kubeWatchArgs, type KubeWatchSettings } from './kube-watch.js';

export const NAMES = Object.freeze({
  init: 'meshpipe-init',
  proxy: 'meshpipe-proxy',
  podinfoVolume: 'meshpipe-podinfo',
  xtablesVolume: 'meshpipe-xtables-lock',
  identityVolume: IDENTITY_VOLUME,
});

/** Every container and volume name injection adds starts with this. */
export const NAME_PREFIX = 'meshpipe-';

export const PORTS = Object.freeze({ inbound: 4143, outbound: 4140, admin: 4191 });

/** Where the downward-API volume is mounted in the proxy container. */
export const PODINFO_DIR = '/var/run/meshpipe/podinfo';

/** The binary both containers run (on PATH in the meshpipe image). */
export const BINARY = 'meshpipe';

export type SidecarMode = 'native' | 'classic';

/** The injector's own options (flags of `meshpipe inject` / `meshpipe injector`). */
export interface InjectOptions {
  /** Image of the proxy container. */
  readonly image: string;
  /** Image of the init container (iptables included). */
  readonly initImage: string;
  readonly imagePullPolicy: 'Always' | 'IfNotPresent' | 'Never';
  /** Used when the pod does not say (config.linkerd.io/proxy-enable-native-sidecar). */
  readonly sidecar: SidecarMode;
  /** The meshpipe version written into the injected marker annotation. */
  readonly version: string;
  /** Identity for pods whose annotations do not say, the issuer, trust domain and template. */
  readonly identity: IdentityDefaults;
  /** `--kube-watch`: the proxy watches the Kubernetes API (`--kube`) unless the pod's annotations say otherwise. */
  readonly kubeWatch: boolean;
}

/** What one pod's proxy is given besides its settings: its identity and whether it watches the API. */
export interface ProxyChoices {
  readonly identity: IdentitySettings;
  readonly kube: KubeWatchSettings;
}

/** A piece of the proxy's configuration: volumes, mounts, env and flags it needs. */
interface ProxyPart {
  readonly volumes: readonly JsonObject[];
  readonly mounts: readonly JsonObject[];
  readonly env: readonly JsonObject[];
  readonly args: readonly string[];
}

function fieldEnv(name: string, fieldPath: string): JsonObject {
  return { name, valueFrom: { fieldRef: { fieldPath } } };
}

/** The pod's annotations (the proxy's port policy) and labels, as the kubelet keeps them current. */
function podinfoPart(): ProxyPart {
  return {
    volumes: [{
      name: NAMES.podinfoVolume,
      downwardAPI: {
        items: [
          { path: 'annotations', fieldRef: { fieldPath: 'metadata.annotations' } },
          { path: 'labels', fieldRef: { fieldPath: 'metadata.labels' } },
        ],
      },
    }],
    mounts: [{ name: NAMES.podinfoVolume, mountPath: PODINFO_DIR, readOnly: true }],
    args: ['--annotations', `${PODINFO_DIR}/annotations`],
    env: [
      fieldEnv('POD_NAMESPACE', 'metadata.namespace'),
      fieldEnv('POD_NAME', 'metadata.name'),
      fieldEnv('POD_IP', 'status.podIP'),
      fieldEnv('POD_IPS', 'status.podIPs'),
    ],
  };
}

/** The proxy's parts, in order: its own annotations, the API watch (both policy sources), its identity. */
function proxyParts(settings: PodSettings, choices: ProxyChoices, opts: InjectOptions): ProxyPart[] {
  return [podinfoPart(), { volumes: [], mounts: [], env: [], args: kubeWatchArgs(choices.kube) }, identityPart(choices.identity, opts.identity, settings.proxyUid)];
}

function resources(settings: PodSettings): JsonObject | undefined {
  const out: JsonObject = {};
  if (Object.keys(settings.requests).length > 0) out['requests'] = { ...settings.requests };
  if (Object.keys(settings.limits).length > 0) out['limits'] = { ...settings.limits };
  return Object.keys(out).length > 0 ? out : undefined;
}

/** The `meshpipe init` argv for these settings. */
export function initCommand(settings: PodSettings): string[] {
  const argv = [
    BINARY, 'init',
    '--proxy-uid', String(settings.proxyUid),
    '--inbound-port', String(PORTS.inbound),
    '--outbound-port', String(PORTS.outbound),
    '--admin-port', String(PORTS.admin),
  ];
  if (settings.skipInboundPorts !== '') argv.push('--skip-inbound-ports', settings.skipInboundPorts);
  if (settings.skipOutboundPorts !== '') argv.push('--skip-outbound-ports', settings.skipOutboundPorts);
  if (settings.skipSubnets !== '') argv.push('--skip-subnets', settings.skipSubnets);
  return argv;
}

/** The `meshpipe proxy` argv: listeners, then each part's flags, then the drain timeout. */
export function proxyCommand(drainTimeoutMs: number, partArgs: readonly string[]): string[] {
  return [
    BINARY, 'proxy',
    '--inbound', `0.0.0.0:${PORTS.inbound}`,
    '--outbound', `127.0.0.1:${PORTS.outbound}`,
    '--admin', `0.0.0.0:${PORTS.admin}`,
    ...partArgs,
    '--drain-timeout', formatDuration(drainTimeoutMs),
  ];
}

export function initContainer(settings: PodSettings, opts: InjectOptions): JsonObject {
  const c: JsonObject = {
    name: NAMES.init,
    image: opts.initImage,
    imagePullPolicy: opts.imagePullPolicy,
    command: initCommand(settings),
    securityContext: {
      allowPrivilegeEscalation: false,
      capabilities: { add: ['NET_ADMIN', 'NET_RAW'], drop: ['ALL'] },
      readOnlyRootFilesystem: true,
      runAsNonRoot: false,
      runAsUser: 0,
      seccompProfile: { type: 'RuntimeDefault' },
    },
    terminationMessagePolicy: 'FallbackToLogsOnError',
    volumeMounts: [{ name: NAMES.xtablesVolume, mountPath: '/run' }],
  };
  const r = resources(settings);
  if (r !== undefined) c['resources'] = r;
  return c;
}

function httpProbe(path: string, extra: JsonObject): JsonObject {
  return { httpGet: { path, port: PORTS.admin }, ...extra };
}

export function proxyContainer(settings: PodSettings, choices: ProxyChoices, opts: InjectOptions, native: boolean, drainTimeoutMs: number): JsonObject {
  const parts = proxyParts(settings, choices, opts);
  const c: JsonObject = {
    name: NAMES.proxy,
    image: opts.image,
    imagePullPolicy: opts.imagePullPolicy,
    // A native sidecar: started before the app, kept running, stopped after it.
    ...(native ? { restartPolicy: 'Always' } : {}),
    command: proxyCommand(drainTimeoutMs, parts.flatMap((p) => p.args)),
    env: parts.flatMap((p) => p.env),
    ports: [
      { name: 'meshpipe-proxy', containerPort: PORTS.inbound, protocol: 'TCP' },
      { name: 'meshpipe-admin', containerPort: PORTS.admin, protocol: 'TCP' },
    ],
    // The startup probe holds the app (native sidecar) until the listeners are bound.
    startupProbe: httpProbe('/ready', { periodSeconds: 1, failureThreshold: 120, timeoutSeconds: 1 }),
    readinessProbe: httpProbe('/ready', { periodSeconds: 10, failureThreshold: 3, timeoutSeconds: 1 }),
    livenessProbe: httpProbe('/live', { periodSeconds: 10, failureThreshold: 3, timeoutSeconds: 1 }),
    securityContext: {
      allowPrivilegeEscalation: false,
      capabilities: { drop: ['ALL'] },
      readOnlyRootFilesystem: true,
      runAsNonRoot: true,
      runAsUser: settings.proxyUid,
      runAsGroup: settings.proxyUid,
      seccompProfile: { type: 'RuntimeDefault' },
    },
    terminationMessagePolicy: 'FallbackToLogsOnError',
    volumeMounts: parts.flatMap((p) => p.mounts),
  };
  const r = resources(settings);
  if (r !== undefined) c['resources'] = r;
  return c;
}

/** The volumes the added containers mount. */
export function addedVolumes(settings: PodSettings, choices: ProxyChoices, opts: InjectOptions): JsonObject[] {
  return [...proxyParts(settings, choices, opts).flatMap((p) => p.volumes), { name: NAMES.xtablesVolume, emptyDir: {} }];
}
