//! Identifier newtypes that carry their invariants: a value of these types is always valid.
//!
//! Why newtypes: a `FunctionName` ends up in Kubernetes object names, RabbitMQ queue names and
//! object-store keys; a `ContentDigest` ends up in image tags. Validating once, at the edge,
//! means no stage ever has to wonder.

use std::borrow::Cow;
use std::fmt;

use schemars::{JsonSchema, Schema, SchemaGenerator, json_schema};
use serde::{Deserialize, Serialize};
use sha2::{Digest as _, Sha256};

/// Why an identifier was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct InvalidId(pub String);

/// A function's name: an RFC 1123 DNS label (lowercase alphanumerics and `-`, starting and
/// ending with an alphanumeric, at most 63 characters), because it names the function's Knative
/// Service, its Trigger and its build Jobs.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct FunctionName(String);

impl FunctionName {
    /// The longest name Kubernetes accepts for a DNS label.
    pub const MAX_LEN: usize = 63;

    /// Validates `name` as a DNS-1123 label.
    pub fn new(name: impl Into<String>) -> Result<Self, InvalidId> {
        let name = name.into();
        if name.is_empty() {
            return Err(InvalidId("must not be empty".into()));
        }
        if name.len() > Self::MAX_LEN {
            return Err(InvalidId(format!(
                "is {} characters long; at most {} are allowed (DNS-1123 label)",
                name.len(),
                Self::MAX_LEN
            )));
        }
        if let Some(bad) = name
            .chars()
            .find(|c| !(c.is_ascii_lowercase() || c.is_ascii_digit() || *c == '-'))
        {
            return Err(InvalidId(format!(
                "contains {bad:?}; only lowercase letters, digits and '-' are allowed (DNS-1123 label)"
            )));
        }
        if name.starts_with('-') || name.ends_with('-') {
            return Err(InvalidId(
                "must start and end with a lowercase letter or digit (DNS-1123 label)".into(),
            ));
        }
        Ok(Self(name))
    }

    /// The name as a string slice.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl TryFrom<String> for FunctionName {
    type Error = InvalidId;
    fn try_from(value: String) -> Result<Self, Self::Error> {
        Self::new(value)
    }
}

impl From<FunctionName> for String {
    fn from(value: FunctionName) -> Self {
        value.0
    }
}

impl fmt::Display for FunctionName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl JsonSchema for FunctionName {
    fn schema_name() -> Cow<'static, str> {
        "FunctionName".into()
    }
    fn json_schema(_: &mut SchemaGenerator) -> Schema {
        json_schema!({
            "description": "RFC 1123 DNS label: the function's Knative Service name.",
            "type": "string",
            "minLength": 1,
            "maxLength": 63,
            "pattern": "^[a-z0-9]([-a-z0-9]*[a-z0-9])?$"
        })
    }
}

/// A sha256 content digest written `sha256:<64 lowercase hex>`, the form OCI uses.
///
/// The pipeline derives build ids, object keys and image tags from it, so a replayed submission
/// lands on the work already done.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct ContentDigest(String);

impl ContentDigest {
    const PREFIX: &'static str = "sha256:";

    /// Wraps finished sha256 output.
    pub fn from_sha256(hash: Sha256) -> Self {
        Self(format!("{}{}", Self::PREFIX, hex::encode(hash.finalize())))
    }

    /// Parses the `sha256:<hex>` form.
    pub fn parse(value: &str) -> Result<Self, InvalidId> {
        let hex_part = value.strip_prefix(Self::PREFIX).ok_or_else(|| {
            InvalidId(format!("{value:?} does not start with {:?}", Self::PREFIX))
        })?;
        if hex_part.len() != 64
            || !hex_part
                .bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
        {
            return Err(InvalidId(format!(
                "{value:?} is not 'sha256:' followed by 64 lowercase hex digits"
            )));
        }
        Ok(Self(value.to_owned()))
    }

    /// The full `sha256:<hex>` string.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The digest of a source named by a movable reference (a git branch or tag) once the
    /// reference is resolved to `revision` (a commit): the same reference at another commit is
    /// another digest, so a moved branch rebuilds and an unchanged one hits the cache.
    pub fn at_revision(&self, revision: &str) -> Self {
        let mut hash = Sha256::new();
        hash.update(self.0.as_bytes());
        hash.update([0]);
        hash.update(revision.as_bytes());
        Self::from_sha256(hash)
    }

