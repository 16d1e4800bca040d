//! Benchmarks of issues 3 (image engine) and 4 (Execute path), each row with a baseline
//! measured in the same run:
//!
//! ```text
//! cargo bench --bench expander            # every row (about 5 minutes on 2 cores)
//! cargo bench --bench expander -- a e g   # some rows: a … i
//! cargo bench --bench expander -- serve a  # push row a's images, keep the registry up
//! ```
//!
//! | row | what | baseline |
//! |---|---|---|
//! | a | cold `expand` of one ~1 GiB gzip layer (2 x 256 MiB random, 512 MiB zeros) | `gzip -dc < blob \| sha256sum`, `igzip -dc < blob \| openssl dgst -sha256`, and the latter fed by `curl` from the registry |
//! | b | cold `expand` of a layer of ~20k small host files (4 copies of part of /usr) | the same two floors |
//! | k | cold `expand` of the Debian-like image of row e | the same two floors |
//! | c | cold `expand` of the images of a and b | `skopeo copy` + `umoci raw unpack --rootless` |
//! | d | cold `expand` of a 4-layer image | the sum of its layers expanded one by one |
//! | e | warm `expand` of a Debian-like image (~6k entries), no layer downloaded | its cold expand |
//! | f | peak RSS ingesting the 1 GiB layer into a discarding CAS (child process) | the same child, tiny image |
//! | j | peak RSS refusing the two metadata bombs of issue 12 (at most 160 MB) | a layer just under the metadata limits, accepted |
//! | g, h | Execute latency p50/p99 and throughput at 64 clients through the expander, warm | straight to the upstream |
//! | i | g and h for a 6k-entry and a 25k-entry image | idem |
//! | l | storage calls per warm action, Execute p50/p99 one at a time and Execute/s at 32 in flight, with CAS, AC and scheduler in another process whose every call costs 0.25 ms (6k-entry image) | straight to that process, and through a pass-through proxy (the ceiling of any proxy) |
//!
//! Everything runs on 127.0.0.1: a real CNCF Distribution registry (Debian package
//! `docker-registry`), started here on a free port with temporary storage, and images
//! built here (cached under `target/tmp/bench-images`). Needs the Debian packages
//! `docker-registry`, `curl`, `gzip`, `isal` (igzip), `openssl`, `skopeo` and `umoci`; nothing is
//! installed by the benchmark.

#[path = "../../tests/support/mod.rs"]
#[allow(unused_imports)]
mod support;

mod bombs;
mod engine;
mod execute;
mod layers;
mod pass_through;
mod push;
mod remote_storage;
mod report;

use engine::Floor;
use layers::{BuiltLayer, HostSelection};
use report::Table;
use std::time::Instant;

/// The allocator of the service binary (src/main.rs), so that rows measure what runs.
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

/// An image pushed to the benchmark's registry.
pub struct Pushed {
    /// `127.0.0.1:PORT/bench/NAME:TAG`.
    pub reference: String,
    pub layers: Vec<BuiltLayer>,
}

const ROWS: &str = "abcdefghijkl";

fn require(program: &str, package: &str) {
    let found = std::env::var_os("PATH")
        .is_some_and(|paths| std::env::split_paths(&paths).any(|d| d.join(program).exists()));
    if !found {
        eprintln!("{program} is missing: install the Debian package {package} (apt-get install -y {package})");
        std::process::exit(2);
    }
}

fn small_files_selection() -> HostSelection {
    HostSelection {
        roots: vec![
            "/usr/bin",
            "/usr/sbin",
            "/usr/lib/x86_64-linux-gnu",
            "/usr/share",
        ],
        maximum_entries: 5_500,
        maximum_file_bytes: 512 << 10,
        maximum_total_bytes: 200 << 20,
    }
}

fn debian_selection() -> HostSelection {
    HostSelection {
        roots: vec![
            "/usr/bin",
            "/usr/sbin",
            "/usr/lib/x86_64-linux-gnu",
            "/usr/share",
        ],
        maximum_entries: 6_000,
        maximum_file_bytes: 512 << 10,
        maximum_total_bytes: 160 << 20,
    }
}

fn big_selection() -> HostSelection {
    HostSelection {
        roots: vec![
            "/usr/bin",
            "/usr/sbin",
            "/usr/lib",
            "/usr/share",
            "/usr/include",
        ],
        maximum_entries: 25_000,
        maximum_file_bytes: 2 << 20,
        maximum_total_bytes: 400 << 20,
    }
}

