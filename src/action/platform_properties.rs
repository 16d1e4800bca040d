//! Platform properties of a rewritten action: which OCI platform it wants, and the
//! property list forwarded in its place (which image references an action names is
//! `images.rs`'s job).
//!
//! bb_scheduler requires the properties to be strictly increasing by (name, value), in
//! byte order, and matches them exactly against what workers advertise. The rewritten
//! list therefore drops every image property, applies `platformPropertyRules`
//! (`property_rules.rs`) to the others, adds the configured ones, sorts and removes
//! exact duplicates.

use super::property_rules::{self, PropertyRule};
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

/// `platform` without the image properties, the others passed through `rules`, with
/// `add` added, sorted strictly. FAILED_PRECONDITION when a rule rejects a property.
pub fn rewrite(
    platform: Option<&reapi::Platform>,
    image_property_names: &[String],
    rules: &[PropertyRule],
    add: &[reapi::platform::Property],
) -> Result<reapi::Platform, Status> {
    let others: Vec<reapi::platform::Property> = platform
        .map(|p| p.properties.clone())
        .unwrap_or_default()
        .into_iter()
        .filter(|property| !image_property_names.contains(&property.name))
        .collect();
    let mut properties = property_rules::apply(rules, others)?;
    properties.extend(add.iter().cloned());
    properties.sort_by(|a, b| {
        (a.name.as_bytes(), a.value.as_bytes()).cmp(&(b.name.as_bytes(), b.value.as_bytes()))
    });
    properties.dedup();
    Ok(reapi::Platform { properties })
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
        let rewritten =
            rewrite(Some(&platform), &["container-image".to_string()], &[], &add).unwrap();
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
    fn rules_see_no_image_property_and_added_properties_are_not_ruled() {
        use super::property_rules::RuleAction;
        let platform = p(&[
            ("container-image", "docker://a/b:1"),
            ("dockerNetwork", "off"),
        ]);
        let reject_all = |name: &str| PropertyRule {
            name: name.into(),
            value: None,
            action: RuleAction::Reject {
                message: "no".into(),
            },
        };
        let names = ["container-image".to_string()];
        let add = p(&[("chroot", "true")]).properties;
        // A rule on the image property never sees it; one on an added property neither.
        let rules = [reject_all("container-image"), reject_all("chroot")];
        let rewritten = rewrite(Some(&platform), &names, &rules, &add).unwrap();
        assert_eq!(
            rewritten,
            p(&[("chroot", "true"), ("dockerNetwork", "off")])
        );
        let err = rewrite(
            Some(&platform),
            &names,
            &[reject_all("dockerNetwork")],
            &add,
        )
        .unwrap_err();
        assert_eq!(err.code(), tonic::Code::FailedPrecondition);
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
