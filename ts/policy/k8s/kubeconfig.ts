/**
 * Where the Kubernetes API is and how to authenticate to it, for `--kube`.
 *
 * `--kubeconfig FILE`, else the in-cluster service account when
 * KUBERNETES_SERVICE_HOST is set, else the default kubeconfig ($KUBECONFIG,
 * first entry, or ~/.kube/config). Read here, without
 * @kubernetes/client-node (importing it loads every generated API model: a
 * large share of a sidecar's start time and memory budget): the server, its CA (file
 * or data) or insecure-skip-tls-verify, tls-server-name, and a bearer token
 * (inline or a token file, re-read so rotated service-account tokens keep
 * working), client certificates, or basic auth. A kubeconfig that needs more
 * (an exec plugin, an auth-provider, a proxy-url) is handed to
 * @kubernetes/client-node, loaded only then.
 */

import { readFileSync } from 'node:fs';
import { readWatchedText } from '../../config/watched-file.js';
import type https from 'node:https';
import { homedir } from 'node:os';
import { dirname, isAbsolute, join } from 'node:path';
import { parse } from 'yaml';
import { MeshpipeError } from '../../errors.js';

/** The API server and a function that adds credentials to a request. */
export interface ApiCredentials {
  readonly server: URL;
  apply(options: https.RequestOptions): Promise<void>;
}

const SERVICE_ACCOUNT = '/var/run/secrets/kubernetes.io/serviceaccount';
/** How long a token read from a file is reused before it is read again (rotated tokens). */
const TOKEN_TTL_MS = 60_000;

type Raw = Record<string, unknown>;

function rec(v: unknown): Raw {
  return typeof v === 'object' && v !== null && !Array.isArray(v) ? (v as Raw) : {};
}

function str(v: unknown): string | undefined {
  return typeof v === 'string' && v !== '' ? v : undefined;
}

function named(list: unknown, name: string | undefined, field: string): Raw {
  const found = (Array.isArray(list) ? list : []).map(rec).find((e) => e['name'] === name);
  return rec(found?.[field]);
}

/** A projected token is a JWT of a few KiB. */
const MAX_TOKEN_BYTES = 1024 * 1024;

/**
 * A token read from a file, cached briefly. The kubelet rotates it in place,
 * so it is read again for the life of the proxy: as a regular file only
 * (a FIFO would hold the read until a writer came: ts/config/watched-file.ts).
 */
function tokenFile(path: string): () => Promise<string> {
  let cached: { token: string; at: number } | undefined;
  return async () => {
    if (cached && Date.now() - cached.at < TOKEN_TTL_MS) return cached.token;
    const token = (await readWatchedText(path, MAX_TOKEN_BYTES)).trim();
    cached = { token, at: Date.now() };
    return token;
  };
}

function credentials(
  server: string,
  tls: { ca?: Buffer | undefined; insecure: boolean; serverName?: string | undefined; cert?: Buffer | undefined; key?: Buffer | undefined },
  auth: { token?: (() => Promise<string>) | undefined; basic?: string | undefined },
): ApiCredentials {
  const url = new URL(server);
  if (url.protocol === 'http:' && !tls.insecure) {
    throw new Error(`server ${server} is plain HTTP: set insecure-skip-tls-verify to allow it`);
  }
  return {
    server: url,
    async apply(options) {
      const headers = { ...(options.headers as Record<string, string> | undefined) };
      if (auth.token) headers['authorization'] = `Bearer ${await auth.token()}`;
      options.headers = headers;
      if (auth.basic !== undefined) options.auth = auth.basic;
      if (tls.ca) options.ca = tls.ca;
      if (tls.cert) options.cert = tls.cert;
      if (tls.key) options.key = tls.key;
      if (tls.serverName) options.servername = tls.serverName;
      if (tls.insecure) options.rejectUnauthorized = false;
    },
  };
}

/** In-cluster: the pod's service account. */
function inCluster(): ApiCredentials {
  const host = process.env['KUBERNETES_SERVICE_HOST'] ?? '';
  const port = process.env['KUBERNETES_SERVICE_PORT'] ?? '443';
  const server = `https://${host.includes(':') ? `[${host}]` : host}:${port}`;
  return credentials(server, { ca: readFileSync(join(SERVICE_ACCOUNT, 'ca.crt')), insecure: false }, { token: tokenFile(join(SERVICE_ACCOUNT, 'token')) });
}

