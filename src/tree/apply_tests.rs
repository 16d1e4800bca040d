//! Tests of `apply.rs`, one per rule of docs/design/layers.md (the case names W-xx, O-xx, S-xx,
//! H-xx follow docs/design/layers.md where it names them; the others are ours).

use super::apply::apply_layer;
use super::directory::{Directory, Node};
use super::encode::encode;
use super::error::error_name;
use super::test_support::*;
use std::sync::Arc;

fn lines(expected: &[&str]) -> Vec<String> {
    let mut v: Vec<String> = expected.iter().map(|s| s.to_string()).collect();
    v.sort();
    v
}

// ---- Whiteouts (docs/design/layers.md#two-passes, #implied-parents, #whiteouts, #opaque-directories) ----

#[test]
fn w01_whiteout_removes_a_lower_file() {
    let got = result_of(vec![
        vec![file("a/f", "1"), file("a/g", "2")],
        vec![whiteout("a/f")],
    ]);
    assert_eq!(got, lines(&["a/", "a/g=2"]));
}

#[test]
fn w02_whiteout_removes_a_whole_directory() {
    let got = result_of(vec![
        vec![file("d/sub/x", "1"), file("d/y", "2"), file("keep", "3")],
        vec![whiteout("d")],
    ]);
    assert_eq!(got, lines(&["keep=3"]));
}

#[test]
fn w03_whiteout_of_a_missing_path_is_a_no_op_but_creates_implied_parents() {
    // docs/design/layers.md#implied-parents: docker creates the parents of a whiteout-only entry.
    let got = result_of(vec![vec![file("other", "1")], vec![whiteout("x/y/z")]]);
    assert_eq!(got, lines(&["other=1", "x/", "x/y/"]));
}

#[test]
fn w04_whiteout_then_same_layer_re_add_holds_only_the_new_children() {
    // docs/design/layers.md#whiteouts; ggcr #2191/#2029 mixed old and new children.
    let got = result_of(vec![
        vec![file("d/old", "1")],
        vec![whiteout("d"), dir("d"), file("d/new", "2")],
    ]);
    assert_eq!(got, lines(&["d/", "d/new=2"]));
    // A later layer may re-add too.
    let got = result_of(vec![
        vec![file("d/old", "1")],
        vec![whiteout("d")],
        vec![file("d/new", "2")],
    ]);
    assert_eq!(got, lines(&["d/", "d/new=2"]));
}

#[test]
fn w05_same_layer_entry_before_its_whiteout_survives() {
    // docs/design/layers.md#two-passes: whiteouts only act on lower layers (containerd/docker differ).
    let got = result_of(vec![
        vec![file("x", "1")],
        vec![file("x", "2"), whiteout("x")],
    ]);
    assert_eq!(got, lines(&["x=2"]));
    let got = result_of(vec![vec![file("n", "new"), whiteout("n")]]);
    assert_eq!(got, lines(&["n=new"]));
}

#[test]
fn w06_whiteout_of_a_symlink_removes_only_the_symlink() {
    let got = result_of(vec![
        vec![file("d/f", "1"), symlink("l", "d")],
        vec![whiteout("l")],
    ]);
    assert_eq!(got, lines(&["d/", "d/f=1"]));
}

#[test]
fn w07_whiteout_through_a_symlinked_parent() {
    // containerd test WhiteoutSymlinkPath: localetc -> /etc.
    let got = result_of(vec![
        vec![
            file("etc/whitedout", "1"),
            file("etc/kept", "2"),
            symlink("localetc", "/etc"),
        ],
        vec![whiteout("localetc/whitedout")],
    ]);
    assert_eq!(got, lines(&["etc/", "etc/kept=2", "localetc -> /etc"]));
}

#[test]
fn w08_whiteout_under_a_file_has_no_effect_and_is_not_an_error() {
    let got = result_of(vec![vec![file("f", "1")], vec![whiteout("f/x/y")]]);
    assert_eq!(got, lines(&["f=1"]));
}

#[test]
fn w09_whiteouts_resolve_against_the_lower_tree_only() {
    // The symlink `s` is new in this layer: the whiteout `s/x` does not follow it.
    let got = result_of(vec![
        vec![file("a/x", "1")],
        vec![symlink("s", "a"), whiteout("s/x")],
    ]);
    assert_eq!(got, lines(&["a/", "a/x=1", "s -> a"]));
}

