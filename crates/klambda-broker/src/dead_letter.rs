//! Events whose delivery failed for good, kept with Knative's error attributes.

use std::sync::Mutex;

use base64::Engine as _;
use bytes::Bytes;
use cloudevents::Event;

/// The longest `knativeerrordata` Knative sends (base64 characters).
const MAX_ERROR_DATA: usize = 1024;

/// One dead-lettered event.
#[derive(Debug, Clone)]
pub struct DeadLetter {
    /// The Trigger whose delivery failed.
    pub trigger: String,
    /// How many attempts were made.
    pub attempts: u32,
    /// The original event with `knativeerrordest`, `knativeerrorcode` and `knativeerrordata`.
    pub event: Event,
}

/// `event` with Knative's dead-letter attributes: the destination that failed, its status
/// (500 when there was none) and the base64 of its answer (at most 1024 characters).
pub fn with_error_attributes(
    mut event: Event,
    destination: &str,
    status: Option<u16>,
    body: &Bytes,
) -> Event {
    // 768 bytes encode to exactly 1024 base64 characters.
    let kept = &body[..body.len().min(MAX_ERROR_DATA / 4 * 3)];
    event.set_extension("knativeerrordest", destination.to_owned());
    event.set_extension("knativeerrorcode", status.unwrap_or(500).to_string());
    event.set_extension(
        "knativeerrordata",
        base64::engine::general_purpose::STANDARD.encode(kept),
    );
    event
}

/// The dead letters of an embedded broker, in memory.
///
/// The embedded broker is a single process; a durable dead-letter queue with redrive comes
/// with the RabbitMQ broker (issue 4).
#[derive(Debug, Default)]
pub struct DeadLetters {
    letters: Mutex<Vec<DeadLetter>>,
}

impl DeadLetters {
    /// Keeps one.
    pub fn push(&self, letter: DeadLetter) {
        if let Ok(mut letters) = self.letters.lock() {
            letters.push(letter);
        }
    }

    /// All kept so far, oldest first.
    pub fn list(&self) -> Vec<DeadLetter> {
        self.letters.lock().map(|l| l.clone()).unwrap_or_default()
    }
}
