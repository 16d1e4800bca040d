//! Writes the seed corpora of the fuzz targets: `cargo run --example fuzz_seeds [DIR]`
//! (default `fuzz/corpus`), one directory per target, run from the repository root.

fn main() -> std::io::Result<()> {
    let root = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "fuzz/corpus".to_owned());
    let mut written = 0;
    for (target, name, data) in bb_container_expander::fuzzing::seeds() {
        let directory = std::path::Path::new(&root).join(target);
        std::fs::create_dir_all(&directory)?;
        std::fs::write(directory.join(name), data)?;
        written += 1;
    }
    println!("Wrote {written} seeds under {root}");
    Ok(())
}
