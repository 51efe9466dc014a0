/**
 * The injector's Kubernetes credentials: an explicit kubeconfig file, the
 * pod's service account in a cluster, or the default kubeconfig. The
 * injector watches Namespaces with @kubernetes/client-node's informer (see
 * ./namespaces.ts); the sidecar's own policy watch uses a slimmer client
 * (ts/policy/k8s/client.ts) because it runs next to every app.
 */
import { KubeConfig } from '@kubernetes/client-node';
import { MeshpipeError } from '../errors.js';

/** Loads the kubeconfig, or throws ERR_INVALID_CONFIG naming what is missing. */
export function loadKubeConfig(kubeconfig: string | undefined): KubeConfig {
  const kc = new KubeConfig();
  try {
    if (kubeconfig !== undefined) kc.loadFromFile(kubeconfig);
    else if (process.env['KUBERNETES_SERVICE_HOST']) kc.loadFromCluster();
    else kc.loadFromDefault();
  } catch (err) {
    throw new MeshpipeError('ERR_INVALID_CONFIG', `--kubeconfig ${kubeconfig ?? '(default)'}: cannot load: ${(err as Error).message}`, { key: 'kubeconfig', cause: err });
  }
  if (!kc.getCurrentCluster()) {
    throw new MeshpipeError('ERR_INVALID_CONFIG',
      'no Kubernetes cluster is configured: pass --kubeconfig FILE, or run in a pod (KUBERNETES_SERVICE_HOST and a service account)', { key: 'kubeconfig' });
  }
  return kc;
}
