//! Build facts for `portcullis --version`: the git commit the binary was built from (when
//! the source is a git checkout) and how it was optimised (profile-guided or not).

fn main() {
    let commit = std::process::Command::new("git")
        .args(["rev-parse", "--short=12", "HEAD"])
        .output()
        .ok()
        .filter(|out| out.status.success())
        .and_then(|out| String::from_utf8(out.stdout).ok())
        .map(|s| s.trim().to_owned())
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "unknown".to_owned());
    let flags = std::env::var("CARGO_ENCODED_RUSTFLAGS").unwrap_or_default();
    let profile = std::env::var("PROFILE").unwrap_or_default();
    let build = if flags.contains("profile-use") {
        format!("{profile}, profile-guided")
    } else if flags.contains("profile-generate") {
        format!("{profile}, instrumented for profiling")
    } else {
        profile
    };
    println!("cargo:rustc-env=PORTCULLIS_COMMIT={commit}");
    println!("cargo:rustc-env=PORTCULLIS_BUILD={build}");
    println!("cargo:rerun-if-changed=.git/HEAD");
    println!("cargo:rerun-if-changed=.git/refs");
    println!("cargo:rerun-if-env-changed=CARGO_ENCODED_RUSTFLAGS");
}
