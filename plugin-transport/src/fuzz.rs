//! A small mutation fuzzer for the decoders that face the outside, runnable as an ordinary test
//! on the stable toolchain (no cargo-fuzz, no nightly): each target starts from a checked-in
//! seed corpus (`fuzz/corpus/<target>/`, one input per file), applies byte- and JSON-aware
//! mutations chosen by a seeded PRNG, and runs the target on every mutant. A panic is a
//! failure: the mutant is written to `target/fuzz-crashes/<target>/` and named in the message,
//! so it can be added to the corpus once fixed. The run is bounded by a count of inputs
//! (`BERTH_FUZZ_ITERATIONS`, default [`DEFAULT_ITERATIONS`]) and reproducible from its seed
//! (`BERTH_FUZZ_SEED`).

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::{Path, PathBuf};

/// Inputs per target in an ordinary test run (CI): at most a few seconds each.
pub const DEFAULT_ITERATIONS: u64 = 20_000;

/// xorshift64*: deterministic, so a failure is reproducible from the seed.
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Self {
        Rng(seed.max(1))
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    pub fn below(&mut self, n: usize) -> usize {
        (self.next_u64() % n.max(1) as u64) as usize
    }
}

/// Values that break decoders: wrong types, limits, hostile strings.
const INTERESTING: &[&str] = &[
    "null",
    "true",
    "0",
    "-1",
    "4294967296",
    "18446744073709551615",
    "1e999",
    "\"\"",
    "\"../../etc\"",
    "\"é\"",
    "\"\\u0000\"",
    "[]",
    "{}",
    "[[[[[[[[]]]]]]]]",
    "\"10.0.0.0/33\"",
    "\"4095\"",
    "\"aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa\"",
];

/// One mutant of `input` (which the corpus may hold; `pool` holds the other seeds, for
/// splicing).
pub fn mutate(rng: &mut Rng, input: &[u8], pool: &[Vec<u8>]) -> Vec<u8> {
    let mut out = input.to_vec();
    for _ in 0..1 + rng.below(4) {
        let len = out.len();
        match rng.below(9) {
            // Flip a bit.
            0 if len > 0 => {
                let i = rng.below(len);
                out[i] ^= 1 << rng.below(8);
            }
            // Replace a byte with one that matters to JSON or HTTP.
            1 if len > 0 => {
                let i = rng.below(len);
                out[i] = b"{}[]\":,\\0-9e.\n\x00\xff"[rng.below(16)];
            }
            // Truncate.
            2 if len > 0 => out.truncate(rng.below(len)),
            // Delete a range.
            3 if len > 1 => {
                let a = rng.below(len);
                let b = (a + 1 + rng.below(16)).min(len);
                out.drain(a..b);
            }
            // Duplicate a range (deep nesting, repeated keys).
            4 if len > 1 => {
                let a = rng.below(len);
                let b = (a + 1 + rng.below(64)).min(len);
                let chunk = out[a..b].to_vec();
                let at = rng.below(len);
                out.splice(at..at, chunk);
            }
            // Replace a JSON value (after a ':' or '[' or ',') with an interesting one.
            5 => {
                let starts: Vec<usize> = out
                    .iter()
                    .enumerate()
                    .filter(|(_, b)| matches!(b, b':' | b'[' | b','))
                    .map(|(i, _)| i + 1)
                    .collect();
                if !starts.is_empty() {
                    let at = starts[rng.below(starts.len())];
                    let end = out[at..]
                        .iter()
                        .position(|b| matches!(b, b',' | b'}' | b']'))
                        .map_or(out.len(), |p| at + p);
                    let value = INTERESTING[rng.below(INTERESTING.len())].as_bytes();
                    out.splice(at..end, value.iter().copied());
                }
            }
            // Splice in part of another seed.
            6 if !pool.is_empty() => {
                let other = &pool[rng.below(pool.len())];
                if !other.is_empty() {
                    let a = rng.below(other.len());
                    let b = (a + 1 + rng.below(64)).min(other.len());
                    let at = rng.below(len + 1);
                    out.splice(at..at, other[a..b].iter().copied());
                }
            }
            // Grow: a long run of one byte (oversized strings and numbers).
            7 => {
                let at = rng.below(len + 1);
                let byte = b"a9[{\" "[rng.below(6)];
                let run = 1 << rng.below(12);
                out.splice(at..at, std::iter::repeat_n(byte, run));
            }
            // Random bytes.
            _ => {
                let at = rng.below(len + 1);
                let n = 1 + rng.below(8);
                let bytes: Vec<u8> = (0..n).map(|_| rng.next_u64() as u8).collect();
                out.splice(at..at, bytes);
            }
        }
    }
    out
}

/// The seeds of `target`: every file in `corpus/<target>/`, with its file name.
pub fn corpus(corpus: &Path, target: &str) -> Vec<(String, Vec<u8>)> {
    let dir = corpus.join(target);
    let mut seeds: Vec<(String, Vec<u8>)> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("fuzz corpus {}: {e}", dir.display()))
        .flatten()
        .filter_map(|e| {
            let name = e.file_name().to_string_lossy().to_string();
            std::fs::read(e.path()).ok().map(|b| (name, b))
        })
        .collect();
    seeds.sort();
    assert!(!seeds.is_empty(), "fuzz corpus {} is empty", dir.display());
    seeds
}

