//! Internal events are signed: only the platform can speak for the platform.
//!
//! Every event a stage emits (its replies and progress events) carries an HMAC-SHA256 in the
//! `klambdasignature` extension, over what the stages act on: `id`, `source`, `type`,
//! `subject`, `dataschema` and the data (JSON data in a canonical form, keys sorted, so a relay
//! that re-encodes the event in the other mode keeps it valid). Every stage refuses an internal
//! event (a catalogue type a stage emits, see [`must_be_signed`]) that is unsigned or whose
//! signature no key verifies: not retried, dead-lettered with the reason. Client requests
//! (`function.created` …) are not signed; the edge and the API token guard them.
//!
//! Keys rotate without downtime: [`EventKeys`] holds the signing key first and older keys after
//! it, which still verify. Add a new key in front everywhere, then drop the old one once no event
//! signed with it can still be in flight (docs/SECURITY.md). `time` and `datacontenttype` are not
//! covered: brokers may re-format them, and the data is read as JSON whatever the latter says.

use std::fmt;
use std::path::Path;

use cloudevents::{AttributesReader as _, Data, Event};
use hmac::{KeyInit as _, Mac as _};
use klambda_events::catalogue::{self, Emission};

type HmacSha256 = hmac::Hmac<sha2::Sha256>;

/// The CloudEvents extension holding the signature (`v1=<hex>`).
pub const EXTENSION: &str = "klambdasignature";

/// The shortest key accepted, in bytes.
pub const MIN_KEY_BYTES: usize = 32;

/// Why an event was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    /// No `klambdasignature`.
    #[error(
        "{0} is an internal event and carries no signature (only the platform's stages may emit it)"
    )]
    Unsigned(String),
    /// A signature that no key verifies.
    #[error("{0}: the signature does not verify with any of this platform's event keys")]
    Forged(String),
}

/// Why keys could not be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum KeyError {
    /// No key at all.
    #[error("no event key given")]
    Empty,
    /// A key below [`MIN_KEY_BYTES`].
    #[error("key {position} is {length} bytes; event keys are at least {MIN_KEY_BYTES}")]
    TooShort {
        /// Its position, from 1.
        position: usize,
        /// Its length.
        length: usize,
    },
    /// The key file could not be read or written.
    #[error("{0}")]
    Io(String),
}

/// The platform's event keys: the first signs, every one verifies.
#[derive(Clone)]
pub struct EventKeys {
    keys: Vec<Vec<u8>>,
    /// One keyed HMAC per key, in the same order, cloned for each event.
    macs: Vec<HmacSha256>,
}

impl PartialEq for EventKeys {
    fn eq(&self, other: &Self) -> bool {
        self.keys == other.keys
    }
}

impl Eq for EventKeys {}

impl fmt::Debug for EventKeys {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "EventKeys(<{} redacted>)", self.keys.len())
    }
}

impl EventKeys {
    /// Keys separated by whitespace or commas, the signing key first.
    pub fn parse(text: &str) -> Result<Self, KeyError> {
        let keys: Vec<Vec<u8>> = text
            .split(|c: char| c.is_whitespace() || c == ',')
            .filter(|k| !k.is_empty())
            .map(|k| k.as_bytes().to_vec())
            .collect();
        if keys.is_empty() {
            return Err(KeyError::Empty);
        }
        let mut macs = Vec::with_capacity(keys.len());
        for (position, key) in keys.iter().enumerate() {
            let too_short = KeyError::TooShort {
                position: position + 1,
                length: key.len(),
            };
            if key.len() < MIN_KEY_BYTES {
                return Err(too_short);
            }
            macs.push(HmacSha256::new_from_slice(key).map_err(|_| too_short)?);
        }
        Ok(Self { keys, macs })
    }

    /// The keys in `path`, or a new random key written there (mode 0600) when the file does not
    /// exist: how `klambda up` keeps one key per data directory across restarts.
    pub fn load_or_create(path: &Path) -> Result<Self, KeyError> {
        let text = crate::config::secret_file(path)
            .map_err(|e| KeyError::Io(format!("{}: {e}", path.display())))?;
        Self::parse(&text)
    }

    /// Signs `event` with the first key (replacing any signature it had).
    pub fn sign(&self, event: &mut Event) {
        let Some(first) = self.macs.first() else {
            return;
        };
        let signature = hex::encode(keyed(first, &signed_bytes(event)).finalize().into_bytes());
        event.set_extension(EXTENSION, format!("v1={signature}"));
    }