#[test]
fn w10_whiteout_results_do_not_depend_on_entry_order() {
    let lower = vec![file("d/f", "1"), file("d/g", "2"), symlink("l", "d")];
    let a = result_of(vec![lower.clone(), vec![whiteout("d/f"), whiteout("l/g")]]);
    let b = result_of(vec![lower, vec![whiteout("l/g"), whiteout("d/f")]]);
    assert_eq!(a, b);
    assert_eq!(a, lines(&["d/", "l -> d"]));
}

#[test]
fn w11_implied_parents_of_whiteouts_survive_the_same_layers_whiteouts() {
    // docs/design/layers.md#implied-parents: they are this layer's own entries, created after Pass W's removals.
    let got = result_of(vec![
        vec![file("a/old", "1")],
        vec![whiteout("a"), whiteout("a/b/c")],
    ]);
    assert_eq!(got, lines(&["a/", "a/b/"]));
}

#[test]
fn w12_whiteout_of_the_root_is_invalid() {
    assert_eq!(
        error_of(vec![vec![whiteout("")]]),
        "InvalidWhiteout: layer entry \"\": a whiteout cannot remove the root"
    );
}

// ---- Opaque directories (docs/design/layers.md#opaque-directories) ----

#[test]
fn o01_opaque_removes_all_lower_children_and_keeps_the_directory() {
    let got = result_of(vec![
        vec![file("d/a", "1"), file("d/sub/b", "2"), file("other", "3")],
        vec![opaque("d")],
    ]);
    assert_eq!(got, lines(&["d/", "other=3"]));
}

#[test]
fn o02_same_layer_children_survive_wherever_they_are_in_the_stream() {
    let got = result_of(vec![
        vec![file("d/old", "1")],
        vec![file("d/before", "2"), opaque("d"), file("d/after", "3")],
    ]);
    assert_eq!(got, lines(&["d/", "d/after=3", "d/before=2"]));
}

#[test]
fn o03_opaque_keeps_same_layer_entries_with_implied_parents() {
    // containerd/docker delete these; the spec and we keep them.
    let got = result_of(vec![
        vec![file("d/sub/old", "1"), file("d/gone", "2")],
        vec![file("d/sub/x", "3"), opaque("d")],
    ]);
    assert_eq!(got, lines(&["d/", "d/sub/", "d/sub/x=3"]));
}

#[test]
fn o04_opaque_on_a_missing_directory_creates_it() {
    let got = result_of(vec![vec![file("f", "1")], vec![opaque("new/dir")]]);
    assert_eq!(got, lines(&["f=1", "new/", "new/dir/"]));
}

#[test]
fn o05_opaque_on_a_file_has_no_effect() {
    let got = result_of(vec![vec![file("f", "1")], vec![opaque("f")]]);
    assert_eq!(got, lines(&["f=1"]));
}

#[test]
fn o06_opaque_through_a_symlink_clears_the_target_directory() {
    let got = result_of(vec![
        vec![file("real/a", "1"), symlink("l", "real")],
        vec![opaque("l")],
    ]);
    assert_eq!(got, lines(&["l -> real", "real/"]));
}

#[test]
fn o07_opaque_at_the_root() {
    let got = result_of(vec![
        vec![file("a", "1"), file("d/b", "2")],
        vec![opaque(""), file("c", "3")],
    ]);
    assert_eq!(got, lines(&["c=3"]));
}

// ---- Parents and symlinks (docs/design/layers.md#implied-parents, #parent-resolution) ----

#[test]
fn s01_relative_symlink_parent_is_followed() {
    let got = result_of(vec![
        vec![dir("usr/lib"), symlink("lib", "usr/lib")],
        vec![file("lib/x", "1")],
    ]);
    assert_eq!(
        got,
        lines(&["lib -> usr/lib", "usr/", "usr/lib/", "usr/lib/x=1"])
    );
}

#[test]
fn s02_absolute_symlink_parent_restarts_at_the_image_root() {
    let got = result_of(vec![
        vec![dir("etc"), symlink("a", "/etc")],
        vec![file("a/passwd", "root")],
    ]);
    assert_eq!(got, lines(&["a -> /etc", "etc/", "etc/passwd=root"]));
}

