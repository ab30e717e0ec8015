//! The workspace's cross-function tests live in `tests/*.rs` beside this file; this library is
//! empty so that `cargo test -p klambda-tests` has a package to run them from.
