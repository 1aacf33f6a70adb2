//! The fuzz targets on the stable toolchain, inside `cargo test`: every committed seed
//! (`fuzz/seeds/<target>`) and every regression input (`fuzz/regressions/<target>`) goes
//! through its target's properties, then a fixed number of deterministic mutations of the seeds
//! (`FUZZ_MUTATIONS` per target, default 400). Coverage-guided runs are
//! `scripts/fuzz-smoke.sh` (CI) and the long runs in `docs/security.md`.
//!
//! A regression input is a file the fuzzer once crashed on, kept with a test below that tells
//! its story.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::fs;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::{Path, PathBuf};

use bulwark::fuzzing::TARGETS;

fn fuzz_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz")
}

/// The files of `fuzz/<kind>/<target>`, sorted by name (empty when the folder is missing).
fn inputs(kind: &str, target: &str) -> Vec<(String, Vec<u8>)> {
    let dir = fuzz_dir().join(kind).join(target);
    let mut out: Vec<(String, Vec<u8>)> = fs::read_dir(&dir)
        .into_iter()
        .flatten()
        .flatten()
        .filter(|e| e.path().is_file())
        .map(|e| {
            let bytes = fs::read(e.path()).unwrap();
            (e.file_name().to_string_lossy().into_owned(), bytes)
        })
        .collect();
    out.sort();
    out
}

/// Runs one input, naming the target and the input (hex) when a property fails.
fn run(name: &str, f: fn(&[u8]), label: &str, data: &[u8]) {
    if catch_unwind(AssertUnwindSafe(|| f(data))).is_err() {
        let hex: String = data.iter().map(|b| format!("{b:02x}")).collect();
        panic!("fuzz target {name} failed on {label}: {hex}");
    }
}

#[test]
fn every_target_has_a_libfuzzer_binary_and_seeds() {
    for (name, _) in TARGETS {
        let source = fuzz_dir().join("fuzz_targets").join(format!("{name}.rs"));
        assert!(source.is_file(), "{} is missing", source.display());
        assert!(!inputs("seeds", name).is_empty(), "no seeds for {name}");
    }
    let binaries = fs::read_dir(fuzz_dir().join("fuzz_targets"))
        .unwrap()
        .count();
    assert_eq!(
        binaries,
        TARGETS.len(),
        "a fuzz target without an entry in TARGETS"
    );
}

#[test]
fn seeds_and_regressions_hold_their_properties() {
    for (name, f) in TARGETS {
        for kind in ["seeds", "regressions"] {
            for (file, data) in inputs(kind, name) {
                run(name, *f, &format!("{kind}/{name}/{file}"), &data);
            }
        }
    }
}

/// A small deterministic generator (xorshift64*), so a failure reproduces from its seed.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }
}

/// Bytes that parsers care about, for insertion.
const TOKENS: &[&[u8]] = &[
    b"{",
    b"}",
    b"[",
    b"]",
    b"\"",
    b":",
    b",",
    b".",
    b"_",
    b"\n",
    b"\\u0000",
    b"\\ud800",
    b"-0",
    b"1e999",
    b"18446744073709551616",
    b"null",
    b"true",
    b"\xff",
    b"\xc0\x80",
    b"=",
    b" ",
    b"\x91",
    b"\x81",
    b"\xa1a",
    b"\xdc\xff\xff",
    b"\xdf\xff\xff\xff\xff",
    b"bwk_",
    b"bpt_",
    b"bws_",
    b"eyJ",
];

fn mutate(rng: &mut Rng, input: &[u8], others: &[(String, Vec<u8>)]) -> Vec<u8> {
    let mut out = input.to_vec();
    for _ in 0..=rng.below(4) {
        let at = rng.below(out.len() + 1);
        match rng.below(7) {
            0 if !out.is_empty() => {
                let i = rng.below(out.len());
                out[i] ^= 1 << rng.below(8);
            }
            1 if !out.is_empty() => {
                let i = rng.below(out.len());
                out[i] = rng.next() as u8;
            }
            2 => out.insert(at, rng.next() as u8),
            3 if !out.is_empty() => {
                let i = rng.below(out.len());
                let len = rng.below(out.len() - i + 1);
                out.drain(i..i + len);
            }
            4 => {
                let token = TOKENS[rng.below(TOKENS.len())];
                out.splice(at..at, token.iter().copied());
            }
            5 if !others.is_empty() => {
                let other = &others[rng.below(others.len())].1;
                let from = rng.below(other.len() + 1);
                out.splice(at..at, other[from..].iter().copied());
            }
            _ => out.truncate(at),
        }
    }
    out
}

