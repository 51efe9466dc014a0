/**
 * readWatchedFile (ts/config/watched-file.ts): the files a running proxy
 * reads again are read as regular files only, bounded. A FIFO, a device or
 * a folder is refused at once with what it is (a FIFO must not block the
 * read until a writer comes), a symlink to a regular file is followed (as
 * Kubernetes mounts Secrets), and a file over the bound is refused, also
 * when it grows past it while being read. The policy source, which re-reads
 * its files, reports a FIFO as a problem instead of hanging. A pipe given at
 * start (`--destinations <(generate)`) is read once, to its writer's close,
 * bounded.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { execFileSync, spawn } from 'node:child_process';
import { once } from 'node:events';
import { mkdirSync, mkdtempSync, readdirSync, readFileSync, rmSync, symlinkSync, writeFileSync } from 'node:fs';
import { fileURLToPath } from 'node:url';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { isOwnDescriptor, isPipe, readPipeOnce, readWatchedFile, readWatchedText, readWatchedTextSync, WatchedFileError } from '../ts/config/index.js';
import { loadManifestFile } from '../ts/policy/k8s/manifests.js';
import { CliProcess, runCli, withTimeout } from './helpers.js';

function scratch(t: { after(fn: () => void): void }): string {
  const dir = mkdtempSync(join(tmpdir(), 'meshpipe-watched-'));
  t.after(() => rmSync(dir, { recursive: true, force: true }));
  return dir;
}

function refused(code: string, found?: RegExp): (err: unknown) => boolean {
  return (err: unknown) => {
    assert.ok(err instanceof WatchedFileError, `a WatchedFileError, got ${String(err)}`);
    assert.equal(err.code, code);
    if (found) assert.match(err.message, found);
    return true;
  };
}

test('a regular file and a symlink to one are read whole', async (t) => {
  const dir = scratch(t);
  const body = Buffer.from('apiVersion: v1\nkind: ConfigMap\n'.repeat(2000));
  mkdirSync(join(dir, '..2026_01'));
  writeFileSync(join(dir, '..2026_01', 'f.yaml'), body);
  symlinkSync('..2026_01', join(dir, '..data'));
  symlinkSync(join('..data', 'f.yaml'), join(dir, 'f.yaml'));
  assert.deepEqual(await readWatchedFile(join(dir, '..2026_01', 'f.yaml'), body.length), body, 'exactly at the bound');
  assert.equal(await readWatchedText(join(dir, 'f.yaml'), 1 << 20), body.toString('utf8'));
  writeFileSync(join(dir, 'empty'), '');
  assert.equal((await readWatchedFile(join(dir, 'empty'), 10)).length, 0);
});

test('a FIFO is refused at once, without waiting for a writer', async (t) => {
  const dir = scratch(t);
  const fifo = join(dir, 'tls.crt');
  execFileSync('mkfifo', [fifo]);
  await withTimeout(assert.rejects(readWatchedFile(fifo, 1024), refused('ERR_NOT_REGULAR_FILE', /^a FIFO \(named pipe\), not a regular file$/)), 5_000, 'the FIFO refusal');
  // Through a symlink too (the kubelet's layout).
  symlinkSync(fifo, join(dir, 'link'));
  await withTimeout(assert.rejects(readWatchedFile(join(dir, 'link'), 1024), refused('ERR_NOT_REGULAR_FILE', /FIFO/)), 5_000, 'the FIFO refusal via a symlink');
});

test('a device or a folder is refused with what it is; a missing file keeps the system error', async (t) => {
  const dir = scratch(t);
  await assert.rejects(readWatchedFile('/dev/zero', 1024), refused('ERR_NOT_REGULAR_FILE', /^a character device, not a regular file$/));
  await assert.rejects(readWatchedFile(dir, 1024), refused('ERR_NOT_REGULAR_FILE', /^a folder, not a regular file$/));
  await assert.rejects(readWatchedFile(join(dir, 'nope'), 1024), (err: unknown) => (err as NodeJS.ErrnoException).code === 'ENOENT');
});

test('a file over the bound is refused', async (t) => {
  const dir = scratch(t);
  writeFileSync(join(dir, 'big'), Buffer.alloc(4097, 0x61));
  await assert.rejects(readWatchedFile(join(dir, 'big'), 4096), refused('ERR_FILE_TOO_LARGE', /^4097 bytes, more than the 4096 allowed$/));
});

test('/proc files (size 0, content on read) are read to the end and bounded', async () => {
  // stat() says 0 bytes, so the bound is enforced on what is read, as for a file growing while read.
  const text = await readWatchedText('/proc/self/status', 1 << 20);
  assert.match(text, /^Name:/);
  assert.match(text, /VmRSS:/);
  await assert.rejects(readWatchedFile('/proc/self/status', 16), refused('ERR_FILE_TOO_LARGE', /more than the 16 bytes allowed/));
});

test('a FIFO among the manifest files is a problem, not a hang', async (t) => {
  const dir = scratch(t);
  const fifo = join(dir, 'servers.yaml');
  execFileSync('mkfifo', [fifo]);
  const loaded = await withTimeout(loadManifestFile(fifo), 5_000, 'the manifest FIFO');
  assert.equal(loaded.parsed, false);
  assert.equal(loaded.objects.length, 0);
  assert.match(loaded.problems[0]?.message ?? '', /servers\.yaml: cannot read: a FIFO \(named pipe\), not a regular file/);
});

test('a pipe given at start is read once to its end, bounded', async (t) => {
  const dir = scratch(t);
  const fifo = join(dir, 'destinations');
  execFileSync('mkfifo', [fifo]);
  assert.equal(await isPipe(fifo), true);
  assert.equal(await isPipe(join(dir, 'nope')), false);
  writeFileSync(join(dir, 'plain'), 'x');
  assert.equal(await isPipe(join(dir, 'plain')), false);
  // A writer in another process, as `<(generate)` is: 200 KiB in several writes.
  const line = '10.0.0.1 web.ns.serviceaccount.identity.linkerd.cluster.local\n';
  const count = Math.ceil((200 * 1024) / line.length);
  const writer = spawn(process.execPath, ['-e', `const fs = require('fs'); const fd = fs.openSync(process.argv[1], 'w'); for (let i = 0; i < ${count}; i++) fs.writeSync(fd, ${JSON.stringify(line)}); fs.closeSync(fd);`, fifo]);
  const written = once(writer, 'exit');
  const text = await withTimeout(readPipeOnce(fifo, 1 << 20), 10_000, 'the pipe read');
  assert.equal(text, line.repeat(count));
  await withTimeout(written, 10_000, 'the writer to end');
  // Over the bound: refused, and the writer is not left blocked forever (the read end closes).
  const big = spawn(process.execPath, ['-e', `const fs = require('fs'); const fd = fs.openSync(process.argv[1], 'w'); try { for (let i = 0; i < ${count}; i++) fs.writeSync(fd, ${JSON.stringify(line)}); } catch {}`, fifo]);
  const bigDone = once(big, 'exit');
  await withTimeout(assert.rejects(readPipeOnce(fifo, 64 * 1024), refused('ERR_FILE_TOO_LARGE', /more than the 65536 bytes allowed/)), 10_000, 'the oversized pipe');
  await withTimeout(bigDone, 10_000, 'the writer of the oversized pipe to end');
});

test('meshpipe explain reads --manifests given as a pipe, as it reads the folder', async (t) => {
  const dir = scratch(t);
  const example = fileURLToPath(new URL('../../examples/k8s/', import.meta.url));
  const text = readdirSync(example).filter((f) => /\.ya?ml$/.test(f)).sort().map((f) => readFileSync(join(example, f), 'utf8')).join('\n---\n');
  const fifo = join(dir, 'manifests.yaml');
  execFileSync('mkfifo', [fifo]);
  const writer = spawn(process.execPath, ['-e', 'require("fs").writeFileSync(process.argv[1], process.argv[2])', fifo, text]);
  const written = once(writer, 'exit');
  const args = ['--namespace', 'shop', '--pod', 'web-7d9f', '--port', '3306', '--json', '--strict'];
  const piped = await runCli(['explain', '--manifests', fifo, ...args]);
  await withTimeout(written, 10_000, 'the writer to end');
  assert.equal(piped.code, 0, piped.stderr);
  const folder = await runCli(['explain', '--manifests', example, ...args]);
  assert.equal(folder.code, 0, folder.stderr);
  type Answer = { problems: string[]; ports: Array<{ verdicts: Array<{ target: string; mode: string }> }> };
  const viaPipe = JSON.parse(piped.stdout) as Answer;
  const viaFolder = JSON.parse(folder.stdout) as Answer;
  assert.deepEqual(viaPipe.problems, []);
  assert.ok(viaPipe.ports[0]!.verdicts.some((v) => v.target.includes('Deployment shop/web')), 'the piped manifests were read');
  assert.deepEqual(viaPipe.ports, viaFolder.ports, 'the same answer as from the folder');
});

test('meshpipe proxy reads a policy pipe once at start, bounded: too much is a configuration error naming the flag', async (t) => {
  const dir = scratch(t);
  const fifo = join(dir, 'destinations');
  execFileSync('mkfifo', [fifo]);
  // 33 MiB of one endless line, more than the 32 MiB a policy file may have.
  const writer = spawn(process.execPath, ['-e', `const fs = require('fs'); const fd = fs.openSync(process.argv[1], 'w'); const b = Buffer.alloc(1 << 20, 0x61); try { for (let i = 0; i < 33; i++) fs.writeSync(fd, b); } catch {}`, fifo]);
  const written = once(writer, 'exit');
  const r = await runCli(['proxy', '--admin', 'off', '--forward', '127.0.0.1:0=127.0.0.1:9,mode=opaque', '--destinations', fifo], { timeoutMs: 30_000 });
  assert.equal(r.code, 2, r.stderr);
  assert.match(r.stderr, /--destinations \S+destinations: cannot read the pipe: more than the 33554432 bytes allowed \(ERR_INVALID_CONFIG\)/);
  await withTimeout(written, 10_000, 'the writer to end (not left blocked on a reader that stopped)');
});

test('the synchronous read (for the start) refuses and bounds as the watched read does', (t) => {
  const dir = scratch(t);
  writeFileSync(join(dir, 'endpoints'), '10.96.0.1:80 10.42.0.1:8080\n');
  assert.equal(readWatchedTextSync(join(dir, 'endpoints'), 1024), '10.96.0.1:80 10.42.0.1:8080\n');
  const fifo = join(dir, 'fifo');
  execFileSync('mkfifo', [fifo]);
  // At once: O_NONBLOCK, so the open does not wait for a writer that never comes.
  assert.throws(() => readWatchedTextSync(fifo, 1024), refused('ERR_NOT_REGULAR_FILE', /^a FIFO \(named pipe\), not a regular file$/));
  assert.throws(() => readWatchedTextSync(dir, 1024), refused('ERR_NOT_REGULAR_FILE', /^a folder, not a regular file$/));
  assert.throws(() => readWatchedTextSync('/dev/zero', 1024), refused('ERR_NOT_REGULAR_FILE', /^a character device/));
  writeFileSync(join(dir, 'big'), Buffer.alloc(4097, 0x61));
  assert.throws(() => readWatchedTextSync(join(dir, 'big'), 4096), refused('ERR_FILE_TOO_LARGE', /^4097 bytes, more than the 4096 allowed$/));
  assert.throws(() => readWatchedTextSync('/proc/self/status', 16), refused('ERR_FILE_TOO_LARGE', /more than the 16 bytes allowed/));
  assert.equal(isOwnDescriptor('/dev/fd/63'), true);
  assert.equal(isOwnDescriptor('/proc/self/fd/12'), true);
  assert.equal(isOwnDescriptor(fifo), false);
});

test('meshpipe proxy refuses an --endpoints path that is no regular file or pipe, or too large, naming it', async (t) => {
  const dir = scratch(t);
  const base = ['proxy', '--admin', 'off', '--forward', '127.0.0.1:0=127.0.0.1:9'];
  const folder = await runCli([...base, '--endpoints', dir], { timeoutMs: 30_000 });
  assert.equal(folder.code, 2, folder.stderr);
  assert.match(folder.stderr, /--endpoints \S+: cannot read: a folder, not a regular file/);
  const device = await runCli([...base, '--endpoints', '/dev/zero'], { timeoutMs: 30_000 });
  assert.equal(device.code, 2, device.stderr);
  assert.match(device.stderr, /--endpoints \/dev\/zero: cannot read: a character device, not a regular file/);
  // 33 MiB of comment lines: more than the 32 MiB a policy file may have.
  writeFileSync(join(dir, 'big'), Buffer.alloc(33 * 1024 * 1024, 0x23));
  const big = await runCli([...base, '--endpoints', join(dir, 'big')], { timeoutMs: 30_000 });
  assert.equal(big.code, 2, big.stderr);
  assert.match(big.stderr, /--endpoints \S+big: cannot read: 34603008 bytes, more than the 33554432 allowed/);
});

test('a start waiting for a named pipe says so, and goes on once it was written', async (t) => {
  const dir = scratch(t);
  const fifo = join(dir, 'destinations');
  execFileSync('mkfifo', [fifo]);
  const proc = new CliProcess(['proxy', '--admin', 'off', '--forward', '127.0.0.1:0=127.0.0.1:9,mode=opaque', '--destinations', fifo]);
  t.after(() => proc.kill());
  const waiting = await proc.waitForLog((l) => /waiting for a process to open the named pipe/.test(l.msg), 'the waiting notice', 20_000);
  assert.equal(waiting.level, 'warn');
  assert.equal(waiting['flag'], '--destinations');
  assert.equal(waiting['path'], fifo);
  assert.ok(!proc.logs.some((l) => l.msg === 'proxy ready'), 'not ready before the pipe was read');
  const writer = spawn(process.execPath, ['-e', 'require("fs").writeFileSync(process.argv[1], "10.0.0.1 web.ns.serviceaccount.identity.linkerd.cluster.local\\n")', fifo]);
  const written = once(writer, 'exit');
  await proc.waitForLog((l) => l.msg === 'proxy ready', '"proxy ready"', 20_000);
  await withTimeout(written, 10_000, 'the writer to end');
});
