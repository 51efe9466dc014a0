/**
 * `meshpipe identity`: a small local certificate authority for the mesh,
 * and a checker for identity files.
 *
 * - `init` creates a trust anchor (root CA) and an issuer (intermediate CA)
 *   signed by it, like Linkerd's: `ca.crt`, `ca.key`, `issuer.crt`,
 *   `issuer.key` in --out.
 * - `issue --name NAME` writes a workload certificate for NAME (a DNS
 *   identity or a SPIFFE ID) signed by the issuer in --ca-dir, as
 *   `tls.crt` (leaf then issuer), `tls.key` and `ca.crt` in --out: exactly
 *   what `--identity-dir` reads.
 * - `check` loads identity files the way the proxy does at start and prints
 *   what it found; bad input exits 2 naming the file and the reason.
 *
 * Keys are ECDSA P-256, made in the engine (rcgen, aws-lc-rs). Files are
 * written atomically (a temporary file renamed into place), private keys
 * with mode 0600, and existing files are never overwritten without
 * --force.
 */
import { link, mkdir, open, readFile, rename, rm } from 'node:fs/promises';
import { join } from 'node:path';
import { formatOptionsHelp, parseOptions, type OptionSpec } from './args.js';
import { formatDuration } from '../config/index.js';
import { identityInit, identityIssue } from '../engine/index.js';
import { MeshpipeError } from '../errors.js';
import { dialableIdentityProblem, loadIdentity } from '../identity/index.js';

const INIT_OPTIONS: readonly OptionSpec[] = [
  { flag: 'out', type: 'string', valueName: 'DIR', help: 'where to write ca.crt, ca.key, issuer.crt and issuer.key', defaultText: '.' },
  { flag: 'trust-domain', type: 'string', valueName: 'DOMAIN', help: 'the trust domain the CA names are made from', defaultText: 'cluster.local' },
  { flag: 'anchor-ttl', type: 'string', valueName: 'DURATION', help: 'lifetime of the trust anchor', defaultText: '3650d (10 years)' },
  { flag: 'issuer-ttl', type: 'string', valueName: 'DURATION', help: 'lifetime of the issuer (at most the anchor\'s)', defaultText: '365d (1 year)' },
  { flag: 'force', type: 'boolean', help: 'overwrite existing files', defaultText: '' },
  { flag: 'help', short: 'h', type: 'boolean', help: 'show this help and exit', defaultText: '' },
];

const ISSUE_OPTIONS: readonly OptionSpec[] = [
  { flag: 'name', type: 'string', valueName: 'NAME', help: 'the workload identity: web.ns.serviceaccount.identity.linkerd.cluster.local or spiffe://cluster.local/ns/NS/sa/SA', defaultText: 'required' },
  { flag: 'ttl', type: 'string', valueName: 'DURATION', help: 'lifetime of the certificate', defaultText: '24h' },
  { flag: 'out', type: 'string', valueName: 'DIR', help: 'where to write tls.crt, tls.key and ca.crt (an --identity-dir)', defaultText: '.' },
  { flag: 'ca-dir', type: 'string', valueName: 'DIR', help: 'where `identity init` wrote issuer.crt, issuer.key and ca.crt', defaultText: '.' },
  { flag: 'force', type: 'boolean', help: 'overwrite existing files', defaultText: '' },
  { flag: 'help', short: 'h', type: 'boolean', help: 'show this help and exit', defaultText: '' },
];

const CHECK_OPTIONS: readonly OptionSpec[] = [
  { flag: 'identity-dir', type: 'string', valueName: 'DIR', help: 'a folder with tls.crt, tls.key and ca.crt' },
  { flag: 'identity-cert', type: 'string', valueName: 'FILE', help: 'the certificate chain (instead of --identity-dir)' },
  { flag: 'identity-key', type: 'string', valueName: 'FILE', help: 'the private key (instead of --identity-dir)' },
  { flag: 'trust-anchors', type: 'string', valueName: 'FILE', help: 'the trust anchors (instead of --identity-dir)' },
  { flag: 'identity-name', type: 'string', valueName: 'NAME', help: 'which SAN is the identity, when the certificate has several' },
  { flag: 'json', type: 'boolean', help: 'print JSON', defaultText: '' },
  { flag: 'help', short: 'h', type: 'boolean', help: 'show this help and exit', defaultText: '' },
];