#[test]
fn mutated_seeds_hold_their_properties() {
    let per_target: usize = std::env::var("FUZZ_MUTATIONS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(400);
    for (index, (name, f)) in TARGETS.iter().enumerate() {
        let seeds = inputs("seeds", name);
        let mut rng = Rng(0x9e37_79b9_7f4a_7c15 ^ (index as u64 + 1));
        for round in 0..per_target {
            let (_, seed) = &seeds[round % seeds.len()];
            let data = mutate(&mut rng, seed, &seeds);
            run(name, *f, &format!("mutation {round}"), &data);
        }
    }
}

/// Rewrites the binary seeds of the record targets (after a change of record format).
#[test]
#[ignore = "writes fuzz/seeds; run by hand"]
fn write_record_seeds() {
    for (target, name, bytes) in bulwark::fuzzing::record_seeds() {
        let dir = fuzz_dir().join("seeds").join(target);
        fs::create_dir_all(&dir).unwrap();
        fs::write(dir.join(name), bytes).unwrap();
    }
}

/// Found by `secret_file` in its first CI-length run: a 256-bit key file with `+c` where two
/// hex digits belong was accepted, as the key byte 0x0c. The reader checked each pair with
/// `u8::from_str_radix`, which also takes a leading sign, so 64 characters that are not all hex
/// digits made a key (two different files, one key). Only hex digits are accepted now.
#[test]
fn a_sign_inside_a_hex_key_file_is_refused() {
    let input = fs::read(fuzz_dir().join("regressions/secret_file/plus-sign-in-hex-pair")).unwrap();
    assert!(bulwark::secrets::parse_hex_key(&input).is_none());
    let mut plain = "0c".repeat(32).into_bytes();
    assert!(bulwark::secrets::parse_hex_key(&plain).is_some());
    plain[0] = b'+';
    assert!(bulwark::secrets::parse_hex_key(&plain).is_none());
}

/// Found by `sealed_record` in its first CI-length run (104 executions): one changed byte in a
/// sealed job record (the MessagePack type of the sealed `meta` field turned into `nil`) and
/// the record still opened, without its `meta`. Each sealed field is authenticated and bound to
/// its job, tenant and name, but whether an optional field (`meta`, `result`, `errors`,
/// `extra`) is there at all is not: someone who can write the database file can drop one
/// unnoticed. Closing it changes the envelope format (bind the set of present fields into the
/// associated data: envelope version 2, still reading version 1), so it is its own change; until
/// then this test is ignored and the target's property tolerates an absent optional field.
#[test]
#[ignore = "known gap: the presence of optional sealed fields is not authenticated"]
fn a_dropped_optional_sealed_field_is_refused() {
    use bulwark::job::envelope::{parse_new_job, EnvelopeRules};
    use bulwark::job::{Job, JobId};
    use bulwark::vault::keyring::Kek;
    use bulwark::vault::{sealed, KeyRing};

    let ring = KeyRing::new(vec![Kek::new("k", &[7; 32], None)], Some("k")).unwrap();
    let body = serde_json::json!({"type": "t.x", "args": [1], "meta": {"k": "v"}});
    let new = parse_new_job(&body, &EnvelopeRules::default(), 0).unwrap();
    let job = Job::from_new(new, JobId::generate(), None, None, 1, 0);
    let mut stored = sealed::read_record(&sealed::seal_job(&ring, &job).unwrap()).unwrap();
    stored.sealed.meta = None;
    let dropped = sealed::write_record(&stored).unwrap();
    assert!(
        sealed::open_job(&ring, &dropped).is_err(),
        "a record whose sealed meta was removed still opens"
    );
}
