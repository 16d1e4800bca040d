//! Platform properties of a rewritten action: which OCI platform it wants, and the
//! property list forwarded in its place (which image references an action names is
//! `images.rs`'s job).
//!
//! bb_scheduler requires the properties to be strictly increasing by (name, value), in
//! byte order, and matches them exactly against what workers advertise. The rewritten
//! list therefore drops every image property, adds the configured ones, sorts and
//! removes exact duplicates.

use crate::proto::reapi;
use crate::registry::Platform;
use tonic::Status;

/// The OCI platform the REAPI `OSFamily` and `ISA` properties ask for (`default` for
/// what they leave open).
pub(crate) fn wanted_platform(
    platform: Option<&reapi::Platform>,
    default: &Platform,
) -> Result<Platform, Status> {
    let values = |name: &str| -> Vec<&str> {
        platform
            .map(|p| {
                p.properties
                    .iter()
                    .filter(|property| property.name == name)
                    .map(|property| property.value.as_str())
                    .collect()
            })
            .unwrap_or_default()
    };
    Platform::from_reapi(&values("OSFamily"), &values("ISA"), default)
}

/// `platform` without the image properties, with `add` added, sorted strictly.
pub fn rewrite(
    platform: Option<&reapi::Platform>,
    image_property_names: &[String],
    add: &[reapi::platform::Property],
) -> reapi::Platform {
    let mut properties: Vec<reapi::platform::Property> = platform
        .map(|p| p.properties.clone())
        .unwrap_or_default()
        .into_iter()
        .filter(|property| !image_property_names.contains(&property.name))
        .chain(add.iter().cloned())
        .collect();
    properties.sort_by(|a, b| {
        (a.name.as_bytes(), a.value.as_bytes()).cmp(&(b.name.as_bytes(), b.value.as_bytes()))
    });
    properties.dedup();
    reapi::Platform { properties }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(pairs: &[(&str, &str)]) -> reapi::Platform {
        reapi::Platform {
            properties: pairs
                .iter()
                .map(|(n, v)| reapi::platform::Property {
                    name: n.to_string(),
                    value: v.to_string(),
                })
                .collect(),
        }
    }

    #[test]
    fn rewritten_platform_is_strictly_sorted_without_images() {
        let platform = p(&[
            ("OSFamily", "linux"),
            ("container-image", "docker://a/b:1"),
            ("pool", "default"),
        ]);
        let add = p(&[("chroot", "true"), ("OSFamily", "linux"), ("Arch", "x")]).properties;
        let rewritten = rewrite(Some(&platform), &["container-image".to_string()], &add);
        assert_eq!(
            rewritten,
            p(&[
                ("Arch", "x"),
                ("OSFamily", "linux"),
                ("chroot", "true"),
                ("pool", "default")
            ])
        );
    }

    #[test]
    fn wanted_platform_from_isa() {
        let platform = p(&[("ISA", "arm-a64"), ("OSFamily", "linux")]);
        let wanted = wanted_platform(Some(&platform), &Platform::default()).unwrap();
        assert_eq!(wanted.architecture, "arm64");
        assert_eq!(
            wanted_platform(None, &Platform::default()).unwrap(),
            Platform::default()
        );
    }
}
