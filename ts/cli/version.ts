/**
 * The meshpipe version, read from package.json (three levels up from
 * dist/ts/cli/version.js): `meshpipe --version`, and the version the injector
 * writes into the pods it injects.
 */
import { readFileSync } from 'node:fs';

let cached: string | undefined;

export function packageVersion(): string {
  cached ??= (JSON.parse(readFileSync(new URL('../../../package.json', import.meta.url), 'utf8')) as { version: string }).version;
  return cached;
}