    /// The hex part alone, for places that cannot hold a ':' (tags, object keys).
    pub fn hex(&self) -> &str {
        &self.0[Self::PREFIX.len()..]
    }
}

impl TryFrom<String> for ContentDigest {
    type Error = InvalidId;
    fn try_from(value: String) -> Result<Self, Self::Error> {
        Self::parse(&value)
    }
}

impl From<ContentDigest> for String {
    fn from(value: ContentDigest) -> Self {
        value.0
    }
}

impl fmt::Display for ContentDigest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl JsonSchema for ContentDigest {
    fn schema_name() -> Cow<'static, str> {
        "ContentDigest".into()
    }
    fn json_schema(_: &mut SchemaGenerator) -> Schema {
        json_schema!({
            "description": "sha256 content digest in OCI form.",
            "type": "string",
            "pattern": "^sha256:[0-9a-f]{64}$"
        })
    }
}

/// The id of one build of one function at one content digest: `b-` and 24 hex digits of
/// sha256(function name, digest). Derived, never random, so a replayed `context.uploaded` finds
/// the build (the Kaniko Job is named after it) instead of starting a second one.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct BuildId(String);

impl BuildId {
    /// The build id for `function` at `digest`.
    pub fn derive(function: &FunctionName, digest: &ContentDigest) -> Self {
        let mut hash = Sha256::new();
        hash.update(function.as_str().as_bytes());
        hash.update([0]);
        hash.update(digest.as_str().as_bytes());
        let hex = hex::encode(hash.finalize());
        Self(format!("b-{}", &hex[..24]))
    }

    /// The id as a string slice.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl TryFrom<String> for BuildId {
    type Error = InvalidId;
    fn try_from(value: String) -> Result<Self, Self::Error> {
        let ok = value.len() == 26
            && value.starts_with("b-")
            && value[2..]
                .bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b));
        if ok {
            Ok(Self(value))
        } else {
            Err(InvalidId(format!(
                "{value:?} is not a build id ('b-' and 24 lowercase hex digits)"
            )))
        }
    }
}

impl From<BuildId> for String {
    fn from(value: BuildId) -> Self {
        value.0
    }
}

impl fmt::Display for BuildId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl JsonSchema for BuildId {
    fn schema_name() -> Cow<'static, str> {
        "BuildId".into()
    }
    fn json_schema(_: &mut SchemaGenerator) -> Schema {
        json_schema!({
            "description": "Build id derived from the function name and content digest.",
            "type": "string",
            "pattern": "^b-[0-9a-f]{24}$"
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn function_names_follow_dns_1123() {
        for ok in ["a", "hello", "hello-world", "f1", "1f", &"a".repeat(63)] {
            assert!(FunctionName::new(ok).is_ok(), "{ok} should be valid");
        }
        for bad in [
            "",
            "-a",
            "a-",
            "Hello",
            "a_b",
            "a.b",
            "a b",
            &"a".repeat(64),
            "é",
        ] {
            assert!(FunctionName::new(bad).is_err(), "{bad:?} should be refused");
        }
    }

    #[test]
    fn digests_round_trip_and_refuse_other_forms() {
        let digest = ContentDigest::from_sha256(Sha256::new_with_prefix(b"x"));
        assert_eq!(ContentDigest::parse(digest.as_str()), Ok(digest.clone()));
        assert_eq!(digest.hex().len(), 64);
        for bad in [
            "",
            "sha256:",
            "md5:00",
            &format!("sha256:{}", "A".repeat(64)),
        ] {
            assert!(ContentDigest::parse(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn build_ids_are_derived_and_distinct_per_function() {
        let digest = ContentDigest::from_sha256(Sha256::new_with_prefix(b"src"));
        let a = FunctionName::new("a").unwrap();
        let b = FunctionName::new("b").unwrap();
        assert_eq!(BuildId::derive(&a, &digest), BuildId::derive(&a, &digest));
        assert_ne!(BuildId::derive(&a, &digest), BuildId::derive(&b, &digest));
        let id = BuildId::derive(&a, &digest);
        assert_eq!(BuildId::try_from(id.to_string()), Ok(id));
    }
}
