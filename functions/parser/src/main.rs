//! The parser stage binary: serves [`parser::Parser`] through the harness.

fn main() -> std::process::ExitCode {
    klambda_harness::run("parser", &[], async |_config| Ok(parser::Parser::new()))
}
