#!/usr/bin/env node
/**
 * The `meshpipe` command: global flags (`--version`, `--help`) and dispatch
 * to subcommands.
 *
 * Each subcommand lives in its own module exporting
 * `main(argv: string[]): Promise<number>` and is loaded with a dynamic import,
 * so a command's dependencies (e.g. the Kubernetes client of `explain`) are
 * only loaded when it runs, and a build without a module says so clearly
 * instead of crashing.
 *
 * Exit codes: 0 success; 2 bad usage or invalid config (nothing was started);
 * 1 runtime failure (e.g. address in use, or an uncaught exception after which
 * the proxy drained: ts/sidecar/guard.ts); 130/143 forced exit on a second
 * SIGINT/SIGTERM; `meshpipe run` passes its app's exit code through. Fatal
 * errors are printed on stderr as `meshpipe <command>: error: <message>
 * (<CODE>)` (ts/cli/report.ts); logs go to stderr too (ts/observe/logger.ts),
 * so stdout carries only a command's result.
 */
import { realpathSync } from 'node:fs';
import { pathToFileURL } from 'node:url';
import { MeshpipeError } from '../errors.js';
import { installProcessGuard } from '../sidecar/guard.js';
import { packageVersion } from './version.js';
import { errorLine } from './report.js';

/** Subcommands: module path and one-line description. */
const COMMANDS: Readonly<Record<string, { module: string; summary: string }>> = {
  proxy: { module: './proxy.js', summary: 'run the proxy (--forward listeners, or the sidecar layout on 4143/4140) until SIGTERM/SIGINT, then drain' },
  run: { module: './run.js', summary: 'run the proxy as a sidecar around a command: meshpipe run [options] -- COMMAND [ARGS...]' },
  init: { module: './init.js', summary: 'install the iptables rules that redirect a pod\'s traffic through the proxy' },
  explain: { module: './explain.js', summary: 'explain the port policy: which ports are opaque or detected, and why' },
  inject: { module: './inject.js', summary: 'add the meshpipe sidecar to Kubernetes manifests: meshpipe inject [FILE|-] > injected.yaml' },
  uninject: { module: './uninject.js', summary: 'remove what meshpipe inject added: meshpipe uninject [FILE|-]' },
  injector: { module: './injector.js', summary: 'run the mutating admission webhook that injects pods as they are created (HTTPS, AdmissionReview v1)' },
  identity: { module: './identity.js', summary: 'mesh identity: a local CA (init), workload certificates (issue), and checking identity files (check)' },
};

interface CommandModule {
  main(argv: string[]): Promise<number>;
}

export { packageVersion };

export function mainHelp(): string {
  const width = Math.max(...Object.keys(COMMANDS).map((c) => c.length));
  return [
    'Usage: meshpipe <command> [options]',
    '',
    'meshpipe is a sidecar data plane for TCP proxying and protocol detection',
    '(Linkerd-proxy compatible): a Rust engine in a Node.js addon, controlled from TypeScript.',
    '',
    'Commands:',
    ...Object.entries(COMMANDS).map(([name, c]) => `  ${name.padEnd(width)}  ${c.summary}`),
    '',
    'Options:',
    '  -h, --help     show this help (meshpipe help <command>, or meshpipe <command> --help, for a command\'s options)',
    '  -V, --version  print the version',
    '',
  ].join('\n');
}

async function loadCommand(name: string, modulePath: string): Promise<CommandModule> {
  const url = new URL(modulePath, import.meta.url);
  try {
    return (await import(url.href)) as CommandModule;
  } catch (err) {
    const e = err as NodeJS.ErrnoException;
    // Only "this very module is missing" means "not available"; a missing
    // dependency of the module is a real bug and is reported as such.
    if (e.code === 'ERR_MODULE_NOT_FOUND' && e.message.includes(url.pathname)) {
      throw new MeshpipeError('ERR_INVALID_ARGUMENT', `command "${name}" is not available in this build (${url.pathname} is missing)`);
    }
    throw err;
  }
}

/** Runs the CLI; resolves with the exit code. Never throws. */
export async function run(argv: string[]): Promise<number> {
  try {
    const [first, ...rest] = argv;
    if (first === undefined) {
      process.stderr.write(mainHelp());
      return 2;
    }
    if (first === '--version' || first === '-V') {
      process.stdout.write(`${packageVersion()}\n`);
      return 0;
    }
    if (first === '--help' || first === '-h' || (first === 'help' && rest.length === 0)) {
      process.stdout.write(mainHelp());
      return 0;
    }
    if (first === 'help') {
      // `meshpipe help proxy` is `meshpipe proxy --help`.
      const [name] = rest;
      const target = name !== undefined && Object.hasOwn(COMMANDS, name) ? COMMANDS[name] : undefined;
      if (name === undefined || target === undefined) {
        throw new MeshpipeError('ERR_INVALID_ARGUMENT', `unknown command "${name}": expected one of ${Object.keys(COMMANDS).join(', ')}; run meshpipe --help`);
      }
      return await (await loadCommand(name, target.module)).main(['--help']);
    }
    if (first.startsWith('-')) {
      throw new MeshpipeError('ERR_INVALID_ARGUMENT', `unknown option ${first}: expected a command first (${Object.keys(COMMANDS).join(', ')}); run meshpipe --help`);
    }
    const command = Object.hasOwn(COMMANDS, first) ? COMMANDS[first] : undefined;
    if (command === undefined) {
      throw new MeshpipeError('ERR_INVALID_ARGUMENT', `unknown command "${first}": expected one of ${Object.keys(COMMANDS).join(', ')}; run meshpipe --help`);
    }
    const mod = await loadCommand(first, command.module);
    return await mod.main(rest);
  } catch (err) {
    process.stderr.write(errorLine(argv[0] !== undefined && Object.hasOwn(COMMANDS, argv[0]) ? argv[0] : undefined, err));
    return err instanceof MeshpipeError ? err.exitCode : 1;
  }
}

/** True when this file is the program being run (also through an npm bin symlink). */
function isMain(): boolean {
  const script = process.argv[1];
  if (script === undefined) return false;
  try {
    return pathToFileURL(realpathSync(script)).href === import.meta.url;
  } catch {
    return false;
  }
}

if (isMain()) {
  // Errors nobody caught: keep serving or drain, never die mid-connection (ts/sidecar/guard.ts).
  installProcessGuard();
  // process.exit: the engine's threads must not keep a finished command alive,
  // and every write before this point is synchronous (pipes, files, ttys).
  // `void`: run() never rejects (it turns every error into an exit code).
  void run(process.argv.slice(2)).then((code) => process.exit(code));
}