/** A kubeconfig file, or undefined when it needs @kubernetes/client-node. */
function fromFile(path: string): ApiCredentials | undefined {
  const doc = rec(parse(readFileSync(path, 'utf8')) as unknown);
  const contextName = str(doc['current-context']);
  const context = named(doc['contexts'], contextName, 'context');
  const cluster = named(doc['clusters'], str(context['cluster']), 'cluster');
  const user = named(doc['users'], str(context['user']), 'user');
  const server = str(cluster['server']);
  if (server === undefined) {
    throw new Error(contextName === undefined ? 'no current-context' : `context ${contextName} names no cluster with a server`);
  }
  if (user['exec'] !== undefined || user['auth-provider'] !== undefined || cluster['proxy-url'] !== undefined) return undefined;
  const base = dirname(path);
  const file = (p: unknown): Buffer | undefined => (typeof p === 'string' ? readFileSync(isAbsolute(p) ? p : join(base, p)) : undefined);
  const data = (d: unknown): Buffer | undefined => (typeof d === 'string' ? Buffer.from(d, 'base64') : undefined);
  const token = str(user['token']);
  const tokenPath = str(user['tokenFile']);
  const username = str(user['username']);
  return credentials(server, {
    ca: data(cluster['certificate-authority-data']) ?? file(cluster['certificate-authority']),
    insecure: cluster['insecure-skip-tls-verify'] === true,
    serverName: str(cluster['tls-server-name']),
    cert: data(user['client-certificate-data']) ?? file(user['client-certificate']),
    key: data(user['client-key-data']) ?? file(user['client-key']),
  }, {
    token: token !== undefined ? () => Promise.resolve(token) : tokenPath !== undefined ? tokenFile(isAbsolute(tokenPath) ? tokenPath : join(base, tokenPath)) : undefined,
    basic: username === undefined ? undefined : `${username}:${str(user['password']) ?? ''}`,
  });
}

/** The full library, for kubeconfigs with exec plugins, auth providers or proxies. */
async function viaLibrary(path: string): Promise<ApiCredentials> {
  const { KubeConfig } = await import('@kubernetes/client-node');
  const kc = new KubeConfig();
  kc.loadFromFile(path);
  const cluster = kc.getCurrentCluster();
  if (!cluster) throw new Error('no current cluster');
  return { server: new URL(cluster.server), apply: (options) => kc.applyToHTTPSOptions(options) };
}

/**
 * Loads the credentials as documented above.
 * @throws MeshpipeError ERR_INVALID_CONFIG naming the file and what is wrong.
 */
export async function loadCredentials(kubeconfig: string | undefined): Promise<ApiCredentials> {
  const path = kubeconfig ?? (process.env['KUBERNETES_SERVICE_HOST'] ? undefined
    : process.env['KUBECONFIG']?.split(':').find((p) => p !== '') ?? join(homedir(), '.kube', 'config'));
  try {
    if (path === undefined) return inCluster();
    return fromFile(path) ?? (await viaLibrary(path));
  } catch (err) {
    const what = kubeconfig !== undefined ? `--kubeconfig ${kubeconfig}` : path === undefined ? 'the in-cluster service account' : `the default kubeconfig ${path}`;
    const hint = kubeconfig !== undefined
      ? ''
      : path === undefined
        ? ` (in a pod, --kube reads the service account's token and ca.crt in ${SERVICE_ACCOUNT}; they are missing when `
          + 'automountServiceAccountToken is false on the pod or its ServiceAccount: set it to true, or run without --kube '
          + '(an injected pod: annotate it config.meshpipe.io/kube-watch: disabled))'
        : ' (--kube needs --kubeconfig FILE, or a pod with KUBERNETES_SERVICE_HOST and a service account)';
    throw new MeshpipeError('ERR_INVALID_CONFIG', `${what}: cannot load: ${(err as Error).message}${hint}`, { key: 'kubeconfig', cause: err });
  }
}
