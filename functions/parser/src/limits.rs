//! The bounds a submission must stay within. One struct, so the numbers live in one place and
//! the docs (docs/PARSER.md) can point here.

/// Bounds on a submission.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Decoded bytes of all inline files together. Inline sources travel inside events, which
    /// the broker carries up to 1 MiB; larger sources go through S3 or git.
    pub max_inline_bytes: usize,
    /// Number of inline files.
    pub max_inline_files: usize,
    /// Bytes of one normalised file path.
    pub max_path_bytes: usize,
    /// Directory depth of one file path.
    pub max_path_depth: usize,
    /// Number of environment variables.
    pub max_env_vars: usize,
    /// Bytes of one environment variable name.
    pub max_env_name_bytes: usize,
    /// Bytes of one environment variable value.
    pub max_env_value_bytes: usize,
    /// Bytes of all names and values together.
    pub max_env_total_bytes: usize,
    /// Number of Triggers.
    pub max_triggers: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_inline_bytes: 512 * 1024,
            max_inline_files: 1000,
            max_path_bytes: 255,
            max_path_depth: 16,
            max_env_vars: 64,
            max_env_name_bytes: 128,
            max_env_value_bytes: 4096,
            max_env_total_bytes: 32 * 1024,
            max_triggers: 16,
        }
    }
}
