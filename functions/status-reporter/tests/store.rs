//! The same store suite against SQLite (a temp file) and the real PostgreSQL on 127.0.0.1:5432
//! (its own schema per run). PostgreSQL down is a failure that says how to start it, never a skip.

use std::sync::atomic::{AtomicUsize, Ordering};

use anyhow::{Context as _, Result};
use chrono::Utc;
use cloudevents::{AttributesReader as _, Event, EventBuilder as _, EventBuilderV10};
use klambda_events::catalogue::{FunctionCreated, ParserCompleted};
use klambda_events::data::{Operation, ParsedFunction, Phase};
use klambda_events::spec::FunctionSubmission;
use klambda_events::{ContentDigest, Envelope, EventType as _, reply};
use sqlx::Executor as _;
use status_reporter::fold::{fold, function_of};
use status_reporter::store::{self, StatusStore};

static RUN: AtomicUsize = AtomicUsize::new(0);

fn postgres_url() -> String {
    std::env::var("KLAMBDA_TEST_DATABASE_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".to_owned())
}

/// A PostgreSQL store in a fresh schema, and the schema's name (drop it with [`drop_schema`]).
async fn postgres() -> Result<(Box<dyn StatusStore>, String)> {
    let url = postgres_url();
    let schema = format!(
        "klambda_test_{}_{}",
        std::process::id(),
        RUN.fetch_add(1, Ordering::SeqCst)
    );
    sqlx::any::install_default_drivers();
    let admin = sqlx::AnyPool::connect(&url).await.with_context(|| {
        format!("PostgreSQL is not reachable at {url}: start it with scripts/services.sh (or set KLAMBDA_TEST_DATABASE_URL)")
    })?;
    admin
        .execute(sqlx::AssertSqlSafe(format!("CREATE SCHEMA {schema}")))
        .await?;
    let separator = if url.contains('?') { '&' } else { '?' };
    let store = store::open(&format!(
        "{url}{separator}options=-c%20search_path%3D{schema}"
    ))?;
    Ok((store, schema))
}

async fn drop_schema(schema: &str) -> Result<()> {
    let admin = sqlx::AnyPool::connect(&postgres_url()).await?;
    admin
        .execute(sqlx::AssertSqlSafe(format!("DROP SCHEMA {schema} CASCADE")))
        .await?;
    Ok(())
}

fn sqlite() -> Result<Box<dyn StatusStore>> {
    let path = std::env::temp_dir().join(format!(
        "klambda-status-{}-{}.db",
        std::process::id(),
        RUN.fetch_add(1, Ordering::SeqCst)
    ));
    let _ = std::fs::remove_file(&path);
    Ok(store::open(&format!("sqlite:{}", path.display()))?)
}

fn submission() -> Result<FunctionSubmission> {
    Ok(serde_json::from_value(serde_json::json!({
        "name": "hello", "runtime": "nodejs22", "handler": "index.handler",
        "source": {"kind": "inline", "files": [{"path": "index.js", "content": "exports.handler = async (e) => e;"}]}
    }))?)
}

async fn record(store: &dyn StatusStore, event: &Event) -> Result<store::Recorded> {
    let function = function_of(event);
    Ok(store
        .record(
            event,
            function.as_ref().map(|f| f.as_str()),
            Utc::now(),
            fold,
        )
        .await?)
}

async fn suite(store: Box<dyn StatusStore>) -> Result<()> {
    store.ping().await?;
    let created = Envelope::new("c-1", "/cli")
        .subject("hello")
        .encode::<FunctionCreated>(&submission()?);

    let first = record(store.as_ref(), &created).await?;
    assert!(first.new);
    assert_eq!(first.state.as_ref().map(|s| s.phase), Some(Phase::Parsing));
    // Same source + id: already recorded, nothing changes.
    let again = record(store.as_ref(), &created).await?;
    assert_eq!(
        again,
        store::Recorded {
            new: false,
            state: None
        }
    );

    let (spec, digest) = klambda_test_support::fixtures::inline_function(
        "hello",
        klambda_test_support::fixtures::runtime("nodejs22")?,
        "index.handler",
        &[("index.js", "exports.handler = async (e) => e;")],
    )?;
    let completed = reply::<ParserCompleted>(&created, klambda_events::Stage::Parser)
        .subject("hello")
        .data(&ParsedFunction {
            operation: Operation::Create,
            spec,
            digest: digest.clone(),
        });
    let second = record(store.as_ref(), &completed).await?;
    let state = second.state.context("parser.completed changes the state")?;
    assert_eq!(state.phase, Phase::Building);
    assert_eq!(state.digest.as_deref(), Some(digest.as_str()));
    assert!(state.timings_ms().contains_key("parse"));

    // Events that are not about a function are logged, with no state.
    let foreign = EventBuilderV10::new()
        .id("x-1")
        .source("/elsewhere")
        .ty("com.example.thing")
        .build()?;
    let recorded = record(store.as_ref(), &foreign).await?;
    assert!(recorded.new && recorded.state.is_none());

    let functions = store.functions().await?;
    assert_eq!(functions.len(), 1);
    assert_eq!(functions[0].name.as_str(), "hello");
    assert_eq!(
        store.function("hello").await?.map(|s| s.phase),
        Some(Phase::Building)
    );
    assert_eq!(store.function("nobody").await?, None);

    let events = store.function_events("hello", 0, 100).await?;
    let types: Vec<String> = events
        .iter()
        .map(|e| e.json()["type"].as_str().unwrap_or_default().to_owned())
        .collect();
    assert_eq!(types, [FunctionCreated::TYPE, ParserCompleted::TYPE]);
    assert!(events[0].seq < events[1].seq);
    let later = store.function_events("hello", events[0].seq, 100).await?;
    assert_eq!(
        later,
        events[1..].to_vec(),
        "after skips what was already read"
    );
    assert_eq!(store.function_events("hello", 0, 1).await?.len(), 1);

    // The stored event is the structured form of what was received.
    let stored = store.event("c-1").await?.context("c-1 recorded")?;
    assert_eq!(
        stored.json(),
        klambda_harness::codec::to_structured(&created)
    );
    assert_eq!(
        stored.json()["data"]["name"],
        "hello",
        "JSON data is stored as data, not data_base64"
    );
    assert_eq!(stored.json()["id"], created.id());
    assert!(store.event("missing").await?.is_none());
    let _ = ContentDigest::parse(digest.as_str())?;
    Ok(())
}