fn main() {
    match std::env::var("BB_BENCH_CHILD").as_deref() {
        Ok("ingest") => {
            let reference = std::env::args().nth(1).expect("image reference");
            engine::child_ingest(&reference);
            return;
        }
        Ok("ingest-any") => {
            let reference = std::env::args().nth(1).expect("image reference");
            bombs::child(&reference);
            return;
        }
        Ok("storage") => {
            remote_storage::child_storage();
            return;
        }
        Ok("execute") => {
            let args: Vec<String> = std::env::args().skip(1).collect();
            execute::child_rows(&args);
            return;
        }
        _ => {}
    }
    // `cargo bench` passes `--bench`; other arguments select rows, and `serve` only
    // pushes the images of the selected rows and keeps the registry up (for profiling).
    let serve = std::env::args().any(|a| a == "serve");
    let mut selected: String = std::env::args()
        .filter(|a| a != "serve")
        .skip(1)
        .filter(|a| !a.starts_with('-'))
        .flat_map(|a| a.chars().collect::<Vec<_>>())
        .filter(|c| ROWS.contains(*c))
        .collect();
    if selected.is_empty() {
        selected = ROWS.into();
    }
    let wants = |rows: &str| rows.chars().any(|c| selected.contains(c));
    require("docker-registry", "docker-registry");
    if wants("abk") {
        require("gzip", "gzip");
        require("sha256sum", "coreutils");
        require("igzip", "isal");
        require("openssl", "openssl");
        require("curl", "curl");
    }
    if wants("c") {
        require("skopeo", "skopeo");
        require("umoci", "umoci");
    }
    let started = Instant::now();
    println!(
        "bb-container-expander benchmarks, rows {selected}; {} cores; loadavg at start: {}",
        std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(0),
        report::loadavg()
    );

    let build = |f: &dyn Fn() -> std::io::Result<BuiltLayer>| f().expect("build a benchmark layer");
    let huge = wants("acf").then(|| build(&layers::huge_files));
    let small = wants("bc")
        .then(|| build(&|| layers::host_tree("small-files", &small_files_selection(), 4, false)));
    let multi: Vec<BuiltLayer> = if wants("d") {
        (0..4)
            .map(|k| build(&|| layers::synthetic(&format!("multi-{k}"), k, 5_000, 64)))
            .collect()
    } else {
        Vec::new()
    };
    let debian = wants("eikl")
        .then(|| build(&|| layers::host_tree("debian-like", &debian_selection(), 1, true)));
    let big =
        wants("i").then(|| build(&|| layers::host_tree("big-25k", &big_selection(), 1, true)));
    let tiny = wants("fgh").then(|| build(&layers::tiny));
    let bombs = wants("j").then(|| {
        [
            build(&bombs::pax_path_bomb),
            build(&bombs::symlink_bomb),
            build(&bombs::just_under),
        ]
    });
    eprintln!("layers ready after {:.1}s", started.elapsed().as_secs_f64());

    let registry = support::registry_server::RegistryServer::start();
    let host = registry.host();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    let pusher = push::Pusher::new(&host);
    let push = |repository: &str, tag: &str, layers: Vec<BuiltLayer>| -> Pushed {
        let refs: Vec<&BuiltLayer> = layers.iter().collect();
        let (reference, _) = runtime.block_on(pusher.push_image(repository, tag, &refs));
        Pushed { reference, layers }
    };
    let pushed_at = Instant::now();
    let huge = huge.map(|l| push("bench/huge", "v1", vec![l]));
    let small = small.map(|l| push("bench/small", "v1", vec![l]));
    let singles: Vec<Pushed> = multi
        .iter()
        .enumerate()
        .map(|(k, l)| push("bench/multi", &format!("layer{k}"), vec![l.clone()]))
        .collect();
    let multi = (!multi.is_empty()).then(|| push("bench/multi", "all", multi.clone()));
    let debian = debian.map(|l| push("bench/debian", "v1", vec![l]));
    let big = big.map(|l| push("bench/big25k", "v1", vec![l]));
    let tiny = tiny.map(|l| push("bench/tiny", "v1", vec![l]));
    let bombs = bombs.map(|[pax, symlinks, under]| {
        [
            push("bench/bombs", "pax-paths", vec![pax]),
            push("bench/bombs", "symlink-targets", vec![symlinks]),
            push("bench/bombs", "just-under", vec![under]),
        ]
    });
    eprintln!(
        "images pushed to {host} in {:.1}s",
        pushed_at.elapsed().as_secs_f64()
    );
    // The registry has just written every blob: flush them to disk now, or the kernel's
    // writeback competes with the first rows for the disk and the cores (row a took
    // 5-6 s instead of 3.2 s while it ran).
    let synced_at = Instant::now();
    let synced = std::process::Command::new("sync").status();
    assert!(
        matches!(&synced, Ok(s) if s.success()),
        "sync failed: {synced:?}"
    );
    eprintln!(
        "registry storage flushed to disk in {:.1}s",
        synced_at.elapsed().as_secs_f64()
    );

    if serve {
        // For profiling: keep the registry and its images up until killed.
        for image in [&huge, &small, &multi, &debian, &big, &tiny]
            .into_iter()
            .flatten()
        {
            println!("{}", image.reference);
        }
        for single in &singles {
            println!("{}", single.reference);
        }
        println!("registry {host} serving until SIGINT or SIGTERM");
        runtime.block_on(async {
            use tokio::signal::unix::{signal, SignalKind};
            let mut terminate = signal(SignalKind::terminate()).unwrap();
            tokio::select! {
                _ = tokio::signal::ctrl_c() => {}
                _ = terminate.recv() => {}
            }
        });
        return; // dropping the registry stops it
    }
    let mut table = Table::default();
    let section = |name: &str| println!("== {name} (loadavg {})", report::loadavg());
    let mut huge_floor = None;
    if let (true, Some(huge)) = (wants("a"), &huge) {
        section("a: one large gzip layer vs the two floors");
        huge_floor = Some(
            engine::cold_vs_floor(
                &mut table,
                "a cold expand, 1 GiB layer",
                huge,
                &[
                    (Floor::Gnu, 1.3),
                    (Floor::Strong, 1.3),
                    (Floor::StrongFromRegistry, 1.3),
                ],
                3,
            )
            .1,
        );
    }
    if let (true, Some(small)) = (wants("b"), &small) {
        section("b: many small files vs the two floors");
        engine::cold_vs_floor(
            &mut table,
            "b cold expand, small files",
            small,
            &[
                (Floor::Gnu, 1.5),
                (Floor::Strong, 1.3),
                (Floor::StrongFromRegistry, 1.3),
            ],
            3,
        );
    }
    if let (true, Some(debian)) = (wants("k"), &debian) {
        section("k: Debian-like image vs the two floors");
        engine::cold_vs_floor(
            &mut table,
            "k cold expand, Debian-like",
            debian,
            &[
                (Floor::Gnu, 1.5),
                (Floor::Strong, 1.3),
                (Floor::StrongFromRegistry, 1.3),
            ],
            5,
        );
    }
    if wants("c") {
        section("c: against skopeo copy + umoci raw unpack");
        if let Some(small) = &small {
            engine::against_peer(
                &mut table,
                "c cold expand vs skopeo+umoci, small files",
                small,
                2,
            );
        }
        if let Some(huge) = &huge {
            engine::against_peer(
                &mut table,
                "c cold expand vs skopeo+umoci, 1 GiB layer",
                huge,
                2,
            );
        }
    }
    if let (true, Some(multi)) = (wants("d"), &multi) {
        section("d: multi-layer image");
        engine::multi_layer(&mut table, &singles, multi, 2);
    }
    if let (true, Some(debian)) = (wants("e"), &debian) {
        section("e: warm expand");
        runtime.block_on(engine::warm_expand(&mut table, debian, || registry.log()));
        runtime.block_on(engine::warm_expand_cli(&mut table, debian, &host, || {
            registry.log()
        }));
    }
    if let (true, Some(huge), Some(tiny)) = (wants("f"), &huge, &tiny) {
        section("f: peak RSS");
        engine::peak_rss(&mut table, huge, tiny, huge_floor);
    }
    if let Some([pax, symlinks, under]) = &bombs {
        section("j: metadata bombs");
        bombs::rows(
            &mut table,
            &[
                ("73 x 3.5 MiB PAX paths", pax),
                ("64 x 3 MiB symlink targets", symlinks),
            ],
            under,
        );
    }
    let mut execute_images = Vec::new();
    if let (true, Some(tiny)) = (wants("gh"), &tiny) {
        execute_images.push(execute::ExecuteImage {
            label: "tiny".into(),
            reference: tiny.reference.clone(),
            rows: "g/h".into(),
        });
    }
    if wants("i") {
        for (label, image) in [("6k", &debian), ("25k", &big)] {
            if let Some(image) = image {
                execute_images.push(execute::ExecuteImage {
                    label: label.into(),
                    reference: image.reference.clone(),
                    rows: "i".into(),
                });
            }
        }
    }
    if !execute_images.is_empty() {
        section("g/h/i: warm Execute path");
        execute::execute_rows(&mut table, &host, &execute_images);
    }

    if let (true, Some(debian)) = (wants("l"), &debian) {
        section("l: warm Execute path, storage and scheduler in another process");
        remote_storage::rows(&mut table, &host, &debian.reference);
    }

    println!();
    println!(
        "== results ({:.0}s in all; loadavg at end: {}; 2-core figures are noisy while other work runs)",
        started.elapsed().as_secs_f64(),
        report::loadavg()
    );
    table.print();
}
