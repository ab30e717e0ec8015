//! The fold as a table: a function's life as events, and the phase after each.

use chrono::{Duration, TimeZone as _, Utc};
use cloudevents::{AttributesReader as _, Event, EventBuilder as _, EventBuilderV10};
use klambda_events::data::{Phase, RestartReason};
use serde_json::json;
use status_reporter::fold::{FunctionState, fold};

fn event(suffix: &str, subject: &str, data: serde_json::Value) -> Event {
    EventBuilderV10::new()
        .id(format!("{suffix}-id"))
        .source("/t")
        .ty(format!("{}{suffix}", klambda_events::TYPE_PREFIX))
        .subject(subject)
        .data("application/json", data)
        .build()
        .unwrap_or_else(|e| panic!("{e}"))
}

const DIGEST: &str = "sha256:2c26b46b68ffc68ff99b453c1d30413413422d706483bfa0f98a5e886266e7ae";

#[test]
fn a_functions_life() {
    let digest = json!(DIGEST);
    let build =
        json!({"function": "hello", "buildId": "b-0123456789abcdef01234567", "digest": digest});
    let steps: Vec<(Event, Option<Phase>)> = vec![
        (
            event("function.created", "hello", json!({})),
            Some(Phase::Parsing),
        ),
        (
            event("parser.started", "hello", json!({})),
            Some(Phase::Parsing),
        ),
        (
            event("context.uploaded", "hello", json!({})),
            Some(Phase::Building),
        ),
        (
            event("build.started", "hello", build.clone()),
            Some(Phase::Building),
        ),
        (
            event(
                "build.timeout",
                "hello",
                json!({"function": "hello", "buildId": "b-0123456789abcdef01234567", "digest": digest, "deadlineSeconds": 900}),
            ),
            Some(Phase::Failed),
        ),
        (
            event("function.updated", "hello", json!({})),
            Some(Phase::Parsing),
        ),
        (
            event(
                "service.created",
                "hello",
                json!({"function": "hello", "revision": "hello-00001", "image": "img@sha256:1", "digest": digest}),
            ),
            Some(Phase::Deploying),
        ),
        (
            event(
                "service.ready",
                "hello",
                json!({"function": "hello", "revision": "hello-00001", "url": "http://hello"}),
            ),
            Some(Phase::Ready),
        ),
        (
            event(
                "service.failed",
                "hello",
                json!({"function": "hello", "reason": "RevisionFailed", "message": "crash loop"}),
            ),
            Some(Phase::Failed),
        ),
        (
            event("service.deleted", "hello", json!({"function": "hello"})),
            Some(Phase::Deleted),
        ),
        // Not state changes: the status reporter's own events, probes, strangers, bad names.
        (event("status.updated", "hello", json!({})), None),
        (event("health.check", "hello", json!({"origin": "t"})), None),
        (event("no.such.type", "hello", json!({})), None),
        (event("function.created", "Not A Name", json!({})), None),
    ];
    let start = Utc
        .with_ymd_and_hms(2026, 11, 23, 10, 0, 0)
        .single()
        .unwrap_or_default();
    let mut state: Option<FunctionState> = None;
    for (i, (event, expected)) in steps.into_iter().enumerate() {
        let at = start + Duration::seconds(i as i64);
        let next = fold(state.clone(), &event, at);
        assert_eq!(
            next.as_ref().map(|s| s.phase),
            expected,
            "step {i}: {:?}",
            cloudevents::AttributesReader::ty(&event)
        );
        if let Some(next) = next {
            if expected == Some(Phase::Failed) {
                assert!(
                    next.last_error.is_some(),
                    "step {i}: a failure records its error"
                );
            }
            state = Some(next);
        }
    }
    let state = state.unwrap_or_else(|| panic!("state"));
    assert_eq!(state.revision.as_deref(), Some("hello-00001"));
    assert_eq!(state.url, None, "deleted functions have no URL");
}

