use std::path::PathBuf;

fn main() {
    // Put memory.x where the linker looks for it.
    let Some(out) = std::env::var_os("OUT_DIR").map(PathBuf::from) else {
        panic!("cargo sets OUT_DIR");
    };
    if let Err(e) = std::fs::copy("memory.x", out.join("memory.x")) {
        panic!("memory.x: {e}");
    }
    println!("cargo:rustc-link-search={}", out.display());
    println!("cargo:rerun-if-changed=memory.x");
}
