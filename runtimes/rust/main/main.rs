// knative-lambda Rust program: serves {{crate}}::{{handler}} (runtimes/README.md).
fn main() {
    klambda_function::run({{crate}}::{{handler}});
}