#[test]
fn timings_come_from_the_current_submission() {
    let start = Utc
        .with_ymd_and_hms(2026, 11, 23, 10, 0, 0)
        .single()
        .unwrap_or_default();
    let mut state = None;
    for (suffix, ms) in [
        ("function.created", 0),
        ("parser.completed", 40),
        ("context.uploaded", 90),
        ("build.completed", 1090),
        ("service.ready", 1590),
    ] {
        let data = if suffix == "build.completed" {
            json!({"image": "img"})
        } else {
            json!({})
        };
        state = fold(
            state,
            &event(suffix, "hello", data),
            start + Duration::milliseconds(ms),
        );
    }
    let timings = state.map(|s| s.timings_ms()).unwrap_or_default();
    assert_eq!(timings.get("parse"), Some(&40));
    assert_eq!(timings.get("context"), Some(&50));
    assert_eq!(timings.get("build"), Some(&1000));
    assert_eq!(timings.get("deploy"), Some(&500));
    assert_eq!(timings.get("total"), Some(&1590));
}

#[test]
fn a_journey_waiting_on_a_stage_past_its_deadline_is_stalled() {
    let at = Utc.with_ymd_and_hms(2026, 1, 1, 0, 0, 0).single();
    let Some(at) = at else {
        panic!("a valid time");
    };
    let build =
        json!({"function": "slow", "buildId": "b-0123456789abcdef01234567", "digest": DIGEST});
    let mut state = None;
    for step in [
        event("function.created", "slow", json!({})),
        event("context.uploaded", "slow", json!({})),
        event("build.started", "slow", build),
    ] {
        state = fold(state, &step, at);
    }
    let Some(state) = state else {
        panic!("a state");
    };
    // Waiting on the stage that reported progress: job-launcher, whose deadline is 3900 s.
    assert_eq!(state.waiting_on(), Some(klambda_events::Stage::JobLauncher));
    assert_eq!(state.stalled(at + Duration::seconds(3900)), None);
    let stalled = state.stalled(at + Duration::seconds(4000));
    assert_eq!(
        stalled.map(|s| (s.stage, s.waiting_seconds, s.deadline_seconds)),
        Some(("job-launcher", 4000, 3900))
    );
    // A parsed submission waits on the context-uploader (600 s).
    let parsed = FunctionState {
        last_event_type: format!("{}parser.completed", klambda_events::TYPE_PREFIX),
        phase: Phase::Parsing,
        ..state.clone()
    };
    assert_eq!(
        parsed.stalled(at + Duration::seconds(601)).map(|s| s.stage),
        Some("context-uploader")
    );
    // An ended journey never stalls.
    let ready = FunctionState {
        phase: Phase::Ready,
        ..state
    };
    assert_eq!(ready.stalled(at + Duration::days(30)), None);
}

#[test]
fn requests_about_unknown_functions_leave_no_phantom_and_a_refused_rollback_changes_nothing() {
    let now = Utc::now();
    let missing = json!({"function": "ghost", "reason": "RevisionMissing", "message": "ghost has no revisions"});
    for phantom in [
        event("function.deleted", "ghost", json!({"name": "ghost"})),
        event("function.rollback", "ghost", json!({"name": "ghost"})),
        event("service.deleted", "ghost", json!({"function": "ghost"})),
        event("service.failed", "ghost", missing.clone()),
    ] {
        assert_eq!(fold(None, &phantom, now), None, "{}", phantom.ty());
    }
    // A function that serves stays ready when a rollback to a missing revision is refused; the
    // refusal is its last error. A failed start is a failure.
    let ready = fold(
        None,
        &event(
            "service.ready",
            "hello",
            json!({"function": "hello", "revision": "hello-00001", "url": "http://127.0.0.1:1"}),
        ),
        now,
    );
    let refused = fold(
        ready.clone(),
        &event(
            "service.failed",
            "hello",
            json!({"function": "hello", "reason": "RevisionMissing", "message": "no revision hello-00009"}),
        ),
        now,
    )
    .unwrap_or_else(|| panic!("recorded"));
    assert_eq!(refused.phase, Phase::Ready);
    assert!(
        refused
            .last_error
            .is_some_and(|e| e.contains("hello-00009"))
    );
    let crashed = fold(
        ready,
        &event(
            "service.failed",
            "hello",
            json!({"function": "hello", "reason": "RevisionFailed", "message": "exited"}),
        ),
        now,
    )
    .unwrap_or_else(|| panic!("recorded"));
    assert_eq!(crashed.phase, Phase::Failed);
}