export function identityHelp(): string {
  return [
    'Usage: meshpipe identity init [--out DIR] [--trust-domain DOMAIN] [--anchor-ttl D] [--issuer-ttl D] [--force]',
    '       meshpipe identity issue --name NAME [--ttl 24h] [--out DIR] [--ca-dir DIR] [--force]',
    '       meshpipe identity check (--identity-dir DIR | --identity-cert F --identity-key F --trust-anchors F) [--json]',
    '',
    'A local mesh certificate authority (ECDSA P-256, like Linkerd\'s): `init` makes a trust anchor and an',
    'issuer, `issue` a workload certificate with the identity as its SAN and server+client auth usages,',
    'written as tls.crt/tls.key/ca.crt for --identity-dir. `check` validates identity files as the proxy',
    'does at start. Private keys are written with mode 0600; existing files need --force.',
    '',
    'init options:',
    formatOptionsHelp(INIT_OPTIONS),
    '',
    'issue options:',
    formatOptionsHelp(ISSUE_OPTIONS),
    '',
    'check options:',
    formatOptionsHelp(CHECK_OPTIONS),
    '',
  ].join('\n');
}

const UNIT_MS: Readonly<Record<string, number>> = { s: 1000, m: 60_000, h: 3_600_000, d: 86_400_000 };
/** Certificate lifetimes: the proxy's duration syntax, but years long (at most 100 years). */
const MAX_TTL_MS = 100 * 365 * 86_400_000;

function durationFlag(flag: string, value: unknown, fallback: string): number {
  const text = typeof value === 'string' ? value.trim() : fallback;
  // Whole numbers with units, combinable as the proxy's durations are (1h30m, 1d12h).
  const ms = /^(?:\d+[smhd])+$/.test(text)
    ? [...text.matchAll(/(\d+)([smhd])/g)].reduce((sum, m) => sum + Number(m[1]) * (UNIT_MS[m[2]!] ?? 0), 0)
    : NaN;
  if (!Number.isSafeInteger(ms) || ms < 1000 || ms > MAX_TTL_MS) {
    throw new MeshpipeError('ERR_INVALID_ARGUMENT', `--${flag} "${text}": expected whole numbers with a unit s, m, h or d, from 1s to 100 years (e.g. 24h, 1h30m, 365d)`);
  }
  return ms;
}

/** Writes `data` to `path` atomically with `mode`, refusing to replace a file without `force`. */
async function writeFileSafely(path: string, data: string, mode: number, force: boolean): Promise<void> {
  const tmp = `${path}.tmp-${process.pid}`;
  const handle = await open(tmp, 'wx', mode);
  try {
    await handle.writeFile(data);
    await handle.sync();
  } finally {
    await handle.close();
  }
  try {
    if (force) {
      await rename(tmp, path);
    } else {
      // link(2) fails if the target exists: never replace a file by accident, even in a race.
      await link(tmp, path).catch((err: NodeJS.ErrnoException) => {
        if (err.code === 'EEXIST') throw new MeshpipeError('ERR_INVALID_ARGUMENT', `${path} exists: pass --force to overwrite it`);
        throw err;
      });
    }
  } finally {
    await rm(tmp, { force: true });
  }
}

async function writeAll(dir: string, files: readonly [string, string, number][], force: boolean): Promise<void> {
  await mkdir(dir, { recursive: true, mode: 0o755 });
  if (!force) {
    for (const [name] of files) {
      const path = join(dir, name);
      const exists = await open(path, 'r').then((h) => h.close().then(() => true), () => false);
      if (exists) throw new MeshpipeError('ERR_INVALID_ARGUMENT', `${path} exists: pass --force to overwrite it`);
    }
  }
  for (const [name, data, mode] of files) await writeFileSafely(join(dir, name), data, mode, force);
}

async function readInput(path: string, what: string): Promise<string> {
  try {
    return await readFile(path, 'utf8');
  } catch (err) {
    const why = (err as NodeJS.ErrnoException).code === 'ENOENT' ? 'no such file' : (err as Error).message;
    throw new MeshpipeError('ERR_IDENTITY', `${path}: cannot read ${what}: ${why} (run meshpipe identity init first, or pass --ca-dir)`);
  }
}

async function init(argv: string[]): Promise<number> {
  const { values } = parseOptions(argv, INIT_OPTIONS, 'meshpipe identity init');
  const out = (values['out'] as string | undefined) ?? '.';
  const trustDomain = (values['trust-domain'] as string | undefined) ?? 'cluster.local';
  const anchorTtlMs = durationFlag('anchor-ttl', values['anchor-ttl'], '3650d');
  const issuerTtlMs = durationFlag('issuer-ttl', values['issuer-ttl'], '365d');
  const bundle = identityInit({ trustDomain, anchorTtlMs, issuerTtlMs });
  await writeAll(out, [
    ['ca.crt', bundle.anchor.certPem, 0o644],
    ['ca.key', bundle.anchor.keyPem, 0o600],
    ['issuer.crt', bundle.issuer.certPem, 0o644],
    ['issuer.key', bundle.issuer.keyPem, 0o600],
  ], values['force'] === true);
  process.stdout.write(
    `wrote ${join(out, 'ca.crt')} and ca.key: trust anchor root.linkerd.${trustDomain}, serial ${bundle.anchor.serial}, expires ${bundle.anchor.notAfter}\n` +
      `wrote ${join(out, 'issuer.crt')} and issuer.key: issuer identity.linkerd.${trustDomain}, serial ${bundle.issuer.serial}, expires ${bundle.issuer.notAfter}\n`,
  );
  return 0;
}

