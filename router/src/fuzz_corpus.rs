//! Replays the routing core's fuzz corpus (router/fuzz/corpus/core) through the fuzz target's
//! own function, so every input the fuzzer kept, and every crash it found, runs in `cargo test`.
//! It lives outside `core/` because it reads files, which the core must not.

use crate::core::testing::props::fuzz_case;

#[test]
fn the_core_fuzz_corpus_keeps_the_delivery_invariants() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz/corpus/core");
    let mut inputs = 0;
    for entry in std::fs::read_dir(&dir).expect("router/fuzz/corpus/core") {
        let path = entry.expect("a corpus entry").path();
        let data = std::fs::read(&path).expect("a corpus file");
        let run = std::panic::catch_unwind(|| fuzz_case(&data));
        assert!(run.is_ok(), "corpus input {} fails", path.display());
        inputs += 1;
    }
    assert!(inputs > 0, "the corpus in {} is empty", dir.display());
}