#[test]
fn restarts_of_the_serving_revision_are_counted_and_a_new_revision_starts_from_zero() {
    let at = Utc.with_ymd_and_hms(2026, 12, 4, 12, 0, 0).unwrap();
    let revision = |n: u32| {
        event(
            if n == 1 {
                "service.created"
            } else {
                "service.updated"
            },
            "hello",
            json!({"function": "hello", "revision": format!("hello-0000{n}"), "image": "img", "digest": DIGEST}),
        )
    };
    let restarted = |revision: &str, reason: &str, restarts: u32| {
        event(
            "service.restarted",
            "hello",
            json!({"function": "hello", "revision": revision, "reason": reason,
                   "message": "went over its memory limit (64 MiB)", "restarts": restarts}),
        )
    };
    let ready = event(
        "service.ready",
        "hello",
        json!({"function": "hello", "revision": "hello-00001", "url": "http://hello"}),
    );
    let mut state = None;
    for step in [
        revision(1),
        ready,
        restarted("hello-00001", "OOMKilled", 1),
        restarted("hello-00001", "Exited", 2),
    ] {
        state = fold(state.clone(), &step, at).or(state);
    }
    let folded = state.clone().expect("a state");
    assert_eq!(folded.phase, Phase::Ready, "a restart keeps the phase");
    assert_eq!(folded.restarts, 2);
    let last = folded.last_restart.expect("the last restart");
    assert_eq!(last.report.reason, RestartReason::Exited);
    assert_eq!(last.received_at, at);

    // A report about a revision that no longer serves changes nothing; a new revision starts
    // counting again.
    let stale =
        fold(state.clone(), &restarted("hello-00000", "OOMKilled", 7), at).expect("recorded");
    assert_eq!(stale.restarts, 2);
    assert_eq!(
        stale.last_restart.map(|r| r.report.reason),
        Some(RestartReason::Exited)
    );
    let next = fold(state, &revision(2), at).expect("a state");
    assert_eq!((next.restarts, next.last_restart), (0, None));
}

#[test]
fn the_configuration_is_what_the_latest_parsed_submission_asks_for() {
    let fixture = |file: &str| -> serde_json::Value {
        let path = klambda_test_support::repo::root()
            .join("crates/klambda-events/tests/fixtures")
            .join(file);
        serde_json::from_str(&std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{e}")))
            .unwrap_or_else(|e| panic!("{e}"))
    };
    let mut parsed = fixture(&format!(
        "{}.json",
        <klambda_events::catalogue::ParserCompleted as klambda_events::EventType>::TYPE
    ));
    let at = Utc.with_ymd_and_hms(2026, 12, 5, 12, 0, 0).unwrap();
    let first = fold(
        None,
        &event("parser.completed", "hello", parsed.clone()),
        at,
    )
    .expect("a state");
    let asked = first.configuration.clone().expect("a configuration");
    assert_eq!(
        (asked.runtime.as_str(), asked.handler.as_str()),
        ("nodejs22", "index.handler")
    );
    assert_eq!((asked.memory_mib, asked.timeout_seconds), (256, 30));

    // A later submission that parsed replaces it; one that failed to parse keeps it.
    parsed["spec"]["handler"] = json!("main.handler");
    parsed["spec"]["resources"]["memoryMib"] = json!(512);
    let second =
        fold(Some(first), &event("parser.completed", "hello", parsed), at).expect("a state");
    let asked = second.configuration.clone().expect("a configuration");
    assert_eq!(
        (asked.handler.as_str(), asked.memory_mib),
        ("main.handler", 512)
    );
    let failed = fold(
        Some(second),
        &event(
            "parser.failed",
            "hello",
            json!({"function": "hello", "problems": [{"field": "handler", "reason": "bad"}]}),
        ),
        at,
    )
    .expect("a state");
    assert_eq!(
        failed.configuration.map(|c| c.handler).as_deref(),
        Some("main.handler")
    );
}
