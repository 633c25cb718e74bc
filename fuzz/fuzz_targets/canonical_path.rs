//! Canonicalisation never panics, is idempotent, and never leaves `.`/`..`/`//`/`%2F` behind.
#![no_main]

use libfuzzer_sys::fuzz_target;
use portcullis::canonical::{canonical_host, canonical_path};

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    let _ = canonical_host(text);
    let raw = format!("/{text}");
    if let Ok(once) = canonical_path(&raw) {
        let twice = canonical_path(&once).expect("a canonical path is valid");
        assert_eq!(once, twice);
        assert!(!once.contains("//"));
        assert!(!once.split('/').any(|s| s == "." || s == ".."));
        assert!(!once.contains("%2F") && !once.contains('\\'));
    }
});
