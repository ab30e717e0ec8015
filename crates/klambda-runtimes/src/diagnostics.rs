//! A compiler's errors read from a build's output, so `build.failed` can say where the code is
//! wrong, locally and from a cluster build's log alike: Cargo's JSON messages
//! (`--message-format=json…`: an error's primary span), and `file:line:column: message` lines
//! as Go's compiler and vet print them (and most compilers' short forms). Paths are made
//! relative to the function's directory.

use klambda_events::data::Diagnostic;

/// At most this many diagnostics are kept: the first errors are the ones that explain.
pub const KEPT: usize = 10;

/// The diagnostics in `output`, in order, at most [`KEPT`]; paths as the compiler printed them
/// relative to the function (`./` and the build's own directories dropped).
pub fn parse(output: &str) -> Vec<Diagnostic> {
    output
        .lines()
        .filter_map(|line| match cargo_message(line) {
            Some(message) => from_cargo(&message),
            None => diagnostic(line),
        })
        .take(KEPT)
        .collect()
}

/// `output` for people: each of Cargo's JSON compiler messages as the text it renders, its
/// other JSON lines (artifacts, build-script runs) left out, every other line as it is.
pub fn readable(output: &str) -> String {
    let mut text = String::with_capacity(output.len());
    for line in output.lines() {
        match serde_json::from_str::<serde_json::Value>(line) {
            Ok(message) if message.get("reason").is_some() => {
                if let Some(rendered) = message["message"]["rendered"].as_str() {
                    text.push_str(rendered.trim_end());
                    text.push('\n');
                }
            }
            _ => {
                text.push_str(line);
                text.push('\n');
            }
        }
    }
    text
}

/// A line that is one of Cargo's JSON compiler messages.
fn cargo_message(line: &str) -> Option<serde_json::Value> {
    let value: serde_json::Value = serde_json::from_str(line.trim()).ok()?;
    (value["reason"] == "compiler-message").then_some(value)
}

/// An error's primary span.
fn from_cargo(message: &serde_json::Value) -> Option<Diagnostic> {
    let message = &message["message"];
    if message["level"] != "error" {
        return None;
    }
    let span = message["spans"]
        .as_array()?
        .iter()
        .find(|span| span["is_primary"] == true)?;
    let code = message["code"]["code"]
        .as_str()
        .map(|code| format!("[{code}]"))
        .unwrap_or_default();
    Some(Diagnostic {
        file: relative(span["file_name"].as_str()?),
        line: u32::try_from(span["line_start"].as_u64()?).ok()?,
        column: span["column_start"]
            .as_u64()
            .and_then(|c| u32::try_from(c).ok()),
        message: format!("error{code}: {}", message["message"].as_str()?),
    })
}

/// `path` relative to the function's directory: a build sees it as `./x.go` (Go, from the
/// module's root) or through the context's `function/` directory (`../../function/src/lib.rs`
/// from a Rust build's program, or an absolute path through it).
fn relative(path: &str) -> String {
    let path = path.trim_start_matches("./");
    let inside = path
        .strip_prefix("../../function/")
        .or_else(|| {
            path.starts_with('/')
                .then(|| path.split_once("/function/").map(|(_, rest)| rest))
                .flatten()
        })
        .unwrap_or(path);
    inside.to_owned()
}

fn diagnostic(line: &str) -> Option<Diagnostic> {
    let line = line.trim();
    let mut parts = line.splitn(4, ':');
    let file = parts.next()?.trim();
    let number = parts.next()?.trim().parse::<u32>().ok()?;
    let rest: Vec<&str> = parts.collect();
    let (column, message) = match rest.as_slice() {
        [column, message] if column.trim().parse::<u32>().is_ok() => {
            (column.trim().parse::<u32>().ok(), message.trim())
        }
        [message] => (None, message.trim()),
        [first, second] => (None, &line[line.len() - first.len() - second.len() - 1..]),
        _ => return None,
    };
    let source_file = !file.is_empty()
        && !file.contains(char::is_whitespace)
        && file.rsplit_once('.').is_some_and(|(_, ext)| {
            !ext.is_empty() && ext.len() <= 4 && ext.chars().all(|c| c.is_ascii_alphanumeric())
        });
    if !source_file || message.is_empty() || number == 0 {
        return None;
    }
    Some(Diagnostic {
        file: relative(file),
        line: number,
        column,
        message: message.trim().to_owned(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn go_compiler_errors_are_read_with_their_place() {
        let output = "# example.com/hello\n./hello.go:7:2: undefined: fmt.Printn\n./hello.go:9:10: cannot use x (variable of type int) as string value in return statement\ngo: some module message\n";
        let found = parse(output);
        assert_eq!(found.len(), 2, "{found:?}");
        assert_eq!(
            found[0],
            Diagnostic {
                file: "hello.go".into(),
                line: 7,
                column: Some(2),
                message: "undefined: fmt.Printn".into(),
            }
        );
        assert_eq!(found[0].to_string(), "hello.go:7:2: undefined: fmt.Printn");
        assert_eq!(found[1].column, Some(10));
    }

    #[test]
    fn cargo_json_errors_are_read_at_their_primary_span_and_rendered_for_people() {
        let error = r#"{"reason":"compiler-message","package_id":"probe","message":{"rendered":"../../function/src/lib.rs:3:5: error[E0425]: cannot find value `nope` in this scope\n","level":"error","message":"cannot find value `nope` in this scope","code":{"code":"E0425"},"spans":[{"file_name":"../../function/src/lib.rs","line_start":3,"column_start":5,"is_primary":true}]}}"#;
        let warning = r#"{"reason":"compiler-message","message":{"rendered":"w","level":"warning","message":"unused","spans":[{"file_name":"src/lib.rs","line_start":1,"column_start":1,"is_primary":true}]}}"#;
        let artifact = r#"{"reason":"compiler-artifact","package_id":"serde"}"#;
        let output = format!("{artifact}\n{warning}\n{error}\nerror: could not compile `probe`\n");
        let found = parse(&output);
        assert_eq!(
            found,
            [Diagnostic {
                file: "src/lib.rs".into(),
                line: 3,
                column: Some(5),
                message: "error[E0425]: cannot find value `nope` in this scope".into(),
            }]
        );
        let text = readable(&output);
        assert!(!text.contains("compiler-artifact"), "{text}");
        assert!(
            text.contains("../../function/src/lib.rs:3:5: error[E0425]"),
            "{text}"
        );
        // Read again from the readable form (what a log excerpt keeps), the same place.
        assert_eq!(
            parse(&text).first().map(|d| d.file.as_str()),
            Some("src/lib.rs")
        );
        assert_eq!(relative("/var/b/x/function/src/main.rs"), "src/main.rs");
    }

    #[test]
    fn lines_that_are_not_diagnostics_are_left_out() {
        for line in [
            "",
            "go: downloading example.com/x v1.0.0",
            "note: see https://example.com:8080/x",
            "error: could not compile",
            "12:30:01 build started",
            "a file.go:x:1: no line",
        ] {
            assert!(parse(line).is_empty(), "{line}");
        }
        let many = "a.go:1:1: e\n".repeat(20);
        assert_eq!(parse(&many).len(), KEPT);
    }
}
