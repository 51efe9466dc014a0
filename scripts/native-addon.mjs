#!/usr/bin/env node
/**
 * The native addon's freshness stamp, so `npm install` (and `npm run build`)
 * only runs the multi-minute cargo build when the Rust sources changed.
 *
 *   node scripts/native-addon.mjs if-needed   build unless native/ holds an addon built from these sources
 *   node scripts/native-addon.mjs stamp       record that native/ holds an addon built from these sources
 *
 * The stamp (native/.source-hash) is the SHA-256 of every file cargo reads
 * for the addon: crates/**, Cargo.toml, Cargo.lock, rustfmt.toml. An addon
 * with a matching stamp (copied from another checkout of the same sources,
 * or built before) is used as it is; anything else is rebuilt. `npm run
 * build:native` always builds, and stamps.
 */
import { createHash } from 'node:crypto';
import { execFileSync } from 'node:child_process';
import { existsSync, readdirSync, readFileSync, statSync, writeFileSync } from 'node:fs';
import { dirname, join, relative } from 'node:path';
import { fileURLToPath } from 'node:url';

const ROOT = join(dirname(fileURLToPath(import.meta.url)), '..');
const STAMP = join(ROOT, 'native', '.source-hash');

function files(dir) {
  const out = [];
  for (const entry of readdirSync(dir, { withFileTypes: true })) {
    const path = join(dir, entry.name);
    if (entry.isDirectory()) out.push(...files(path));
    else if (entry.isFile()) out.push(path);
  }
  return out;
}

function sourceHash() {
  const hash = createHash('sha256');
  const list = [...files(join(ROOT, 'crates')), ...['Cargo.toml', 'Cargo.lock', 'rustfmt.toml'].map((f) => join(ROOT, f)).filter((f) => existsSync(f))];
  for (const file of list.map((f) => relative(ROOT, f)).sort()) {
    hash.update(`${file}\0${statSync(join(ROOT, file)).size}\0`);
    hash.update(readFileSync(join(ROOT, file)));
  }
  return hash.digest('hex');
}

function addonPresent() {
  return existsSync(join(ROOT, 'native')) && readdirSync(join(ROOT, 'native')).some((f) => f.endsWith('.node'));
}

const mode = process.argv[2];
if (mode === 'stamp') {
  writeFileSync(STAMP, `${sourceHash()}\n`);
} else if (mode === 'if-needed') {
  const current = existsSync(STAMP) ? readFileSync(STAMP, 'utf8').trim() : '';
  if (addonPresent() && current === sourceHash()) {
    process.stdout.write('native addon: up to date with the Rust sources (native/.source-hash); not rebuilt (npm run build:native forces a build)\n');
  } else {
    execFileSync('npm', ['run', 'build:native'], { cwd: ROOT, stdio: 'inherit' });
  }
} else {
  process.stderr.write('usage: node scripts/native-addon.mjs if-needed|stamp\n');
  process.exit(2);
}
