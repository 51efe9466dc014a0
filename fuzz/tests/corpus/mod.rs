//! The smoke test's input generator: a deterministic stand-in for the
//! fuzzer, so the targets' checks run on stable Rust in CI.
//!
//! For one target it produces, in order: every seed as is, truncations of
//! every seed, stacked mutations of the seeds (bit flips, interesting bytes
//! and lengths, truncations, deletions, insertions, duplicated ranges,
//! dictionary tokens, splices between two seeds), and random inputs (raw
//! bytes, and text over the target's alphabet). The random source is a
//! xorshift64* seeded from the target's name, so every run feeds the same
//! inputs and a failure reproduces; `MESHPIPE_FUZZ_SMOKE_SEED` picks another
//! stream and `MESHPIPE_FUZZ_SMOKE_SCALE` multiplies the number of mutated
//! and random inputs, for a longer local run. This is no replacement for
//! coverage-guided fuzzing (`guided.sh`, which starts from these seeds, or
//! `cargo +nightly fuzz run NAME`); it keeps the invariants checked on every
//! commit.

pub mod seeds;

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::PathBuf;

/// The longest input produced; as libFuzzer's `-max_len=20000` for classify,
/// which covers the 16 KiB detection cap.
const MAX_LEN: usize = 20_000;

/// Bytes that tend to sit on parser boundaries.
const INTERESTING: [u8; 18] = [0, 1, 0x7f, 0x80, 0xff, b'\r', b'\n', b' ', b':', b'.', b'/', b'0', b'9', b'%', b'[', b']', b',', b'='];

/// Values for big-endian length fields (TLS records and handshakes, the
/// transport header's length).
const INTERESTING_LENGTHS: [u32; 12] = [0, 1, 2, 3, 0x7f, 0x80, 0xff, 0x100, 0x3fff, 0x4000, 0xffff, 0xffff_ffff];

/// A xorshift64* generator (Vigna, 2014): small, fast, and plenty for
/// picking mutations.
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        // Never zero: xorshift would stay at zero forever.
        Rng(seed | 1)
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    /// A number in `0..n` (`n` > 0).
    pub fn below(&mut self, n: usize) -> usize {
        (self.next_u64() % n as u64) as usize
    }

    pub fn byte(&mut self) -> u8 {
        self.next_u64() as u8
    }
}

/// What a target is fed besides its seeds.
pub struct Plan<'a> {
    /// Tokens inserted or written over the input (field names, keywords).
    pub dict: &'a [&'a [u8]],
    /// The characters random text is made of (empty: raw bytes only).
    pub alphabet: &'a [u8],
    /// Stacked mutations of the seeds.
    pub mutations: usize,
    /// Random inputs, half raw bytes and half alphabet text.
    pub random: usize,
    /// The longest random input.
    pub random_len: usize,
}

/// How many inputs a run fed.
pub struct Fed {
    pub inputs: usize,
    pub bytes: usize,
}

/// FNV-1a, to seed each target's stream from its name.
fn fnv(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |h, b| (h ^ u64::from(*b)).wrapping_mul(0x0100_0000_01b3))
}

fn env_number(name: &str, default: u64) -> u64 {
    match std::env::var(name) {
        Ok(v) => v.parse().unwrap_or_else(|_| panic!("{name}={v:?}: expected a whole number")),
        Err(_) => default,
    }
}

/// Feeds `check` the seeds, their truncations, mutations and random
/// inputs. On the first input that breaks an invariant it saves the input
/// under `fuzz/artifacts/NAME/` (so `cargo +nightly fuzz run NAME FILE`
/// replays it) and fails, naming the input.
pub fn run(name: &str, seeds: &[Vec<u8>], plan: &Plan<'_>, check: fn(&[u8])) -> Fed {
    assert!(!seeds.is_empty(), "{name}: no seeds");
    let scale = env_number("MESHPIPE_FUZZ_SMOKE_SCALE", 1) as usize;
    let mut rng = Rng::new(fnv(name.as_bytes()) ^ env_number("MESHPIPE_FUZZ_SMOKE_SEED", 0));
    let mut fed = Fed { inputs: 0, bytes: 0 };
    let mut feed = |what: &dyn Fn() -> String, input: &[u8]| {
        fed.inputs += 1;
        fed.bytes += input.len();
        if catch_unwind(AssertUnwindSafe(|| check(input))).is_err() {
            fail(name, &what(), input);
        }
    };

    for (i, seed) in seeds.iter().enumerate() {
        feed(&|| format!("seed {i}"), seed);
    }
    for (i, seed) in seeds.iter().enumerate() {
        // Every cut of a short seed; a spread of cuts of a long one.
        let step = (seed.len() / 256).max(1);
        for cut in (0..seed.len()).step_by(step) {
            feed(&|| format!("seed {i} cut to {cut} bytes"), &seed[..cut]);
        }
    }
    let mut input = Vec::new();
    for n in 0..plan.mutations * scale {
        let i = rng.below(seeds.len());
        input.clear();
        input.extend_from_slice(&seeds[i]);
        let stacked = 1 + rng.below(4);
        for _ in 0..stacked {
            mutate(&mut rng, &mut input, seeds, plan.dict);
        }
        input.truncate(MAX_LEN);
        feed(&|| format!("mutation {n} ({stacked} stacked) of seed {i}"), &input);
    }
    for n in 0..plan.random * scale {
        let len = rng.below(plan.random_len + 1);
        input.clear();
        if n % 2 == 0 || plan.alphabet.is_empty() {
            input.extend((0..len).map(|_| rng.byte()));
        } else {
            input.extend((0..len).map(|_| plan.alphabet[rng.below(plan.alphabet.len())]));
        }
        feed(&|| format!("random input {n}"), &input);
    }
    fed
}

