//! Links with esp-hal's linker script and, for the Wi-Fi firmware, copies the TLS identity
//! from the DER files named by `IOT_TLS_CA`, `IOT_TLS_CERT` and `IOT_TLS_KEY` into the build
//! (an empty file for each one not given, so a build without credentials, CI's, works and
//! the firmware reports what is missing). Nothing secret is kept in the repository.
use std::path::PathBuf;

fn main() {
    println!("cargo:rustc-link-arg=-Tlinkall.x");

    let out = PathBuf::from(std::env::var_os("OUT_DIR").expect("cargo sets OUT_DIR")).join("tls");
    std::fs::create_dir_all(&out).expect("OUT_DIR is writable");
    for (var, file) in [
        ("IOT_TLS_CA", "ca.der"),
        ("IOT_TLS_CERT", "cert.der"),
        ("IOT_TLS_KEY", "key.der"),
    ] {
        println!("cargo:rerun-if-env-changed={var}");
        let bytes = match std::env::var_os(var) {
            Some(path) if !path.is_empty() => {
                println!("cargo:rerun-if-changed={}", PathBuf::from(&path).display());
                std::fs::read(&path)
                    .unwrap_or_else(|e| panic!("{var}={}: {e}", PathBuf::from(&path).display()))
            }
            _ => Vec::new(),
        };
        std::fs::write(out.join(file), bytes).expect("OUT_DIR is writable");
    }
}