#[test]
fn s03_relative_symlink_climbing_above_the_root_is_clamped() {
    // docs/design/layers.md#parent-resolution (DECISION: clamp, like containerd and umoci).
    let got = result_of(vec![
        vec![symlink("a", "../../../etc")],
        vec![file("a/passwd", "root")],
    ]);
    assert_eq!(
        got,
        lines(&["a -> ../../../etc", "etc/", "etc/passwd=root"])
    );
    let got = result_of(vec![
        vec![dir("x/y"), symlink("x/y/up", "../../../../z")],
        vec![file("x/y/up/f", "1")],
    ]);
    assert_eq!(
        got,
        lines(&["x/", "x/y/", "x/y/up -> ../../../../z", "z/", "z/f=1"])
    );
}

#[test]
fn s04_dangling_symlink_parent_creates_the_rest_as_directories() {
    let got = result_of(vec![vec![symlink("a", "/x/y")], vec![file("a/f", "1")]]);
    assert_eq!(got, lines(&["a -> /x/y", "x/", "x/y/", "x/y/f=1"]));
}

#[test]
fn s05_symlinks_inside_symlink_targets_are_followed() {
    // l1 -> l2/sub, l2 -> /d; d/sub/s -> ../../e; and `..` after a symlink part goes
    // up from the place the symlink resolved to.
    let got = result_of(vec![
        vec![
            symlink("l1", "l2/sub"),
            symlink("l2", "/d"),
            dir("d/sub"),
            symlink("d/sub/s", "../../e"),
            symlink("up", "l1/.."),
        ],
        vec![file("l1/s/f", "1"), file("up/g", "2")],
    ]);
    assert!(got.contains(&"e/f=1".to_string()), "{got:?}");
    assert!(got.contains(&"d/g=2".to_string()), "{got:?}");
}

#[test]
fn s06_directory_entry_replaces_a_usrmerge_symlink() {
    // docs/design/layers.md#replacing-entries: docker and containerd remove the symlink and make a real directory.
    let got = result_of(vec![
        vec![file("usr/lib/libc", "c"), symlink("lib", "usr/lib")],
        vec![dir("lib"), file("lib/x", "1")],
    ]);
    assert_eq!(
        got,
        lines(&["lib/", "lib/x=1", "usr/", "usr/lib/", "usr/lib/libc=c"])
    );
}

#[test]
fn s07_symlink_and_file_replace_a_whole_directory() {
    let got = result_of(vec![
        vec![file("d/f", "1"), file("e/g", "2")],
        vec![symlink("d", "elsewhere"), file("e", "3")],
    ]);
    assert_eq!(got, lines(&["d -> elsewhere", "e=3"]));
}

#[test]
fn s08_directory_over_directory_keeps_children_and_over_a_file_replaces_it() {
    let got = result_of(vec![
        vec![file("d/f", "1"), file("g", "2")],
        vec![dir("d"), dir("g")],
    ]);
    assert_eq!(got, lines(&["d/", "d/f=1", "g/"]));
}

#[test]
fn s09_the_last_part_is_never_followed() {
    let got = result_of(vec![
        vec![
            dir("d"),
            symlink("l", "d"),
            file("t", "1"),
            symlink("m", "t"),
        ],
        vec![file("l", "2"), symlink("m", "other")],
    ]);
    assert_eq!(got, lines(&["d/", "l=2", "m -> other", "t=1"]));
}

#[test]
fn s10_parent_through_a_file_is_not_a_directory() {
    assert_eq!(
        error_of(vec![vec![file("f", "1")], vec![file("f/x", "2")]]),
        "NotADirectory: layer entry \"f/x\": its parent resolves through \"f\", which is a \
         regular file, not a directory"
    );
    // Also when reached through a symlink.
    assert_eq!(
        error_of(vec![
            vec![file("d/f", "1"), symlink("l", "d/f")],
            vec![file("l/x", "2")]
        ]),
        "NotADirectory: layer entry \"l/x\": its parent resolves through \"d/f\", which is a \
         regular file, not a directory"
    );
}

#[test]
fn s11_symlink_loop_is_too_many_symlinks() {
    assert_eq!(
        error_of(vec![
            vec![symlink("a", "b"), symlink("b", "a")],
            vec![file("a/x", "1")]
        ]),
        "TooManySymlinks: layer entry \"a/x\": resolving its parent follows more than 255 \
         symlinks"
    );
    let err = apply_all(vec![
        vec![symlink("self", "self")],
        vec![whiteout("self/x")],
    ])
    .unwrap_err();
    assert_eq!(error_name(&err), "TooManySymlinks");
}

#[test]
fn s12_symlink_made_earlier_in_the_same_layer_redirects_later_entries() {
    let got = result_of(vec![vec![
        dir("real"),
        symlink("l", "real"),
        file("l/f", "1"),
    ]]);
    assert_eq!(got, lines(&["l -> real", "real/", "real/f=1"]));
}