/// One mutation, in place.
fn mutate(rng: &mut Rng, input: &mut Vec<u8>, seeds: &[Vec<u8>], dict: &[&[u8]]) {
    let len = input.len();
    let at = |rng: &mut Rng| rng.below(len + 1);
    match rng.below(11) {
        0 if len > 0 => {
            let i = rng.below(len);
            input[i] ^= 1 << rng.below(8);
        }
        1 if len > 0 => {
            let i = rng.below(len);
            input[i] = INTERESTING[rng.below(INTERESTING.len())];
        }
        2 if len > 0 => {
            let i = rng.below(len);
            input[i] = input[i].wrapping_add(rng.below(33) as u8).wrapping_sub(16);
        }
        3 => input.truncate(at(rng)),
        4 => {
            let from = at(rng);
            let to = (from + 1 + rng.below(16)).min(len);
            input.drain(from..to.max(from));
        }
        5 => {
            let i = at(rng);
            let n = 1 + rng.below(8);
            let bytes: Vec<u8> = (0..n).map(|_| rng.byte()).collect();
            input.splice(i..i, bytes);
        }
        6 if len > 0 => {
            // Duplicate a range somewhere else (repeated fields, headers, records).
            let from = rng.below(len);
            let to = (from + 1 + rng.below(64)).min(len);
            let chunk = input[from..to].to_vec();
            let i = at(rng);
            input.splice(i..i, chunk);
        }
        7 => {
            // Splice: this input's head, another seed's tail.
            let other = &seeds[rng.below(seeds.len())];
            let tail = rng.below(other.len() + 1);
            input.truncate(at(rng));
            input.extend_from_slice(&other[tail..]);
        }
        8 if !dict.is_empty() => {
            let token = dict[rng.below(dict.len())];
            let i = at(rng);
            input.splice(i..i, token.iter().copied());
        }
        9 if !dict.is_empty() && len > 0 => {
            let token = dict[rng.below(dict.len())];
            let i = rng.below(len);
            let end = (i + token.len()).min(len);
            input.splice(i..end, token.iter().copied());
        }
        10 if len >= 2 => {
            // A length field: 2, 3 or 4 big-endian bytes set to an edge value.
            let width = (2 + rng.below(3)).min(len);
            let i = rng.below(len - width + 1);
            let value = INTERESTING_LENGTHS[rng.below(INTERESTING_LENGTHS.len())];
            input[i..i + width].copy_from_slice(&value.to_be_bytes()[4 - width..]);
        }
        _ => {
            // The chosen mutation needs bytes the input lacks: grow it.
            let b = rng.byte();
            input.push(b);
        }
    }
}

/// Saves the failing input and fails the test with it.
fn fail(name: &str, what: &str, input: &[u8]) -> ! {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("artifacts").join(name);
    let path = dir.join(format!("smoke-{:016x}", fnv(input)));
    let saved = std::fs::create_dir_all(&dir).and_then(|()| std::fs::write(&path, input));
    let saved = match saved {
        Ok(()) => format!("saved to {}", path.display()),
        Err(e) => format!("not saved ({e})"),
    };
    // The file has all of it; the message shows enough to recognise it.
    let shown = &input[..input.len().min(512)];
    let more = if shown.len() < input.len() { "..." } else { "" };
    panic!(
        "{name}: {what} broke an invariant (the panic above says which); input of {} bytes {saved}: b\"{}\"{more}",
        input.len(),
        shown.escape_ascii()
    );
}
