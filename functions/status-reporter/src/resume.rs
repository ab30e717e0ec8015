//! What a platform whose broker keeps nothing sends again when it starts.
//!
//! The in-memory broker of `klambda up` loses its queues when the process dies. The status
//! store does not: it holds every event the platform accepted (the ingress records a client's
//! event before it answers `202`) and every answer the stages gave. A journey that had not
//! ended when the process died stopped at a stage's input that was never answered, or answered
//! with a reply that was lost in the queues; sending that input again resumes it, because every
//! stage is idempotent (the same input gives the same answer, without doing the work twice).

use cloudevents::{AttributesReader as _, Event};
use klambda_events::EventType as _;
use klambda_events::catalogue::{self, StatusUpdated};
use klambda_events::data::Phase;

use crate::store::{StatusStore, StoreError, StoredEvent};

/// Events read per page of a function's log.
const PAGE: i64 = 500;

/// For every function whose journey had not ended, the stage input to send again: the last
/// recorded event that a stage consumes, when the function is still on its way (parsing,
/// building, deploying) or when nothing was recorded after that input (a deletion or rollback
/// that was never answered). Oldest function first.
pub async fn unfinished(store: &dyn StatusStore) -> Result<Vec<Event>, StoreError> {
    let mut resume = Vec::new();
    for function in store.functions().await? {
        let on_its_way = matches!(
            function.phase,
            Phase::Parsing | Phase::Building | Phase::Deploying
        );
        // Only these can be unfinished; the others' logs are not read.
        let ends_with_input =
            catalogue::find(&function.last_event_type).is_some_and(|spec| spec.consumer.is_some());
        if !on_its_way && !ends_with_input {
            continue;
        }
        let name = function.name.as_str();
        // The status reporter's own `status.updated` answers nothing a stage was asked.
        let log: Vec<StoredEvent> = whole_log(store, name)
            .await?
            .into_iter()
            .filter(|stored| stored.json()["type"] != StatusUpdated::TYPE)
            .collect();
        let Some(position) = log.iter().rposition(|stored| consumed(stored).is_some()) else {
            continue;
        };
        let unanswered = position == log.len() - 1;
        if (on_its_way || unanswered)
            && let Some(event) = consumed(&log[position])
        {
            tracing::info!(function = name, event_id = %event.id(), event_type = %event.ty(), "resuming an unfinished journey");
            resume.push(event);
        }
    }
    Ok(resume)
}

/// `stored` as an event, when a stage consumes its type.
fn consumed(stored: &StoredEvent) -> Option<Event> {
    let event: Event = serde_json::from_str(&stored.body).ok()?;
    catalogue::find(event.ty())
        .is_some_and(|spec| spec.consumer.is_some())
        .then_some(event)
}

async fn whole_log(store: &dyn StatusStore, name: &str) -> Result<Vec<StoredEvent>, StoreError> {
    let mut log = Vec::new();
    let mut after = 0;
    loop {
        let page = store.function_events(name, after, PAGE).await?;
        let full = i64::try_from(page.len()).unwrap_or(i64::MAX) == PAGE;
        after = page.last().map_or(after, |stored| stored.seq);
        log.extend(page);
        if !full {
            return Ok(log);
        }
    }
}