#[test]
fn s13_duplicate_paths_last_wins() {
    // docs/design/layers.md#replacing-entries.
    let got = result_of(vec![vec![
        file("x", "1"),
        file("x", "2"),
        dir("d"),
        file("d/f", "3"),
        dir("d"),
    ]]);
    assert_eq!(got, lines(&["d/", "d/f=3", "x=2"]));
}

// ---- Hard links (docs/design/layers.md#hard-links) ----

#[test]
fn h01_hard_link_copies_the_file_with_the_link_entrys_exec_bit() {
    let got = result_of(vec![vec![
        file("t", "1"),
        hardlink_with_mode("x", "t", true),
        exe("u", "2"),
        hardlink("y", "u"),
    ]]);
    assert_eq!(got, lines(&["t=1", "u*=2", "x*=1", "y=2"]));
}

#[test]
fn h02_hard_link_to_a_lower_layer_works() {
    let got = result_of(vec![
        vec![file("usr/bin/a", "1")],
        vec![hardlink("usr/bin/b", "usr/bin/a")],
    ]);
    assert_eq!(
        got,
        lines(&["usr/", "usr/bin/", "usr/bin/a=1", "usr/bin/b=1"])
    );
}

#[test]
fn h03_copy_semantics_across_layers_ggcr_2002() {
    let got = result_of(vec![
        vec![file("t2", "123")],
        vec![hardlink("t1", "t2"), hardlink("t3", "t2")],
        vec![file("t1", "456")],
    ]);
    assert_eq!(got, lines(&["t1=456", "t2=123", "t3=123"]));
}

#[test]
fn h04_whiting_out_the_target_keeps_the_links_content_ggcr_977() {
    let got = result_of(vec![
        vec![file("t", "1"), hardlink("l", "t")],
        vec![whiteout("t")],
    ]);
    assert_eq!(got, lines(&["l=1"]));
}

#[test]
fn h05_hard_link_to_a_symlink_copies_the_symlink_without_following_it() {
    let got = result_of(vec![
        vec![file("f", "1"), symlink("s", "f")],
        vec![hardlink("x", "s")],
    ]);
    assert_eq!(got, lines(&["f=1", "s -> f", "x -> f"]));
}

#[test]
fn h06_hard_link_target_parent_resolves_through_symlinks() {
    let got = result_of(vec![
        vec![file("real/f", "1"), symlink("l", "/real")],
        vec![hardlink("x", "l/f")],
    ]);
    assert_eq!(got, lines(&["l -> /real", "real/", "real/f=1", "x=1"]));
}

#[test]
fn h07_hard_link_to_a_directory_is_an_error() {
    assert_eq!(
        error_of(vec![vec![dir("d"), hardlink("l", "d")]]),
        "HardlinkToDirectory: layer entry \"l\": the link target \"d\" is a directory"
    );
}

#[test]
fn h08_dangling_hard_links() {
    let missing = "DanglingHardlink: layer entry \"l\": the link target \"t\" does not exist";
    // Missing.
    assert_eq!(error_of(vec![vec![hardlink("l", "t")]]), missing);
    // Target only later in the same tar.
    assert_eq!(
        error_of(vec![vec![hardlink("l", "t"), file("t", "1")]]),
        missing
    );
    // Removed by Pass W of the same layer.
    assert_eq!(
        error_of(vec![
            vec![file("t", "1")],
            vec![whiteout("t"), hardlink("l", "t")]
        ]),
        missing
    );
    // A link to itself: the runtimes unlink the name first.
    assert_eq!(
        error_of(vec![vec![file("l", "1")], vec![hardlink("l", "l")]]),
        "DanglingHardlink: layer entry \"l\": the link target \"l\" does not exist"
    );
    // Through a file.
    let err = apply_all(vec![vec![file("f", "1"), hardlink("l", "f/x")]]).unwrap_err();
    assert_eq!(error_name(&err), "DanglingHardlink");
}

#[test]
fn h09_hard_link_to_a_special_file_of_the_same_layer_is_skipped() {
    let mut tree = Directory::new();
    let report = apply_layer(
        &mut tree,
        &changeset(vec![special("dev/fifo"), hardlink("dev/link", "dev/fifo")]),
    )
    .unwrap();
    assert_eq!(report.skipped_hard_links, 1);
    assert_eq!(listing(&tree), lines(&["dev/"]));
}

