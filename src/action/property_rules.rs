//! `platformPropertyRules`: what happens to the platform properties of a rewritten
//! action other than the image properties (docs/design/image-environment.md#platform-property-rules).
//!
//! Clients configured for other services send properties the workers behind
//! bb_scheduler do not advertise (`dockerNetwork`, `dockerRunAsRoot`, `Pool`, …), and
//! bb_scheduler matches properties exactly: such an action would wait for a worker that
//! never comes. Each rule matches properties by name, and by value when it gives one,
//! and drops them, renames them (name and/or value), sets a property when none of that
//! name is present, or rejects the action with FAILED_PRECONDITION naming the property
//! and the rule. Rules apply in the order configured, each to the list the previous
//! ones left.

use crate::proto::reapi::platform::Property;
use std::fmt;
use tonic::Status;

/// One rule of `platformPropertyRules`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PropertyRule {
    pub name: String,
    /// Match only this value (`None`: any).
    pub value: Option<String>,
    pub action: RuleAction,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RuleAction {
    /// Remove the matching properties.
    Drop,
    /// Replace the name and/or the value of the matching properties.
    Rename {
        name: Option<String>,
        value: Option<String>,
    },
    /// Add `name=value` when no property has the rule's name.
    SetWhenAbsent { value: String },
    /// Refuse the action, with this explanation for the user.
    Reject { message: String },
}

impl PropertyRule {
    fn matches(&self, property: &Property) -> bool {
        property.name == self.name && self.value.as_ref().is_none_or(|v| *v == property.value)
    }
}

impl fmt::Display for PropertyRule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let matched = match &self.value {
            Some(value) => format!("{}={}", self.name, value),
            None => self.name.clone(),
        };
        match &self.action {
            RuleAction::Drop => write!(f, "DROP {matched}"),
            RuleAction::Rename { name, value } => write!(
                f,
                "RENAME {matched} to {}={}",
                name.as_deref().unwrap_or(&self.name),
                value.as_deref().unwrap_or("(its value)")
            ),
            RuleAction::SetWhenAbsent { value } => {
                write!(f, "SET_WHEN_ABSENT {}={value}", self.name)
            }
            RuleAction::Reject { .. } => write!(f, "REJECT {matched}"),
        }
    }
}

/// `properties` with `rules` applied in order; FAILED_PRECONDITION when a REJECT rule
/// matches one.
pub fn apply(
    rules: &[PropertyRule],
    mut properties: Vec<Property>,
) -> Result<Vec<Property>, Status> {
    for (index, rule) in rules.iter().enumerate() {
        match &rule.action {
            RuleAction::Drop => properties.retain(|p| !rule.matches(p)),
            RuleAction::Rename { name, value } => {
                for property in properties.iter_mut().filter(|p| rule.matches(p)) {
                    if let Some(name) = name {
                        property.name = name.clone();
                    }
                    if let Some(value) = value {
                        property.value = value.clone();
                    }
                }
            }
            RuleAction::SetWhenAbsent { value } => {
                if !properties.iter().any(|p| p.name == rule.name) {
                    properties.push(Property {
                        name: rule.name.clone(),
                        value: value.clone(),
                    });
                }
            }
            RuleAction::Reject { message } => {
                if let Some(property) = properties.iter().find(|p| rule.matches(p)) {
                    return Err(Status::failed_precondition(format!(
                        "Platform property {}={} is refused by platformPropertyRules[{index}] ({rule}): {message}",
                        property.name, property.value
                    )));
                }
            }
        }
    }
    Ok(properties)
}

#[cfg(test)]
mod tests {
    use super::*;
    use tonic::Code;

    fn props(pairs: &[(&str, &str)]) -> Vec<Property> {
        pairs
            .iter()
            .map(|(n, v)| Property {
                name: n.to_string(),
                value: v.to_string(),
            })
            .collect()
    }

    fn rule(name: &str, value: Option<&str>, action: RuleAction) -> PropertyRule {
        PropertyRule {
            name: name.into(),
            value: value.map(str::to_owned),
            action,
        }
    }

    #[test]
    fn drop_removes_by_name_or_by_name_and_value() {
        let rules = [
            rule("dockerNetwork", None, RuleAction::Drop),
            rule("dockerRunAsRoot", Some("false"), RuleAction::Drop),
        ];
        let kept = apply(
            &rules,
            props(&[
                ("OSFamily", "linux"),
                ("dockerNetwork", "standard"),
                ("dockerNetwork", "off"),
                ("dockerRunAsRoot", "false"),
                ("dockerRunAsRoot", "true"),
            ]),
        )
        .unwrap();
        assert_eq!(
            kept,
            props(&[("OSFamily", "linux"), ("dockerRunAsRoot", "true")])
        );
    }

    #[test]
    fn rename_changes_name_value_or_both_of_matching_properties() {
        let rules = [
            rule(
                "Pool",
                None,
                RuleAction::Rename {
                    name: Some("pool".into()),
                    value: None,
                },
            ),
            rule(
                "size",
                Some("xl"),
                RuleAction::Rename {
                    name: None,
                    value: Some("large".into()),
                },
            ),
            rule(
                "gpu",
                Some("yes"),
                RuleAction::Rename {
                    name: Some("accelerator".into()),
                    value: Some("nvidia".into()),
                },
            ),
        ];
        let renamed = apply(
            &rules,
            props(&[
                ("Pool", "fast"),
                ("size", "xl"),
                ("size", "s"),
                ("gpu", "yes"),
            ]),
        )
        .unwrap();
        assert_eq!(
            renamed,
            props(&[
                ("pool", "fast"),
                ("size", "large"),
                ("size", "s"),
                ("accelerator", "nvidia")
            ])
        );
    }

    #[test]
    fn set_when_absent_adds_only_when_no_property_has_the_name() {
        let rules = [rule(
            "pool",
            None,
            RuleAction::SetWhenAbsent {
                value: "default".into(),
            },
        )];
        assert_eq!(
            apply(&rules, props(&[("OSFamily", "linux")])).unwrap(),
            props(&[("OSFamily", "linux"), ("pool", "default")])
        );
        assert_eq!(
            apply(&rules, props(&[("pool", "fast")])).unwrap(),
            props(&[("pool", "fast")])
        );
    }

    #[test]
    fn reject_names_the_property_and_the_rule() {
        let rules = [
            rule("dockerNetwork", None, RuleAction::Drop),
            rule(
                "dockerPrivileged",
                Some("true"),
                RuleAction::Reject {
                    message: "privileged containers are not offered".into(),
                },
            ),
        ];
        let err = apply(&rules, props(&[("dockerPrivileged", "true")])).unwrap_err();
        assert_eq!(err.code(), Code::FailedPrecondition);
        assert_eq!(
            err.message(),
            "Platform property dockerPrivileged=true is refused by platformPropertyRules[1] \
             (REJECT dockerPrivileged=true): privileged containers are not offered"
        );
        // Another value does not match.
        assert!(apply(&rules, props(&[("dockerPrivileged", "false")])).is_ok());
    }

    #[test]
    fn rules_apply_in_order_to_what_earlier_rules_left() {
        let rules = [
            rule(
                "Pool",
                None,
                RuleAction::Rename {
                    name: Some("pool".into()),
                    value: None,
                },
            ),
            rule(
                "pool",
                None,
                RuleAction::SetWhenAbsent {
                    value: "default".into(),
                },
            ),
        ];
        assert_eq!(
            apply(&rules, props(&[("Pool", "fast")])).unwrap(),
            props(&[("pool", "fast")])
        );
    }
}