async function issue(argv: string[]): Promise<number> {
  const { values } = parseOptions(argv, ISSUE_OPTIONS, 'meshpipe identity issue');
  const name = values['name'] as string | undefined;
  if (name === undefined) throw new MeshpipeError('ERR_INVALID_ARGUMENT', 'issue needs --name NAME (e.g. web.ns.serviceaccount.identity.linkerd.cluster.local)');
  const why = dialableIdentityProblem(name);
  if (why !== undefined) throw new MeshpipeError('ERR_INVALID_ARGUMENT', `--name "${name}": ${why}; expected a DNS name like web.ns.serviceaccount.identity.linkerd.cluster.local or spiffe://cluster.local/ns/NS/sa/SA`);
  const ttlMs = durationFlag('ttl', values['ttl'], '24h');
  const caDir = (values['ca-dir'] as string | undefined) ?? '.';
  const out = (values['out'] as string | undefined) ?? '.';
  const issuerFile = join(caDir, 'issuer.crt');
  const issuerCertPem = await readInput(issuerFile, 'the issuer certificate');
  const issuerKeyPem = await readInput(join(caDir, 'issuer.key'), 'the issuer key');
  const anchor = await readInput(join(caDir, 'ca.crt'), 'the trust anchor');
  const issued = identityIssue({ issuerCertPem, issuerKeyPem, issuerFile, name, ttlMs });
  await writeAll(out, [
    ['tls.crt', issued.certPem, 0o644],
    ['tls.key', issued.keyPem, 0o600],
    ['ca.crt', anchor, 0o644],
  ], values['force'] === true);
  process.stdout.write(`wrote ${join(out, 'tls.crt')}, tls.key and ca.crt: ${name}, serial ${issued.serial}, valid ${formatDuration(ttlMs)} until ${issued.notAfter}\n`);
  return 0;
}

async function check(argv: string[]): Promise<number> {
  const { values } = parseOptions(argv, CHECK_OPTIONS, 'meshpipe identity check');
  const dir = values['identity-dir'] as string | undefined;
  const cert = values['identity-cert'] as string | undefined;
  const key = values['identity-key'] as string | undefined;
  const anchors = values['trust-anchors'] as string | undefined;
  let files;
  if (dir !== undefined && cert === undefined && key === undefined && anchors === undefined) {
    files = { cert: join(dir, 'tls.crt'), key: join(dir, 'tls.key'), anchors: join(dir, 'ca.crt') };
  } else if (dir === undefined && cert !== undefined && key !== undefined && anchors !== undefined) {
    files = { cert, key, anchors };
  } else {
    throw new MeshpipeError('ERR_INVALID_ARGUMENT', 'check needs --identity-dir DIR, or all of --identity-cert, --identity-key and --trust-anchors');
  }
  const loaded = await loadIdentity(files, values['identity-name'] as string | undefined);
  const i = loaded.info;
  if (values['json'] === true) {
    process.stdout.write(`${JSON.stringify({ ...i, files }, null, 2)}\n`);
  } else {
    process.stdout.write([
      `identity   ${i.name}`,
      `serial     ${i.serial}`,
      `valid      ${new Date(i.notBeforeMs).toISOString()} to ${new Date(i.notAfterMs).toISOString()}`,
      `subject    ${i.subject}`,
      `issuer     ${i.issuer}`,
      `chain      ${i.chainLength} certificate(s), ${i.anchors} trust anchor(s)`,
      ...(i.names.length > 1 ? [`other SANs ${i.names.filter((n) => n !== i.name).join(', ')}`] : []),
      '',
    ].join('\n'));
  }
  return 0;
}

/** Entry point of `meshpipe identity`. */
export async function main(argv: string[]): Promise<number> {
  const [sub, ...rest] = argv;
  if (sub === undefined) {
    // A usage error, as `meshpipe` alone: the help goes to stderr, stdout stays for results.
    process.stderr.write(identityHelp());
    return 2;
  }
  if (sub === '--help' || sub === '-h' || rest.includes('--help') || rest.includes('-h')) {
    process.stdout.write(identityHelp());
    return 0;
  }
  switch (sub) {
    case 'init':
      return init(rest);
    case 'issue':
      return issue(rest);
    case 'check':
      return check(rest);
    default:
      throw new MeshpipeError('ERR_INVALID_ARGUMENT', `unknown identity command "${sub}": expected init, issue or check; run meshpipe identity --help`);
  }
}
