//! Platforms: which image of a multi-platform index an action gets (docs/design/layers.md#platforms).
//!
//! - [`Platform::normalize`] compares platforms the way containerd does (docs/design/layers.md#platforms): `x86_64` is
//!   `amd64`, `aarch64` is `arm64` (variant `v8` dropped), `armhf` is `arm/v7`, …
//! - [`Platform::from_reapi`] maps the REAPI platform lexicon (`OSFamily`, `ISA`) to an OCI
//!   platform (docs/design/layers.md#platforms, our decision; no standard defines this map).
//! - [`select_manifest`] walks an index in order and returns the first entry that matches,
//!   skipping unknown media types and BuildKit attestation manifests, and reporting nested
//!   indexes for the caller to follow (docs/design/layers.md#platforms). No match → an error listing what is on offer.
//! - Windows is refused, both as a request and as an image (docs/design/layers.md#platforms).

use std::fmt;

use tonic::Status;

use super::configuration::new_platform_from_configuration;
use super::manifest::{is_index_media_type, is_manifest_media_type, Descriptor, Index};
use crate::config::container_images::PlatformConfiguration;

/// An OCI platform: operating system, CPU architecture and optional variant (`""` = none).
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Platform {
    /// `linux`.
    pub os: String,
    /// `amd64`, `arm64`, `arm`, `386`, `ppc64le`, `riscv64`, `s390x`, …
    pub architecture: String,
    /// `v7` for `arm`, …; empty when none is wanted or given.
    pub variant: String,
}

impl Default for Platform {
    /// `defaultPlatform` when unset: `linux/amd64`.
    fn default() -> Self {
        new_platform_from_configuration(&PlatformConfiguration::default())
    }
}

impl fmt::Display for Platform {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.os, self.architecture)?;
        if !self.variant.is_empty() {
            write!(f, "/{}", self.variant)?;
        }
        Ok(())
    }
}

impl Platform {
    /// A platform from its parts.
    pub fn new(os: &str, architecture: &str, variant: &str) -> Self {
        Self {
            os: os.to_owned(),
            architecture: architecture.to_owned(),
            variant: variant.to_owned(),
        }
    }

    /// The canonical spelling, as containerd's `platforms.Normalize` (docs/design/layers.md#platforms).
    pub fn normalize(&self) -> Self {
        let os = self.os.to_ascii_lowercase();
        let architecture = self.architecture.to_ascii_lowercase();
        let variant = self.variant.to_ascii_lowercase();
        let (architecture, variant) = match architecture.as_str() {
            "i386" => ("386".to_owned(), String::new()),
            "x86_64" | "x86-64" | "amd64" => {
                let variant = if variant == "v1" {
                    String::new()
                } else {
                    variant
                };
                ("amd64".to_owned(), variant)
            }
            "aarch64" | "arm64" => {
                let variant = match variant.as_str() {
                    "8" | "v8" | "v8.0" => String::new(),
                    _ => variant,
                };
                ("arm64".to_owned(), variant)
            }
            "armhf" => ("arm".to_owned(), "v7".to_owned()),
            "armel" => ("arm".to_owned(), "v6".to_owned()),
            "arm" => {
                let variant = match variant.as_str() {
                    "" | "7" => "v7".to_owned(),
                    "5" | "6" | "8" => format!("v{variant}"),
                    _ => variant,
                };
                ("arm".to_owned(), variant)
            }
            _ => (architecture, variant),
        };
        Self {
            os,
            architecture,
            variant,
        }
    }

    /// Whether an image for `offered` suits a request for `self`. Both sides are normalised;
    /// a request without a variant accepts any variant (docs/design/layers.md#platforms). For `arm`, the only
    /// architecture whose normalised form always has a variant, "no variant" is recognised
    /// from the request before normalisation.
    pub fn matches(&self, offered: &Platform) -> bool {
        let wanted = self.normalize();
        let offered = offered.normalize();
        if wanted.os != offered.os || wanted.architecture != offered.architecture {
            return false;
        }
        let wanted_any_variant = self.variant.is_empty()
            && !matches!(
                self.architecture.to_ascii_lowercase().as_str(),
                "armhf" | "armel"
            );
        wanted_any_variant || wanted.variant == offered.variant
    }

    /// Refuses platforms this service cannot run (docs/design/layers.md#platforms: Windows).
    pub fn check_supported(&self) -> Result<(), Status> {
        if self.os.eq_ignore_ascii_case("windows") {
            return Err(Status::failed_precondition(format!(
                "Platform {self} is not supported: Windows images keep their files under \
                 Files/ and Hives/ and cannot be applied as Linux layers"
            )));
        }
        Ok(())
    }

