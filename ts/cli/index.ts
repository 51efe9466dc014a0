/**
 * ts/cli/: the `meshpipe` command.
 *
 * main.ts is the program (package.json "bin"): global flags and dispatch to
 * the subcommands proxy.ts, run.ts, init.ts and explain.ts (each exports
 * `main(argv)` and is loaded by a dynamic import, so a command only loads what
 * it uses); explain-render.ts prints `meshpipe explain`'s policies. args.ts is
 * the flag table of `meshpipe proxy` and `meshpipe run`: parsing, help text
 * and the flag layer of the config.
 *
 * Nothing else in ts/ depends on the CLI; the library API (ts/index.ts)
 * re-exports the flag parser from here.
 */
export { parseProxyArgv, PROXY_OPTIONS, type ParsedProxyArgs } from './args.js';