#[tokio::test]
async fn sqlite_store() -> Result<()> {
    suite(sqlite()?).await
}

#[tokio::test]
async fn postgres_store() -> Result<()> {
    let (store, schema) = postgres().await?;
    let result = suite(store).await;
    drop_schema(&schema).await?;
    result
}

#[tokio::test]
async fn concurrent_records_of_one_function_are_all_kept() -> Result<()> {
    let (postgres, schema) = postgres().await?;
    for store in [sqlite()?, postgres] {
        let store: std::sync::Arc<dyn StatusStore> = std::sync::Arc::from(store);
        let mut tasks = Vec::new();
        for i in 0..20 {
            let store = std::sync::Arc::clone(&store);
            tasks.push(tokio::spawn(async move {
                let event = Envelope::new(format!("c-{i}"), "/cli")
                    .subject("busy")
                    .encode::<FunctionCreated>(&submission()?);
                record(store.as_ref(), &event).await
            }));
        }
        for task in tasks {
            assert!(task.await??.new);
        }
        assert_eq!(store.function_events("busy", 0, 100).await?.len(), 20);
    }
    drop_schema(&schema).await
}

/// A platform event about `function`, with an id of its own.
fn platform_event(ty: &str, function: &str, data: serde_json::Value) -> Result<Event> {
    Ok(EventBuilderV10::new()
        .id(format!("{function}-{ty}"))
        .source("/tests")
        .ty(ty)
        .subject(function)
        .data("application/json", data)
        .build()?)
}

#[tokio::test]
async fn unfinished_journeys_resume_from_their_last_unanswered_input() -> Result<()> {
    use klambda_events::catalogue::{
        BuildStarted, ContextUploaded, FunctionCreated, FunctionDeleted, ServiceDeleted,
        ServiceReady, StatusUpdated,
    };
    let store = sqlite()?;
    let build = serde_json::json!({"function": "midway", "buildId": "b-0123456789abcdef01234567",
        "digest": "sha256:2c26b46b68ffc68ff99b453c1d30413413422d706483bfa0f98a5e886266e7ae"});
    // Killed while building: resumes from context.uploaded (build.started is only progress).
    for (ty, data) in [
        (FunctionCreated::TYPE, serde_json::json!({})),
        (ContextUploaded::TYPE, serde_json::json!({})),
        (BuildStarted::TYPE, build),
    ] {
        record(store.as_ref(), &platform_event(ty, "midway", data)?).await?;
    }
    // Ready: nothing to resume.
    for ty in [FunctionCreated::TYPE, ServiceReady::TYPE] {
        let data =
            serde_json::json!({"function": "done", "revision": "done-00001", "url": "http://x"});
        record(store.as_ref(), &platform_event(ty, "done", data)?).await?;
    }
    // A deletion never answered, of a ready function (the status reporter's own status.updated
    // after it answers nothing): resumes from function.deleted.
    for ty in [
        FunctionCreated::TYPE,
        ServiceReady::TYPE,
        FunctionDeleted::TYPE,
        StatusUpdated::TYPE,
    ] {
        let data = serde_json::json!({"function": "gone", "name": "gone", "revision": "gone-00001", "url": "http://x"});
        record(store.as_ref(), &platform_event(ty, "gone", data)?).await?;
    }
    // A deletion answered: nothing.
    for ty in [
        FunctionCreated::TYPE,
        FunctionDeleted::TYPE,
        ServiceDeleted::TYPE,
    ] {
        let data = serde_json::json!({"function": "over", "name": "over"});
        record(store.as_ref(), &platform_event(ty, "over", data)?).await?;
    }
    let mut resumed: Vec<(String, String)> = status_reporter::resume::unfinished(store.as_ref())
        .await?
        .iter()
        .map(|e| {
            (
                e.subject().unwrap_or_default().to_owned(),
                e.ty().to_owned(),
            )
        })
        .collect();
    resumed.sort();
    assert_eq!(
        resumed,
        [
            ("gone".to_owned(), FunctionDeleted::TYPE.to_owned()),
            ("midway".to_owned(), ContextUploaded::TYPE.to_owned()),
        ]
    );
    Ok(())
}