    /// The platform that the REAPI properties `OSFamily` and `ISA` ask for (docs/design/layers.md#platforms).
    ///
    /// `os_families` and `isas` are all values of those properties (a name may repeat, docs/design/directories.md#platform-properties).
    /// Without an ISA, the `default` platform is used; without an OSFamily, its OS. Values
    /// are compared case-insensitively. `ISA` `arm-a32` may be refined with `armv7` or `armv6`
    /// (default `v7`); `armv7`/`armv6` alone also mean 32-bit ARM.
    pub fn from_reapi(
        os_families: &[&str],
        isas: &[&str],
        default: &Platform,
    ) -> Result<Self, Status> {
        let os = match os_families {
            [] => default.os.clone(),
            [family] => match family.to_ascii_lowercase().as_str() {
                "linux" => "linux".to_owned(),
                "windows" => {
                    return Err(Status::invalid_argument(
                        "Platform property OSFamily=windows is not supported: this service \
                         only runs Linux container images",
                    ))
                }
                other => {
                    return Err(Status::invalid_argument(format!(
                        "Platform property OSFamily={other:?} is not supported (expected \"linux\")"
                    )))
                }
            },
            _ => {
                return Err(Status::invalid_argument(format!(
                    "Platform property OSFamily is given more than once ({os_families:?})"
                )))
            }
        };
        if isas.is_empty() {
            return Ok(Self {
                os,
                ..default.clone()
            });
        }
        let mut architecture: Option<&str> = None;
        let mut variant: Option<&str> = None;
        for isa in isas {
            let lower = isa.to_ascii_lowercase();
            let (arch, var) = match lower.as_str() {
                "x86-64" => ("amd64", None),
                "x86-32" => ("386", None),
                "arm-a64" => ("arm64", None),
                "arm-a32" => ("arm", None),
                "armv7" => ("arm", Some("v7")),
                "armv6" => ("arm", Some("v6")),
                "power-isa-le" => ("ppc64le", None),
                "rv64g" => ("riscv64", None),
                _ => {
                    return Err(Status::invalid_argument(format!(
                        "Platform property ISA={isa:?} is not supported (expected one of \
                         x86-64, x86-32, arm-a64, arm-a32, armv7, armv6, power-isa-le, rv64g)"
                    )))
                }
            };
            if architecture.is_some_and(|a| a != arch) {
                return Err(Status::invalid_argument(format!(
                    "Platform properties ISA={isas:?} name more than one architecture"
                )));
            }
            architecture = Some(arch);
            if let Some(v) = var {
                if variant.is_some_and(|existing| existing != v) {
                    return Err(Status::invalid_argument(format!(
                        "Platform properties ISA={isas:?} name more than one ARM variant"
                    )));
                }
                variant = Some(v);
            }
        }
        let architecture = architecture.expect("at least one ISA was given");
        let variant = match (architecture, variant) {
            ("arm", None) => "v7",
            (_, v) => v.unwrap_or(""),
        };
        Ok(Self::new(&os, architecture, variant))
    }
}

/// What [`select_manifest`] chose.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Selection {
    /// The chosen entry: an image manifest, or a nested index to fetch and select from again.
    pub descriptor: Descriptor,
    /// Whether `descriptor` is a nested index.
    pub is_index: bool,
}

/// Picks the first entry of `index` that suits `wanted` (docs/design/layers.md#platforms).
///
/// Entries with an unknown media type and attestation manifests are skipped. An entry without
/// a `platform` is accepted only when it is a nested index (to be followed by the caller: it
/// carries its platforms inside). A nested index with a platform is followed when its platform
/// matches. Returns `FAILED_PRECONDITION` listing the platforms on offer when nothing matches.
pub fn select_manifest(index: &Index, wanted: &Platform) -> Result<Selection, Status> {
    let mut offered: Vec<String> = Vec::new();
    for entry in &index.manifests {
        let media_type = entry.media_type.as_deref().unwrap_or("");
        let is_index = is_index_media_type(media_type);
        if !is_index && !is_manifest_media_type(media_type) {
            continue;
        }
        if is_attestation(entry) {
            continue;
        }
        match &entry.platform {
            Some(p) => {
                let platform =
                    Platform::new(&p.os, &p.architecture, p.variant.as_deref().unwrap_or(""));
                if wanted.matches(&platform) {
                    return Ok(Selection {
                        descriptor: entry.clone(),
                        is_index,
                    });
                }
                offered.push(platform.to_string());
            }
            None if is_index => {
                return Ok(Selection {
                    descriptor: entry.clone(),
                    is_index,
                })
            }
            None => offered.push("(no platform)".to_owned()),
        }
    }
    let offered = if offered.is_empty() {
        "none".to_owned()
    } else {
        offered.join(", ")
    };
    Err(Status::failed_precondition(format!(
        "No image for platform {wanted} in the index; platforms on offer: {offered}"
    )))
}

