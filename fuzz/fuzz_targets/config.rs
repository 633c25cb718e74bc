//! Config parsing and compilation never panic, whatever the file says.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    let dir = std::env::temp_dir();
    let _ = portcullis::config::load_str(text, dir.join("fuzz.toml"));
});
