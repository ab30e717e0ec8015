//! What the sandbox costs a function's start: a new revision of a Node.js function deployed by
//! the local runner until it answers `/health`, with the sandbox (its own user, its artifact's
//! ownership set, its own cgroup with the memory and CPU limits) and without (the runner's user,
//! no cgroup), in the same run. Each iteration cuts a new revision (one env value changes), so
//! each measures a process start, not a replay. The sandbox needs root and a writable cgroup:
//! the bench refuses to run without them rather than measure the same thing twice.
//!
//! Run: `cargo bench -p service-deployer --bench start`.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use criterion::{Criterion, criterion_group, criterion_main};
use klambda_events::{ContentDigest, FunctionSpec};
use klambda_test_support::fixtures;
use service_deployer::deployer::local::LocalRunner;
use service_deployer::deployer::{Deployer, Deployment};

const CODE: &str = "exports.handler = async (e) => ({ ok: true });";

fn function(name: &str) -> (FunctionSpec, ContentDigest, String) {
    let (spec, digest) = fixtures::inline_function(
        name,
        fixtures::runtime("nodejs20").unwrap_or_else(|e| panic!("{e}")),
        "index.handler",
        &[("index.js", CODE)],
    )
    .unwrap_or_else(|e| panic!("{e}"));
    let dir =
        std::env::temp_dir().join(format!("klambda-bench-start-{name}-{}", std::process::id()));
    let image = fixtures::local_artifact(&spec, &dir).unwrap_or_else(|e| panic!("{e}"));
    (spec, digest, image)
}

async fn deploy(runner: &LocalRunner, spec: &FunctionSpec, digest: &ContentDigest, image: &str) {
    match runner.deploy(spec, digest, image).await {
        Ok(Deployment::Settled(Ok(revision))) => assert!(revision.changed),
        other => panic!("the revision did not start: {other:?}"),
    }
}

fn start(c: &mut Criterion) {
    let probe = klambda_events::spec::Resources::default();
    let Some(group) =
        service_deployer::deployer::limits::RevisionCgroup::create("bench-probe", &probe)
    else {
        panic!(
            "the sandbox needs root and a writable cgroup (/sys/fs/cgroup): run the bench as root"
        );
    };
    group.remove();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap_or_else(|e| panic!("runtime: {e}"));
    let counter = Arc::new(AtomicU64::new(0));
    let mut group = c.benchmark_group("new revision until /health answers, Node.js");
    group
        .sample_size(20)
        .measurement_time(Duration::from_secs(15));
    for (label, runner) in [
        ("sandboxed", LocalRunner::new()),
        ("no sandbox", LocalRunner::new().without_sandbox()),
    ] {
        let name = label.replace(' ', "-");
        let (mut spec, digest, image) = function(&format!("bench-{name}"));
        let counter = Arc::clone(&counter);
        group.bench_function(label, |b| {
            b.to_async(&runtime).iter_custom(|iterations| {
                let runner = &runner;
                let counter = Arc::clone(&counter);
                let mut spec = spec.clone();
                let (digest, image) = (&digest, &image);
                async move {
                    let mut spent = Duration::ZERO;
                    for _ in 0..iterations {
                        let n = counter.fetch_add(1, Ordering::Relaxed);
                        spec.env.insert("ITERATION".to_owned(), n.to_string());
                        let started = Instant::now();
                        deploy(runner, &spec, digest, image).await;
                        spent += started.elapsed();
                    }
                    spent
                }
            });
        });
        spec.env.clear();
        let name = spec.name.clone();
        runtime
            .block_on(async { runner.delete(&name).await.map(|_| ()) })
            .unwrap_or_else(|e| panic!("{e}"));
    }
    group.finish();
}

criterion_group!(benches, start);
criterion_main!(benches);