/// BuildKit stores provenance and SBOMs as index entries with this annotation (and platform
/// `unknown/unknown`).
fn is_attestation(entry: &Descriptor) -> bool {
    entry
        .annotations
        .as_ref()
        .and_then(|a| a.get("vnd.docker.reference.type"))
        .is_some_and(|v| v == "attestation-manifest")
}

#[cfg(test)]
mod tests {
    use super::*;
    use tonic::Code;

    fn p(os: &str, arch: &str, variant: &str) -> Platform {
        Platform::new(os, arch, variant)
    }

    #[test]
    fn normalisation_follows_containerd() {
        let cases = [
            (p("Linux", "x86_64", ""), p("linux", "amd64", "")),
            (p("linux", "x86-64", "v1"), p("linux", "amd64", "")),
            (p("linux", "amd64", "v3"), p("linux", "amd64", "v3")),
            (p("linux", "aarch64", ""), p("linux", "arm64", "")),
            (p("linux", "aarch64", "v8"), p("linux", "arm64", "")),
            (p("linux", "arm64", "8"), p("linux", "arm64", "")),
            (p("linux", "arm64", "v8.0"), p("linux", "arm64", "")),
            (p("linux", "arm64", "v9"), p("linux", "arm64", "v9")),
            (p("linux", "armhf", ""), p("linux", "arm", "v7")),
            (p("linux", "armel", ""), p("linux", "arm", "v6")),
            (p("linux", "arm", ""), p("linux", "arm", "v7")),
            (p("linux", "arm", "6"), p("linux", "arm", "v6")),
            (p("linux", "i386", ""), p("linux", "386", "")),
            (p("linux", "ppc64le", ""), p("linux", "ppc64le", "")),
        ];
        for (input, want) in cases {
            assert_eq!(input.normalize(), want, "{input}");
        }
    }

    #[test]
    fn matching() {
        assert!(p("linux", "amd64", "").matches(&p("linux", "x86_64", "")));
        assert!(p("linux", "arm64", "").matches(&p("linux", "arm64", "v8")));
        // A request without a variant accepts any variant.
        assert!(p("linux", "arm", "").matches(&p("linux", "arm", "v6")));
        assert!(p("linux", "amd64", "").matches(&p("linux", "amd64", "v3")));
        // A request with a variant wants that variant.
        assert!(p("linux", "arm", "v7").matches(&p("linux", "arm", "")));
        assert!(!p("linux", "arm", "v7").matches(&p("linux", "arm", "v6")));
        assert!(p("linux", "armhf", "").matches(&p("linux", "arm", "v7")));
        assert!(!p("linux", "armhf", "").matches(&p("linux", "arm", "v6")));
        assert!(!p("linux", "amd64", "").matches(&p("linux", "arm64", "")));
        assert!(!p("linux", "amd64", "").matches(&p("windows", "amd64", "")));
    }

    #[test]
    fn reapi_mapping() {
        let default = Platform::default();
        let cases: [(&[&str], &[&str], Platform); 10] = [
            (&[], &[], p("linux", "amd64", "")),
            (&["linux"], &[], p("linux", "amd64", "")),
            (&["Linux"], &["x86-64"], p("linux", "amd64", "")),
            (&[], &["x86-32"], p("linux", "386", "")),
            (&["linux"], &["arm-a64"], p("linux", "arm64", "")),
            (&["linux"], &["arm-a32"], p("linux", "arm", "v7")),
            (&["linux"], &["arm-a32", "armv6"], p("linux", "arm", "v6")),
            (&["linux"], &["armv7"], p("linux", "arm", "v7")),
            (&["linux"], &["power-isa-le"], p("linux", "ppc64le", "")),
            (&["linux"], &["rv64g"], p("linux", "riscv64", "")),
        ];
        for (families, isas, want) in cases {
            assert_eq!(
                Platform::from_reapi(families, isas, &default).unwrap(),
                want,
                "{families:?} {isas:?}"
            );
        }
        let arm_default = p("linux", "arm64", "");
        assert_eq!(
            Platform::from_reapi(&[], &[], &arm_default).unwrap(),
            arm_default
        );
    }

    #[test]
    fn reapi_mapping_errors() {
        let default = Platform::default();
        let windows = Platform::from_reapi(&["windows"], &[], &default).unwrap_err();
        assert_eq!(windows.code(), Code::InvalidArgument);
        assert!(windows.message().contains("windows"));
        for (families, isas) in [
            (&["macos"][..], &[][..]),
            (&["linux", "linux"], &[]),
            (&[], &["sparc-v9"]),
            (&[], &["x86-64", "arm-a64"]),
            (&[], &["armv6", "armv7"]),
        ] {
            let err = Platform::from_reapi(families, isas, &default).unwrap_err();
            assert_eq!(err.code(), Code::InvalidArgument, "{families:?} {isas:?}");
        }
    }

