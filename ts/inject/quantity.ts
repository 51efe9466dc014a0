/**
 * Kubernetes resource quantities (`100m`, `0.5`, `64Mi`, `1G`, `1e3`), as the
 * API server accepts them in `resources.requests`/`limits`: a non-negative
 * decimal number, then at most one suffix, binary (`Ki` .. `Ei`), decimal SI
 * (`n`, `u`, `m`, `k`, `M`, `G`, `T`, `P`, `E`) or a decimal exponent
 * (`e3`, `E-2`). The proxy's resource annotations are checked with this before
 * they reach a pod spec, so a typo is reported on the workload instead of
 * being refused later by the API server (or, in an admission webhook, making
 * every pod of the workload fail to be created).
 */

const BINARY: Readonly<Record<string, number>> = { Ki: 2 ** 10, Mi: 2 ** 20, Gi: 2 ** 30, Ti: 2 ** 40, Pi: 2 ** 50, Ei: 2 ** 60 };
const DECIMAL: Readonly<Record<string, number>> = { n: 1e-9, u: 1e-6, m: 1e-3, '': 1, k: 1e3, M: 1e6, G: 1e9, T: 1e12, P: 1e15, E: 1e18 };

const QUANTITY = /^(\d+(?:\.\d*)?|\.\d+)(?:([eE][+-]?\d+)|(Ki|Mi|Gi|Ti|Pi|Ei|n|u|m|k|M|G|T|P|E))?$/;

/**
 * Parses a quantity into its value (in base units: cores, bytes).
 * @returns the value, or an error naming what is expected.
 */
export function parseQuantity(text: string): { value: number } | { error: string } {
  const m = QUANTITY.exec(text.trim());
  if (m === null || m[1] === undefined) {
    return { error: `"${text}" is not a Kubernetes quantity: expected a non-negative number with an optional suffix, e.g. 100m, 0.5, 64Mi, 1Gi` };
  }
  const base = Number(m[1]);
  if (m[2] !== undefined) return { value: base * 10 ** Number(m[2].slice(1)) };
  const suffix = m[3] ?? '';
  return { value: base * (BINARY[suffix] ?? DECIMAL[suffix] ?? 1) };
}