    /// Whether `event` may be acted on: anything but an internal event passes; an internal one
    /// must carry a signature one of the keys verifies.
    pub fn check(&self, event: &Event) -> Result<(), Refusal> {
        if !must_be_signed(event.ty()) {
            return Ok(());
        }
        let claimed = event
            .extension(EXTENSION)
            .map(|v| v.to_string())
            .ok_or_else(|| Refusal::Unsigned(event.ty().to_owned()))?;
        let forged = || Refusal::Forged(event.ty().to_owned());
        let signature = claimed
            .strip_prefix("v1=")
            .and_then(|hex_text| hex::decode(hex_text).ok())
            .ok_or_else(forged)?;
        // Canonicalised once, whatever the number of keys; `verify_slice` compares in
        // constant time.
        let covered = signed_bytes(event);
        self.macs
            .iter()
            .any(|mac| keyed(mac, &covered).verify_slice(&signature).is_ok())
            .then_some(())
            .ok_or_else(forged)
    }
}

/// `mac` (a keyed HMAC) over `covered`, what a signature covers ([`signed_bytes`]).
fn keyed(mac: &HmacSha256, covered: &[u8]) -> HmacSha256 {
    let mut mac = mac.clone();
    mac.update(covered);
    mac
}

/// Whether events of type `ty` speak for the platform: a catalogue type that a stage emits (an
/// outcome or progress), as opposed to a client's request or a type the platform does not know.
pub fn must_be_signed(ty: &str) -> bool {
    catalogue::find(ty).is_some_and(|spec| spec.emission != Emission::Request)
}

/// What the signature covers, each field length-prefixed so no two events share it.
fn signed_bytes(event: &Event) -> Vec<u8> {
    let mut bytes = b"klambda-event-v1".to_vec();
    let dataschema = event.dataschema().map(|u| u.to_string());
    for field in [
        Some(event.id()),
        Some(event.source().as_str()),
        Some(event.ty()),
        event.subject(),
        dataschema.as_deref(),
    ] {
        push_field(&mut bytes, field.map(str::as_bytes));
    }
    let data = match event.data() {
        None => None,
        Some(Data::Json(value)) => Some(canonical_json(value)),
        Some(Data::String(text)) => Some(
            serde_json::from_str(text)
                .map(|v| canonical_json(&v))
                .unwrap_or_else(|_| text.as_bytes().to_vec()),
        ),
        Some(Data::Binary(raw)) => Some(
            serde_json::from_slice(raw)
                .map(|v| canonical_json(&v))
                .unwrap_or_else(|_| raw.clone()),
        ),
    };
    push_field(&mut bytes, data.as_deref());
    bytes
}

fn push_field(bytes: &mut Vec<u8>, field: Option<&[u8]>) {
    match field {
        None => bytes.push(0),
        Some(value) => {
            bytes.push(1);
            bytes.extend_from_slice(&(value.len() as u64).to_be_bytes());
            bytes.extend_from_slice(value);
        }
    }
}