    #[test]
    fn windows_is_refused() {
        assert!(p("linux", "amd64", "").check_supported().is_ok());
        let err = p("windows", "amd64", "").check_supported().unwrap_err();
        assert_eq!(err.code(), Code::FailedPrecondition);
    }

    const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";

    fn digest(n: u8) -> String {
        format!("sha256:{}", format!("{n:02x}").repeat(32))
    }

    /// An index written the way registries serve them: a BuildKit multi-arch image with
    /// attestations, an unknown media type first, a Windows entry and an arm64 variant.
    fn fixture() -> Index {
        let json = serde_json::json!({
            "schemaVersion": 2,
            "mediaType": "application/vnd.oci.image.index.v1+json",
            "manifests": [
                {"mediaType": "application/vnd.example.future+json", "digest": digest(1), "size": 10,
                 "platform": {"os": "linux", "architecture": "amd64"}},
                {"mediaType": OCI_MANIFEST, "digest": digest(2), "size": 11,
                 "platform": {"os": "windows", "architecture": "amd64", "os.version": "10.0.17763.1"}},
                {"mediaType": OCI_MANIFEST, "digest": digest(3), "size": 12,
                 "platform": {"os": "linux", "architecture": "amd64"}},
                {"mediaType": OCI_MANIFEST, "digest": digest(4), "size": 13,
                 "platform": {"os": "linux", "architecture": "arm64", "variant": "v8"}},
                {"mediaType": OCI_MANIFEST, "digest": digest(5), "size": 14,
                 "platform": {"os": "linux", "architecture": "arm", "variant": "v6"}},
                {"mediaType": OCI_MANIFEST, "digest": digest(6), "size": 15,
                 "platform": {"os": "linux", "architecture": "arm", "variant": "v7"}},
                {"mediaType": OCI_MANIFEST, "digest": digest(7), "size": 16,
                 "platform": {"os": "unknown", "architecture": "unknown"},
                 "annotations": {"vnd.docker.reference.type": "attestation-manifest",
                                 "vnd.docker.reference.digest": digest(3)}},
            ]
        });
        serde_json::from_value(json).unwrap()
    }

    #[test]
    fn selection_walks_in_order() {
        let index = fixture();
        let pick = |w: Platform| select_manifest(&index, &w).map(|s| s.descriptor.digest);
        // The unknown media type entry (digest 1) is skipped although it says linux/amd64.
        assert_eq!(pick(p("linux", "amd64", "")).unwrap(), digest(3));
        assert_eq!(pick(p("linux", "x86_64", "")).unwrap(), digest(3));
        assert_eq!(pick(p("linux", "aarch64", "")).unwrap(), digest(4));
        // No variant requested: the first arm entry wins.
        assert_eq!(pick(p("linux", "arm", "")).unwrap(), digest(5));
        assert_eq!(pick(p("linux", "arm", "v7")).unwrap(), digest(6));
        assert_eq!(pick(p("linux", "armhf", "")).unwrap(), digest(6));
        let err = pick(p("linux", "s390x", "")).unwrap_err();
        assert_eq!(err.code(), Code::FailedPrecondition);
        assert_eq!(
            err.message(),
            "No image for platform linux/s390x in the index; platforms on offer: \
             windows/amd64, linux/amd64, linux/arm64/v8, linux/arm/v6, linux/arm/v7"
        );
    }

    #[test]
    fn nested_index_is_returned_for_following() {
        let json = serde_json::json!({
            "schemaVersion": 2,
            "manifests": [
                {"mediaType": "application/vnd.docker.distribution.manifest.v2+json", "digest": digest(1), "size": 5,
                 "platform": {"os": "linux", "architecture": "ppc64le"}},
                {"mediaType": "application/vnd.oci.image.index.v1+json", "digest": digest(2), "size": 7},
            ]
        });
        let index: Index = serde_json::from_value(json).unwrap();
        let selection = select_manifest(&index, &p("linux", "amd64", "")).unwrap();
        assert!(selection.is_index);
        assert_eq!(selection.descriptor.digest, digest(2));
        let direct = select_manifest(&index, &p("linux", "ppc64le", "")).unwrap();
        assert!(!direct.is_index);
    }

    #[test]
    fn empty_index_error() {
        let index: Index =
            serde_json::from_value(serde_json::json!({"schemaVersion": 2, "manifests": []}))
                .unwrap();
        let err = select_manifest(&index, &Platform::default()).unwrap_err();
        assert!(err.message().ends_with("platforms on offer: none"));
    }
}
