//! The action's environment with the images' `Env` as its base, as a container runtime
//! builds it (docs/design/image-environment.md): every variable of an image's `Env` the
//! Command does not set is added, a later image overriding an earlier one, the
//! Command's own values winning; the result is sorted by name, as REAPI requires of
//! `Command.environment_variables`.

use crate::proto::cache::ImageRuntimeConfig;
use crate::proto::reapi::command::EnvironmentVariable;
use std::collections::BTreeMap;

/// The environment of a rewritten Command.
#[derive(Clone, Debug, Default, PartialEq)]
pub(crate) struct Environment {
    /// Every variable, sorted by name (byte order).
    pub variables: Vec<EnvironmentVariable>,
    /// The variables taken from the images, sorted by name (for the provenance).
    pub added: Vec<EnvironmentVariable>,
}

/// `command`'s variables over the `Env` of `images` (in the order they are stacked).
/// An `Env` entry without `=` sets nothing (container runtimes would take the value
/// from their own environment, which a remote action does not have).
pub(crate) fn with_images(
    command: &[EnvironmentVariable],
    images: &[&ImageRuntimeConfig],
) -> Environment {
    let mut from_images: BTreeMap<&str, &str> = BTreeMap::new();
    for image in images {
        for entry in &image.env {
            if let Some((name, value)) = entry.split_once('=') {
                if !name.is_empty() {
                    from_images.insert(name, value);
                }
            }
        }
    }
    let mut all: BTreeMap<String, String> = from_images
        .iter()
        .map(|(n, v)| (n.to_string(), v.to_string()))
        .collect();
    for variable in command {
        all.insert(variable.name.clone(), variable.value.clone());
    }
    let added = from_images
        .into_iter()
        .filter(|(name, _)| !command.iter().any(|v| v.name == *name))
        .map(|(name, value)| variable(name, value))
        .collect();
    Environment {
        variables: all.into_iter().map(|(n, v)| variable(&n, &v)).collect(),
        added,
    }
}

/// The value of `name` in `variables`, if set.
pub(crate) fn value<'a>(variables: &'a [EnvironmentVariable], name: &str) -> Option<&'a str> {
    variables
        .iter()
        .find(|v| v.name == name)
        .map(|v| v.value.as_str())
}

fn variable(name: &str, value: &str) -> EnvironmentVariable {
    EnvironmentVariable {
        name: name.to_owned(),
        value: value.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn image(env: &[&str]) -> ImageRuntimeConfig {
        ImageRuntimeConfig {
            env: env.iter().map(|e| e.to_string()).collect(),
            ..Default::default()
        }
    }

    fn vars(pairs: &[(&str, &str)]) -> Vec<EnvironmentVariable> {
        pairs.iter().map(|(n, v)| variable(n, v)).collect()
    }

    #[test]
    fn image_variables_the_command_does_not_set_are_added_sorted() {
        let base = image(&["PATH=/usr/local/bin:/usr/bin", "LANG=C.UTF-8", "HOME=/root"]);
        let command = vars(&[("HOME", "/home/build"), ("TMPDIR", "/tmp")]);
        let environment = with_images(&command, &[&base]);
        assert_eq!(
            environment.variables,
            vars(&[
                ("HOME", "/home/build"),
                ("LANG", "C.UTF-8"),
                ("PATH", "/usr/local/bin:/usr/bin"),
                ("TMPDIR", "/tmp"),
            ])
        );
        assert_eq!(
            environment.added,
            vars(&[("LANG", "C.UTF-8"), ("PATH", "/usr/local/bin:/usr/bin")])
        );
    }

    #[test]
    fn a_later_image_overrides_an_earlier_one_and_the_command_overrides_both() {
        let first = image(&["PATH=/first", "ONLY_FIRST=1", "SHARED=first"]);
        let second = image(&["SHARED=second", "ONLY_SECOND=2", "PATH=/second"]);
        let command = vars(&[("PATH", "/command")]);
        let environment = with_images(&command, &[&first, &second]);
        assert_eq!(
            environment.variables,
            vars(&[
                ("ONLY_FIRST", "1"),
                ("ONLY_SECOND", "2"),
                ("PATH", "/command"),
                ("SHARED", "second"),
            ])
        );
        assert_eq!(
            environment.added,
            vars(&[
                ("ONLY_FIRST", "1"),
                ("ONLY_SECOND", "2"),
                ("SHARED", "second")
            ])
        );
    }

    #[test]
    fn values_keep_their_equals_signs_and_entries_without_one_set_nothing() {
        let base = image(&["OPTS=a=b=c", "NOVALUE", "=nameless", "EMPTY="]);
        let environment = with_images(&[], &[&base]);
        assert_eq!(
            environment.variables,
            vars(&[("EMPTY", ""), ("OPTS", "a=b=c")])
        );
        assert_eq!(value(&environment.variables, "OPTS"), Some("a=b=c"));
        assert_eq!(value(&environment.variables, "NOVALUE"), None);
    }

    #[test]
    fn names_sort_by_bytes_and_an_image_without_env_changes_nothing() {
        let command = vars(&[("B", "1"), ("a", "2")]);
        let environment = with_images(&command, &[&image(&["Z=3", "_=4"])]);
        let names: Vec<&str> = environment
            .variables
            .iter()
            .map(|v| v.name.as_str())
            .collect();
        assert_eq!(names, vec!["B", "Z", "_", "a"]);
        let unchanged = with_images(&command, &[&image(&[])]);
        assert_eq!(unchanged.variables, command);
        assert!(unchanged.added.is_empty());
    }
}
