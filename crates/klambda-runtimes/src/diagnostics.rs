//! A compiler's errors read from a build's output: `file:line:column: message` lines, as Go's
//! compiler and vet print them (and most compilers' short forms), so `build.failed` can say
//! where the code is wrong, locally and from a cluster build's log alike.

use klambda_events::data::Diagnostic;

/// At most this many diagnostics are kept: the first errors are the ones that explain.
pub const KEPT: usize = 10;

/// The diagnostics in `output`, in order, at most [`KEPT`]; paths as the compiler printed them
/// relative to the function (`./` and the build's own directories dropped).
pub fn parse(output: &str) -> Vec<Diagnostic> {
    output.lines().filter_map(diagnostic).take(KEPT).collect()
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
        file: file.trim_start_matches("./").to_owned(),
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
