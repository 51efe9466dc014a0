/**
 * Manifests that once took the proxy down (issue 10 §2): a benign file with
 * hundreds of YAML alias references made `toJS` throw outside any `try` (a
 * crash at start, an unhandled rejection on reload). Now a benign file loads;
 * an alias bomb, a recursive alias, nesting deeper than the stack, and a file
 * over the size limit are problems naming the file, and the other documents
 * of the same file still count. Checked on the loader and through the real
 * CLI (`meshpipe explain --manifests`).
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtempSync, writeFileSync, truncateSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { loadManifestFile, parseManifestText, MAX_MANIFEST_BYTES } from '../ts/policy/k8s/manifests.js';
import { runCli } from './helpers.js';
import { aliasBomb, benignAliases, deployment } from './policy-helpers.js';

test('a benign manifest with 300 alias references loads, with the objects next to it', () => {
  const text = `${benignAliases(300)}---\n${deployment(9000)}`;
  const parsed = parseManifestText('benign.yaml', text);
  assert.deepEqual(parsed.problems.map((p) => p.message), []);
  assert.equal(parsed.parsed, true);
  assert.equal(parsed.ignored, 1, 'the ConfigMap is read and ignored');
  assert.equal(parsed.objects.length, 1);
  assert.deepEqual(parsed.objects[0]?.kind === 'Deployment' ? parsed.objects[0].labels : undefined, { app: 'app' });
});

test('an alias bomb is a problem naming the file and document; the other documents still load', () => {
  const started = Date.now();
  const parsed = parseManifestText('bomb.yaml', `${deployment(9000)}---\n${aliasBomb()}`);
  assert.equal(parsed.objects.length, 1, 'document 0 still counts');
  assert.equal(parsed.parsed, false);
  assert.equal(parsed.problems.length, 1);
  assert.match(parsed.problems[0]!.message, /^bomb\.yaml document 1: YAML aliases would expand this document's \d+ nodes by more than 1000000 \(an alias bomb\?\)/);
  assert.ok(Date.now() - started < 5000, `refused without expanding (${Date.now() - started} ms)`);
});

test('a recursive alias, and nesting deeper than the stack, are problems, never exceptions', () => {
  const recursive = parseManifestText('recursive.yaml', `self: &self [1, *self]\n---\n${deployment(9001)}`);
  assert.equal(recursive.objects.length, 1);
  const deep = parseManifestText('deep.yaml', `${'['.repeat(100_000)}${']'.repeat(100_000)}\n`);
  assert.equal(deep.objects.length, 0);
  assert.match(deep.problems.map((p) => p.message).join('\n'), /^deep\.yaml document 0: /);
});

test('a file over the size limit is refused unread, naming the file and the limit', async () => {
  const dir = mkdtempSync(join(tmpdir(), 'meshpipe-big-'));
  const file = join(dir, 'huge.yaml');
  writeFileSync(file, '');
  truncateSync(file, MAX_MANIFEST_BYTES + 1);
  const loaded = await loadManifestFile(file);
  assert.equal(loaded.parsed, false);
  assert.match(loaded.problems[0]!.message, /huge\.yaml: 32\.0 MiB is more than the 32 MiB a manifest file may have; not read/);
});

test('meshpipe explain loads a folder holding an alias-heavy ConfigMap and an alias bomb', async () => {
  const dir = mkdtempSync(join(tmpdir(), 'meshpipe-aliases-'));
  writeFileSync(join(dir, 'a-settings.yaml'), benignAliases(500));
  writeFileSync(join(dir, 'b-bomb.yaml'), aliasBomb());
  writeFileSync(join(dir, 'c-app.yaml'), deployment(9000));
  const r = await runCli(['explain', '--manifests', dir, '--namespace', 'shop', '--pod', 'app-7c9d-x', '--port', '9000']);
  // The bomb is an input that could not be used: exit 1, with the answer for the rest.
  assert.equal(r.code, 1, r.stderr);
  assert.match(r.stdout, /inbound Deployment shop\/app port 9000: opaque \(opaque: pod annotation config\.linkerd\.io\/opaque-ports on Deployment shop\/app\)/);
  assert.match(r.stdout, /b-bomb\.yaml document 0: YAML aliases would expand/);
  assert.doesNotMatch(r.stdout, /a-settings\.yaml/, 'the benign file has no problem');
});
