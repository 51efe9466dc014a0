/**
 * The proxy's uid against the iptables rules of `meshpipe init`, read at
 * start when the proxy can read them (as root).
 *
 * `meshpipe init` exempts one uid from the outbound redirection (default
 * 2102): the proxy's own connections must leave the pod, not come back into
 * its outbound listener. A proxy started as root after `init` (the easy
 * mistake: `sudo meshpipe proxy`) has every outgoing connection redirected
 * back into itself, forwarded again, redirected again, until the descriptors
 * run out. Root can read the nat table, so in the sidecar layout a root proxy
 * looks: if the rules exempt another uid it refuses to start (exit 2) and
 * says how to run it. (Under another uid the table cannot be read; `meshpipe
 * proxy --init-state FILE` checks the same from the file `init` wrote.)
 */
import type { ProxyConfig } from '../config/index.js';
import { MeshpipeError } from '../errors.js';
import { detectTool, OUTPUT_CHAIN, readNatState } from '../init/index.js';

/** The uid `meshpipe init`'s outbound rules exempt, or undefined (no rules, or they cannot be read). */
export async function exemptUid(): Promise<number | undefined> {
  try {
    const { state } = await readNatState(await detectTool('ipv4'));
    for (const rule of state.rules) {
      if (rule.chain !== OUTPUT_CHAIN) continue;
      const at = rule.args.indexOf('--uid-owner');
      if (at >= 0) return Number(rule.args[at + 1]);
    }
  } catch {
    // No iptables, or no permission: nothing to compare with.
  }
  return undefined;
}

/**
 * Refuses to start a sidecar-layout proxy as root when `meshpipe init`
 * exempts another uid.
 * @throws MeshpipeError ERR_INVALID_CONFIG (exit 2)
 */
export async function checkExemptUid(config: ProxyConfig, uid: number | undefined = process.getuid?.()): Promise<void> {
  if (config.forward.length > 0 || config.outbound === null || uid !== 0) return;
  const exempt = await exemptUid();
  if (exempt === undefined || exempt === uid || Number.isNaN(exempt)) return;
  throw new MeshpipeError(
    'ERR_INVALID_CONFIG',
    `meshpipe init redirects this network namespace's outgoing TCP and exempts uid ${exempt}, but this proxy runs as uid ${uid} (root): its own connections would be redirected back into its outbound listener, in a loop. Run it as uid ${exempt}, e.g. setpriv --reuid=${exempt} --regid=${exempt} --clear-groups -- meshpipe proxy ...`,
    { key: 'outbound' },
  );
}
