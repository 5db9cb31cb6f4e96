//! Writes the seed inputs of every fuzz target to `seeds/<target>/<name>` (replacing what
//! is there). Run from `fuzz/`: `cargo run --example write_seeds`.

use std::path::Path;

fn main() -> std::io::Result<()> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("seeds");
    let seeds = iot_fuzz::seeds::all();
    let mut targets: Vec<&str> = seeds.iter().map(|(t, _, _)| *t).collect();
    targets.sort_unstable();
    targets.dedup();
    for target in targets {
        let dir = root.join(target);
        if dir.exists() {
            std::fs::remove_dir_all(&dir)?;
        }
        std::fs::create_dir_all(&dir)?;
    }
    for (target, name, bytes) in &seeds {
        std::fs::write(root.join(target).join(name), bytes)?;
    }
    println!("{} seeds written to {}", seeds.len(), root.display());
    Ok(())
}
