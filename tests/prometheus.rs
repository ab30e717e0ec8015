//! The real Prometheus server (Debian's package, installed by scripts/services.sh) scrapes
//! `klambda up` with the rules of deploy/monitoring/rules.yaml loaded: quiet while builds
//! succeed, and the build-failure alert turns pending (or firing) after a deploy whose build
//! fails, as seen through Prometheus' HTTP API.

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result, bail};
use klambda_test_support::http::get;
use klambda_test_support::{process, repo};
use serde_json::Value;

/// A Prometheus process, stopped on drop.
struct Prometheus {
    child: Child,
    url: String,
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = process::terminate(&mut self.child, Duration::from_secs(10));
    }
}

impl Prometheus {
    /// Starts Prometheus in `dir`, scraping `target` (host:port) every second under the job
    /// name `knative-lambda` and evaluating the platform's rules every second.
    async fn start(dir: &std::path::Path, target: &str) -> Result<Self> {
        let rules: Value = serde_norway::from_str(&std::fs::read_to_string(
            repo::root().join("deploy/monitoring/rules.yaml"),
        )?)?;
        std::fs::create_dir_all(dir)?;
        // Prometheus reads plain rule files: the PrometheusRule's spec is exactly one.
        std::fs::write(
            dir.join("rules.yaml"),
            serde_norway::to_string(&rules["spec"])?,
        )?;
        std::fs::write(
            dir.join("prometheus.yml"),
            format!(
                "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\n\
                 rule_files: [rules.yaml]\n\
                 scrape_configs:\n  - job_name: knative-lambda\n    static_configs:\n      - targets: ['{target}']\n"
            ),
        )?;
        let port = process::free_port()?;
        let mut child = Command::new("prometheus")
            .arg(format!("--config.file={}", dir.join("prometheus.yml").display()))
            .arg(format!("--storage.tsdb.path={}", dir.join("data").display()))
            .arg(format!("--web.listen-address=127.0.0.1:{port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .context("prometheus is not installed: run scripts/services.sh (it installs Debian's prometheus package)")?;
        let url = format!("http://127.0.0.1:{port}");
        process::wait_healthy(
            &format!("{url}/-/ready"),
            &mut child,
            Duration::from_secs(60),
        )
        .await?;
        Ok(Self { child, url })
    }

    /// `GET /api/v1/<path>`'s `data`.
    async fn api(&self, path: &str) -> Result<Value> {
        let reply = get(&format!("{}/api/v1/{path}", self.url)).await?;
        let body = reply.json()?;
        anyhow::ensure!(body["status"] == "success", "{path}: {body}");
        Ok(body["data"].clone())
    }

    /// The instant vector of `query`.
    async fn query(&self, query: &str) -> Result<Vec<Value>> {
        let encoded: String = url::form_urlencoded::byte_serialize(query.as_bytes()).collect();
        Ok(self.api(&format!("query?query={encoded}")).await?["result"]
            .as_array()
            .cloned()
            .unwrap_or_default())
    }

    /// The state (`pending`, `firing`) of `alert`, if it is active.
    async fn alert_state(&self, alert: &str) -> Result<Option<String>> {
        Ok(self.api("alerts").await?["alerts"]
            .as_array()
            .into_iter()
            .flatten()
            .find(|a| a["labels"]["alertname"] == alert)
            .and_then(|a| a["state"].as_str().map(str::to_owned)))
    }

    /// Waits until `check` holds, failing with `what` after `within`.
    async fn until<F, Fut>(&self, within: Duration, what: &str, mut check: F) -> Result<()>
    where
        F: FnMut() -> Fut,
        Fut: std::future::Future<Output = Result<bool>>,
    {
        let started = Instant::now();
        while started.elapsed() < within {
            if check().await? {
                return Ok(());
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
        bail!("{what}: not within {within:?}")
    }
}

/// A copy of the Node.js example whose handler does not parse: its build fails with
/// `compile_error`.
fn broken_function(dir: &std::path::Path) -> Result<std::path::PathBuf> {
    let function = dir.join("broken-node");
    std::fs::create_dir_all(&function)?;
    std::fs::write(
        function.join("klambda.json"),
        r#"{ "name": "broken-node", "runtime": "nodejs20", "handler": "index.handler" }"#,
    )?;
    std::fs::write(
        function.join("index.js"),
        "exports.handler = async (event) => { return { oops: ; } };\n",
    )?;
    Ok(function)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_build_raises_the_build_failure_alert_in_prometheus() -> Result<()> {
    let dir = klambda_tests::data_dir("prometheus-server");
    let (_platform, server) = klambda_tests::serve_embedded("prometheus", |s| s).await?;
    let target = server
        .url("")
        .trim_start_matches("http://")
        .trim_end_matches('/')
        .to_owned();
    let prometheus = Prometheus::start(&dir.join("prometheus"), &target).await?;

    // Scraped, rules loaded, the build outcomes already at zero.
    prometheus
        .until(Duration::from_secs(60), "klambda up scraped", || async {
            let up = prometheus.query(r#"up{job="knative-lambda"}"#).await?;
            let zero = prometheus
                .query(r#"klambda_build_outcomes_total{outcome="failed",cause="compile_error"}"#)
                .await?;
            Ok(up.first().is_some_and(|s| s["value"][1] == "1") && !zero.is_empty())
        })
        .await?;
    let groups = prometheus.api("rules").await?;
    assert!(
        groups.to_string().contains("KlambdaBuildFailureRatioHigh"),
        "the rules are not loaded: {groups}"
    );

    // A successful deploy: the alert stays quiet.
    assert_eq!(
        klambda_tests::deploy_example(&server, "hello-node", None).await?,
        0
    );
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(
        prometheus
            .alert_state("KlambdaBuildFailureRatioHigh")
            .await?,
        None
    );

    // Two failing builds: 2 of 3 builds failed, above the alert's half.
    let broken = broken_function(&dir)?;
    for _ in 0..2 {
        let code = klambda_cli::client::deploy(
            &klambda_cli::client::Api::new(&server.url("")),
            &broken,
            klambda_cli::client::Output::Json,
            None,
        )
        .await?;
        assert_ne!(code, 0, "the broken function deployed");
        std::fs::write(
            broken.join("index.js"),
            "exports.handler = async () => { return { still: broken ; } };\n",
        )?;
    }
    prometheus
        .until(
            Duration::from_secs(60),
            "KlambdaBuildFailureRatioHigh pending or firing",
            || async {
                Ok(matches!(
                    prometheus
                        .alert_state("KlambdaBuildFailureRatioHigh")
                        .await?
                        .as_deref(),
                    Some("pending" | "firing")
                ))
            },
        )
        .await?;
    let ratio = prometheus
        .query("klambda:build_failure_ratio:rate30m")
        .await?;
    let ratio: f64 = ratio
        .first()
        .and_then(|s| s["value"][1].as_str())
        .context("no build failure ratio")?
        .parse()?;
    assert!(ratio > 0.5, "{ratio}");
    // The stage is scraped: no stage-down alert.
    assert_eq!(prometheus.alert_state("KlambdaStageDown").await?, None);
    drop(prometheus);
    server.shutdown().await;
    let _ = std::fs::remove_dir_all(&dir);
    Ok(())
}
