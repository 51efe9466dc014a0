/**
 * `meshpipe uninject [FILE|-]`: removes what `meshpipe inject` added (the
 * meshpipe-init and meshpipe-proxy containers, the meshpipe-* volumes, the
 * marker annotations, a raised terminationGracePeriodSeconds) from every pod
 * template of the manifests, and writes them on stdout (`--dry-run`: a
 * unified diff). Documents without injected pod templates are written back
 * byte for byte. Exit codes: 0 done; 2 bad usage or invalid input.
 */
import { parseStream, renderStream, uninjectStream } from '../inject/index.js';
import { formatOptionsHelp, parseOptions, wantsHelp, type OptionSpec } from './args.js';
import { readInput, writeResult } from './inject.js';

const COMMAND = 'meshpipe uninject';

const OPTIONS: readonly OptionSpec[] = [
  { flag: 'dry-run', type: 'boolean', help: 'write a unified diff of what would change instead of the manifests', defaultText: '' },
  { flag: 'help', short: 'h', type: 'boolean', help: 'show this help and exit', defaultText: '' },
];

export function uninjectHelp(): string {
  return [
    `Usage: ${COMMAND} [options] [FILE|-]`,
    '',
    'Reads Kubernetes manifests (stdin when FILE is - or absent) and writes them with everything',
    'meshpipe inject added removed, restoring the original pod templates.',
    '',
    'Options:',
    formatOptionsHelp(OPTIONS),
    '',
  ].join('\n');
}

/** Runs `meshpipe uninject`; resolves with the exit code. */
export async function main(argv: string[]): Promise<number> {
  if (wantsHelp(argv)) {
    process.stdout.write(uninjectHelp());
    return 0;
  }
  const { values, positionals } = parseOptions(argv, OPTIONS, COMMAND, 1);
  const input = await readInput(positionals[0], 'meshpipe uninject');
  const stream = parseStream(input.text, input.name);
  const result = uninjectStream(stream);
  return writeResult(COMMAND, input, renderStream(stream, result.ops), result, values['dry-run'] === true);
}
