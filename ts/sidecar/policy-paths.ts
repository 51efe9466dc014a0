/**
 * The policy files named at start must exist.
 *
 * A policy source that stops being readable while the proxy runs keeps its
 * last good objects and is reported (ts/policy/source.ts): a sidecar must not
 * fall over because a mounted file is swapped. At start there is nothing
 * "last good" to keep, and a path that does not exist is almost always a
 * typo: the proxy would run with nothing but the defaults and a warning that
 * is easy to miss. So, as `meshpipe explain` and `meshpipe init` do, the
 * proxy refuses to start (exit 2) naming the path and where it came from.
 */
import { stat } from 'node:fs/promises';
import type { ProxyConfig } from '../config/index.js';
import { MeshpipeError } from '../errors.js';

/**
 * Checks that `--annotations` and every `--manifests` path exist.
 * @throws MeshpipeError ERR_INVALID_CONFIG (exit 2) naming the first missing path.
 */
export async function checkPolicyPathsExist(config: Pick<ProxyConfig, 'annotations' | 'manifests' | 'sources'>): Promise<void> {
  type Entry = readonly [key: 'annotations' | 'manifests', path: string, expected: string];
  const paths: Entry[] = [
    ...(config.annotations !== undefined ? [['annotations', config.annotations, 'the workload\'s annotations file (downward-API format)'] as Entry] : []),
    ...config.manifests.map((path): Entry => ['manifests', path, 'a Kubernetes manifest file or a folder of them']),
  ];
  for (const [key, path, expected] of paths) {
    try {
      await stat(path);
    } catch (err) {
      const why = (err as NodeJS.ErrnoException).code === 'ENOENT' ? 'no such file or folder' : (err as Error).message;
      throw new MeshpipeError('ERR_INVALID_CONFIG', `${key} ${JSON.stringify(path)} (from ${config.sources[key]}): ${why}; expected ${expected}`, { key });
    }
  }
}