fn env_u64(name: &str) -> Option<u64> {
    std::env::var(name).ok().and_then(|v| v.parse().ok())
}

/// Runs `target` on every seed of `corpus/<name>/` and then on mutants of them, as many inputs
/// as `BERTH_FUZZ_ITERATIONS` says (default [`DEFAULT_ITERATIONS`]). `target` gets the seed's
/// file name (which can select the request method) and the input. Panics, naming the seed
/// and the crash file, when `target` panics.
pub fn run(corpus_dir: &Path, name: &str, mut target: impl FnMut(&str, &[u8])) {
    let seeds = corpus(corpus_dir, name);
    let pool: Vec<Vec<u8>> = seeds.iter().map(|(_, b)| b.clone()).collect();
    let iterations = env_u64("BERTH_FUZZ_ITERATIONS").unwrap_or(DEFAULT_ITERATIONS);
    let seed = env_u64("BERTH_FUZZ_SEED").unwrap_or(0x0062_6572_7468);
    let mut rng = Rng::new(
        seed ^ name
            .bytes()
            .fold(0u64, |h, b| h.wrapping_mul(31) ^ b as u64),
    );
    for i in 0..iterations + seeds.len() as u64 {
        let (seed_name, seed_bytes) = &seeds[(i as usize) % seeds.len()];
        let input = if (i as usize) < seeds.len() {
            seed_bytes.clone()
        } else {
            mutate(&mut rng, seed_bytes, &pool)
        };
        let outcome = catch_unwind(AssertUnwindSafe(|| target(seed_name, &input)));
        if outcome.is_err() {
            let file = save_crash(name, i, &input);
            panic!(
                "fuzz target {name} panicked on input {i} (a mutant of {seed_name}, seed {seed}); \
                 saved to {}",
                file.display()
            );
        }
    }
}

/// The plugin-request target both daemons share: every seed of `corpus/<name>/` (files named
/// `<Method>.<n>`) and its mutants go through `router` as Docker's POST `/<Method>`. Whatever
/// the bytes, the answer must be one of the protocol's statuses with a JSON body; an error
/// carries a non-empty, bounded `Err` (and `Error`, which IPAM reads), and no handler panicked
/// (a panic on a worker thread comes back as "worker failed"). Returns how often each status
/// was seen, for the caller to check the run reached its handlers.
pub fn run_router(
    corpus_dir: &Path,
    name: &str,
    router: &crate::Router,
) -> std::collections::BTreeMap<u16, u64> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a current-thread runtime");
    let mut seen = std::collections::BTreeMap::<u16, u64>::new();
    run(corpus_dir, name, |seed, input| {
        let method = seed.rsplit_once('.').map_or(seed, |(m, _)| m);
        let reply = runtime.block_on(router.dispatch(crate::Request {
            method: http::Method::POST,
            path: format!("/{method}"),
            query: None,
            body: bytes::Bytes::copy_from_slice(input),
        }));
        let status = reply.status.as_u16();
        *seen.entry(status).or_default() += 1;
        assert!(
            matches!(status, 200 | 400 | 404 | 409 | 413 | 500),
            "{method}: status {status}"
        );
        let body: serde_json::Value = serde_json::from_slice(&reply.body)
            .unwrap_or_else(|e| panic!("{method}: answer is not JSON ({e})"));
        if status != 200 {
            let err = body["Err"].as_str().unwrap_or_default();
            assert!(!err.is_empty(), "{method}: error without Err: {body}");
            assert_eq!(body["Err"], body["Error"], "{method}: IPAM reads Error");
            assert!(
                !err.contains("worker failed"),
                "{method}: a handler panicked: {err}"
            );
            assert!(err.len() <= 4096, "{method}: {} byte error", err.len());
        }
    });
    seen
}

fn save_crash(name: &str, i: u64, input: &[u8]) -> PathBuf {
    let dir = std::env::temp_dir().join("berth-fuzz-crashes").join(name);
    let file = dir.join(format!("crash-{i}"));
    let _ = std::fs::create_dir_all(&dir).and_then(|_| std::fs::write(&file, input));
    file
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mutants_differ_and_runs_are_reproducible() {
        let seed = br#"{"Name":"db","Opts":{"size":"10G"}}"#.to_vec();
        let mut a = Rng::new(7);
        let mut b = Rng::new(7);
        let mut changed = 0;
        for _ in 0..200 {
            let x = mutate(&mut a, &seed, &[]);
            assert_eq!(x, mutate(&mut b, &seed, &[]));
            changed += usize::from(x != seed);
        }
        assert!(changed > 150, "{changed} of 200 mutants differ");
    }

    #[test]
    fn a_panicking_target_fails_the_run() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("t")).unwrap();
        std::fs::write(dir.path().join("t/seed"), b"{}").unwrap();
        let caught = catch_unwind(|| run(dir.path(), "t", |_, input| assert!(input.len() < 64)));
        assert!(caught.is_err(), "the run must fail when the target panics");
    }
}
