//! Tenants: `registries[].instanceNamePrefixes` limits a registry entry, and with it its
//! credentials, to the instance names under some prefixes (docs/design/tenants.md).
//!
//! Instance names are '/'-separated paths, and a prefix matches whole components, as
//! Buildbarn's instance name prefixes do: `team-a` matches `team-a` and `team-a/ci`, not
//! `team-ab`; the empty prefix matches every instance name. An entry without the field
//! is not limited, nor are hosts that no entry lists (reached with `allowAnyRegistry`,
//! anonymously). The check runs in [`Registry::check_allowed`](super::Registry), which
//! the image expander calls before it looks at any cache.

use tonic::Status;

/// Whether `prefix` matches `instance_name` by whole path components.
pub fn matches(prefix: &str, instance_name: &str) -> bool {
    prefix.is_empty()
        || instance_name
            .strip_prefix(prefix)
            .is_some_and(|rest| rest.is_empty() || rest.starts_with('/'))
}

/// Whether an entry limited to `prefixes` (`None`: not limited) may be used by
/// `instance_name`.
pub fn allows(prefixes: Option<&[String]>, instance_name: &str) -> bool {
    match prefixes {
        None => true,
        Some(prefixes) => prefixes.iter().any(|p| matches(p, instance_name)),
    }
}

/// Whether every instance name that `inner` allows is allowed by `outer` too.
pub fn covers(outer: Option<&[String]>, inner: Option<&[String]>) -> bool {
    match (outer, inner) {
        (None, _) => true,
        // Only the empty prefix allows every instance name.
        (Some(outer), None) => outer.iter().any(|q| q.is_empty()),
        (Some(outer), Some(inner)) => inner.iter().all(|p| outer.iter().any(|q| matches(q, p))),
    }
}

/// Checks the prefixes of one entry: at least one, each empty or a path without empty
/// components (no leading, trailing or doubled '/'). The message starts with the
/// index of the offending prefix (`[1]: …`) or with `: `, to follow the field's name.
pub fn validate(prefixes: &[String]) -> Result<(), String> {
    if prefixes.is_empty() {
        return Err(
            ": at least one prefix is required ('' allows every instance name; leave the \
             field out for no limit)"
                .into(),
        );
    }
    for (i, prefix) in prefixes.iter().enumerate() {
        if !prefix.is_empty() && prefix.split('/').any(str::is_empty) {
            return Err(format!(
                "[{i}]: {prefix:?} has an empty path component (no leading, trailing or \
                 doubled '/')"
            ));
        }
    }
    Ok(())
}

/// PERMISSION_DENIED for `instance_name` using `host`, whose entry does not allow it.
/// Names the registry and the instance name, not the prefixes that would be allowed
/// (other tenants' names).
pub fn refused(host: &str, instance_name: &str) -> Status {
    Status::permission_denied(format!(
        "Registry {host} is not allowed for instance name {instance_name:?}: its entry in \
         the registries of the configuration is limited to other instance names \
         (instanceNamePrefixes)"
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn strings(v: &[&str]) -> Vec<String> {
        v.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn prefixes_match_whole_path_components() {
        for (prefix, name) in [
            ("team-a", "team-a"),
            ("team-a", "team-a/x"),
            ("team-a", "team-a/x/y"),
            ("team-b/ci", "team-b/ci"),
            ("team-b/ci", "team-b/ci/linux"),
            ("", ""),
            ("", "anything/at/all"),
        ] {
            assert!(matches(prefix, name), "{prefix:?} should match {name:?}");
        }
        for (prefix, name) in [
            ("team-a", "team-ab"),
            ("team-a", "team-a-b/x"),
            ("team-a", ""),
            ("team-a", "team"),
            ("team-a", "x/team-a"),
            ("team-b/ci", "team-b"),
            ("team-b/ci", "team-b/cid"),
        ] {
            assert!(
                !matches(prefix, name),
                "{prefix:?} should not match {name:?}"
            );
        }
    }

    #[test]
    fn entries_without_prefixes_allow_every_instance_name() {
        assert!(allows(None, "team-z"));
        assert!(allows(None, ""));
        let limited = strings(&["team-a", "team-b/ci"]);
        assert!(allows(Some(&limited), "team-a/x"));
        assert!(allows(Some(&limited), "team-b/ci"));
        assert!(!allows(Some(&limited), "team-b"));
        assert!(!allows(Some(&limited), ""));
    }

    #[test]
    fn covering_is_inclusion_of_the_instance_names_allowed() {
        let a = strings(&["team-a"]);
        let a_ci = strings(&["team-a/ci"]);
        let ab = strings(&["team-a", "team-b"]);
        let everyone = strings(&[""]);
        assert!(covers(None, Some(&a)));
        assert!(covers(None, None));
        assert!(!covers(Some(&a), None));
        assert!(covers(Some(&a), Some(&a_ci)));
        assert!(!covers(Some(&a_ci), Some(&a)));
        assert!(covers(Some(&ab), Some(&a)));
        assert!(!covers(Some(&a), Some(&ab)));
        assert!(covers(Some(&everyone), Some(&ab)));
        assert!(covers(Some(&everyone), None));
    }

    #[test]
    fn prefixes_are_validated() {
        validate(&strings(&["team-a", "team-b/ci", ""])).unwrap();
        assert!(validate(&[]).unwrap_err().contains("at least one prefix"));
        for bad in ["/team-a", "team-a/", "team//a"] {
            let err = validate(&strings(&["ok", bad])).unwrap_err();
            assert!(err.starts_with("[1]: "), "{bad}: {err}");
            assert!(err.contains(bad), "{bad}: {err}");
        }
    }

    #[test]
    fn refusals_name_registry_and_instance() {
        let status = refused("registry.example", "team-b");
        assert_eq!(status.code(), tonic::Code::PermissionDenied);
        assert!(status.message().contains("registry.example"));
        assert!(status.message().contains("\"team-b\""));
    }
}