// ---- Devices and FIFOs (docs/design/layers.md#devices-and-fifos) ----

#[test]
fn x01_special_files_replace_what_is_there_and_leave_nothing() {
    let got = result_of(vec![
        vec![
            file("dev/null", "x"),
            file("d/sub/f", "1"),
            file("keep", "2"),
        ],
        vec![special("dev/null"), special("d"), special("new/fifo")],
    ]);
    assert_eq!(got, lines(&["dev/", "keep=2", "new/"]));
    // A later layer may put content there again.
    let got = result_of(vec![vec![special("p")], vec![file("p", "1")]]);
    assert_eq!(got, lines(&["p=1"]));
}

// ---- Generic ----

#[test]
fn root_entries_are_skipped() {
    let got = result_of(vec![vec![file("", "1"), dir(""), file("a", "2")]]);
    assert_eq!(got, lines(&["a=2"]));
}

#[test]
fn unnormalised_paths_and_kindless_entries_are_invalid() {
    assert_eq!(
        error_of(vec![vec![file("a/../b", "1")]]),
        "InvalidLayer: layer entry \"a/../b\": the path \"a/../b\" is not normalised"
    );
    let mut entry = file("a", "1");
    entry.kind = None;
    assert_eq!(
        error_of(vec![vec![entry]]),
        "InvalidLayer: layer entry \"a\": the entry has no kind"
    );
}

#[test]
fn a_failing_layer_leaves_the_tree_unchanged() {
    let mut tree = apply_all(vec![vec![file("a/f", "1"), file("g", "2")]]).unwrap();
    let before = tree.clone();
    let err = apply_layer(
        &mut tree,
        &changeset(vec![
            whiteout("a"),
            file("new", "3"),
            hardlink("l", "missing"),
        ]),
    )
    .unwrap_err();
    assert_eq!(error_name(&err), "DanglingHardlink");
    assert_eq!(tree, before);
}

#[test]
fn applying_onto_a_cached_lower_tree_shares_untouched_subtrees() {
    let lower = Arc::new(
        apply_all(vec![vec![
            file("usr/lib/a", "1"),
            file("etc/b", "2"),
            dir("var/empty"),
        ]])
        .unwrap(),
    );
    let lower_root = encode(&lower, F, 1 << 20).unwrap().root;
    let mut upper = (*lower).clone();
    apply_layer(
        &mut upper,
        &changeset(vec![file("etc/c", "3"), dir("usr"), dir("usr/lib")]),
    )
    .unwrap();
    let (Some(Node::Directory(a)), Some(Node::Directory(b))) = (lower.get("usr"), upper.get("usr"))
    else {
        panic!("usr should be a directory");
    };
    // Explicit directory entries over existing directories change nothing.
    assert!(Arc::ptr_eq(a, b));
    assert_eq!(encode(&lower, F, 1 << 20).unwrap().root, lower_root);
    let upper_encoded = encode(&upper, F, 1 << 20).unwrap();
    assert_ne!(upper_encoded.root, lower_root);
    // Same digest as the tree built from scratch.
    let scratch = apply_all(vec![vec![
        file("usr/lib/a", "1"),
        file("etc/b", "2"),
        dir("var/empty"),
        file("etc/c", "3"),
    ]])
    .unwrap();
    assert_eq!(
        encode(&scratch, F, 1 << 20).unwrap().root,
        upper_encoded.root
    );
}

#[test]
fn deep_trees_are_limited_and_the_deepest_allowed_one_is_handled() {
    let deepest = vec!["d"; super::apply::MAX_DEPTH - 1].join("/");
    let tree = apply_all(vec![vec![file(&format!("{deepest}/f"), "1")]]).unwrap();
    let encoded = encode(&tree, F, 1 << 20).unwrap();
    assert_eq!(
        encoded.statistics.directories,
        super::apply::MAX_DEPTH as u64 - 1
    );
    drop(tree);
    let err = apply_all(vec![vec![file(&format!("{deepest}/d/f"), "1")]]).unwrap_err();
    assert_eq!(
        err.message(),
        format!(
            "PathTooDeep: layer entry \"{deepest}/d/f\": it resolves to a path of 2049 parts, more than 2048"
        )
    );
    // Also through symlinks.
    let err = apply_all(vec![vec![
        dir(&deepest),
        symlink("l", &deepest),
        file("l/d/f", "1"),
    ]])
    .unwrap_err();
    assert_eq!(error_name(&err), "PathTooDeep");
}