/// JSON with object keys sorted at every level and no whitespace.
fn canonical_json(value: &serde_json::Value) -> Vec<u8> {
    fn write(value: &serde_json::Value, out: &mut Vec<u8>) {
        match value {
            serde_json::Value::Object(map) => {
                let mut entries: Vec<_> = map.iter().collect();
                entries.sort_by(|a, b| a.0.cmp(b.0));
                out.push(b'{');
                for (i, (key, value)) in entries.into_iter().enumerate() {
                    if i > 0 {
                        out.push(b',');
                    }
                    out.extend_from_slice(
                        serde_json::to_string(key).unwrap_or_default().as_bytes(),
                    );
                    out.push(b':');
                    write(value, out);
                }
                out.push(b'}');
            }
            serde_json::Value::Array(items) => {
                out.push(b'[');
                for (i, item) in items.iter().enumerate() {
                    if i > 0 {
                        out.push(b',');
                    }
                    write(item, out);
                }
                out.push(b']');
            }
            scalar => out.extend_from_slice(scalar.to_string().as_bytes()),
        }
    }
    let mut out = Vec::new();
    write(value, &mut out);
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use cloudevents::{AttributesWriter as _, EventBuilder as _};
    use klambda_events::EventType as _;
    use klambda_events::catalogue::{FunctionCreated, ParserCompleted};
    use serde_json::json;

    fn keys(text: &str) -> EventKeys {
        EventKeys::parse(text).unwrap()
    }

    const A: &str = "a-key-of-thirty-two-bytes-or-more-0001";
    const B: &str = "b-key-of-thirty-two-bytes-or-more-0002";

    fn internal(data: serde_json::Value) -> Event {
        cloudevents::EventBuilderV10::new()
            .id("1")
            .source("/stages/parser")
            .ty(ParserCompleted::TYPE)
            .subject("hello")
            .data("application/json", data)
            .build()
            .unwrap()
    }

    #[test]
    fn a_signed_event_verifies_and_any_change_to_what_stages_act_on_breaks_it() {
        let mut event = internal(json!({"name": "hello", "n": 1}));
        keys(A).sign(&mut event);
        assert_eq!(keys(A).check(&event), Ok(()));
        type Change = (&'static str, fn(&mut Event));
        let changes: [Change; 4] = [
            ("data", |e| {
                e.set_data("application/json", json!({"name": "hello", "n": 2}));
            }),
            ("subject", |e| {
                e.set_subject(Some("victim"));
            }),
            ("id", |e| {
                e.set_id("2");
            }),
            ("source", |e| {
                e.set_source("/stages/evil");
            }),
        ];
        for (what, change) in changes {
            let mut forged = event.clone();
            change(&mut forged);
            assert_eq!(
                keys(A).check(&forged),
                Err(Refusal::Forged(ParserCompleted::TYPE.into())),
                "a changed {what} must not verify"
            );
        }
    }

    #[test]
    fn json_data_in_another_encoding_or_key_order_still_verifies() {
        let mut event = internal(json!({"b": [1, {"y": 2, "x": 1}], "a": "é"}));
        keys(A).sign(&mut event);
        let signature = event.extension(EXTENSION).unwrap().to_string();
        let mut relayed = internal(json!(null));
        relayed.set_data(
            "application/json",
            Data::Binary(br#"{ "a": "\u00e9", "b": [1, {"x": 1, "y": 2}] }"#.to_vec()),
        );
        relayed.set_extension(EXTENSION, signature);
        assert_eq!(keys(A).check(&relayed), Ok(()));
    }

    #[test]
    fn unsigned_wrong_key_and_rotation() {
        let event = internal(json!({}));
        assert_eq!(
            keys(A).check(&event),
            Err(Refusal::Unsigned(ParserCompleted::TYPE.into()))
        );
        let mut signed = event.clone();
        keys(B).sign(&mut signed);
        assert!(matches!(keys(A).check(&signed), Err(Refusal::Forged(_))));
        // Rotation: the new key signs, the old one still verifies what is in flight.
        let rotated = keys(&format!("{B}\n{A}"));
        let mut old = event.clone();
        keys(A).sign(&mut old);
        assert_eq!(rotated.check(&old), Ok(()));
        assert_eq!(rotated.check(&signed), Ok(()));
        let mut garbage = event;
        garbage.set_extension(EXTENSION, "v1=zz");
        assert!(matches!(keys(A).check(&garbage), Err(Refusal::Forged(_))));
    }

    #[test]
    fn client_requests_and_unknown_types_need_no_signature() {
        let mut request = internal(json!({}));
        request.set_type(FunctionCreated::TYPE);
        assert_eq!(keys(A).check(&request), Ok(()));
        request.set_type("com.example.order.created");
        assert_eq!(keys(A).check(&request), Ok(()));
    }

    #[test]
    fn keys_are_long_enough_and_a_generated_one_is_kept() {
        assert_eq!(EventKeys::parse(" \n"), Err(KeyError::Empty));
        assert_eq!(
            EventKeys::parse(&format!("{A},short")),
            Err(KeyError::TooShort {
                position: 2,
                length: 5
            })
        );
        let dir = std::env::temp_dir().join(format!("klambda-keys-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let path = dir.join("event-keys");
        let first = EventKeys::load_or_create(&path).unwrap();
        let again = EventKeys::load_or_create(&path).unwrap();
        assert_eq!(first, again);
        use std::os::unix::fs::PermissionsExt as _;
        let mode = std::fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        assert!(!format!("{first:?}").contains(&String::from_utf8_lossy(&first.keys[0])[..8]));
        let _ = std::fs::remove_dir_all(&dir);
    }
}
