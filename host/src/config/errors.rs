//! Config errors: each names the file, line, column and the key as the user wrote it.

/// One problem found in a config file.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{file}:{line}:{column}: `{key}`: {message}")]
pub struct ConfigError {
    /// The file (or `<string>`).
    pub file: String,
    /// 1-based line.
    pub line: usize,
    /// 1-based column.
    pub column: usize,
    /// Dotted key path, such as `server.limits.max_body_size`.
    pub key: String,
    /// What was wrong and what was expected.
    pub message: String,
}

/// Everything wrong with a config file, or why it could not be read.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    /// The file could not be read.
    #[error("{file}: cannot read the config file: {source}")]
    Read {
        /// The path given.
        file: String,
        /// The OS error.
        source: std::io::Error,
    },
    /// The file was read but is not a valid configuration.
    #[error("{}", .0.iter().map(ToString::to_string).collect::<Vec<_>>().join("\n"))]
    Invalid(Vec<ConfigError>),
}

/// The text being validated, to turn byte spans into lines and columns.
pub(super) struct Doc<'a> {
    pub(super) text: &'a str,
    pub(super) file: &'a str,
}

impl Doc<'_> {
    pub(super) fn error(
        &self,
        span: std::ops::Range<usize>,
        key: &str,
        message: impl Into<String>,
    ) -> ConfigError {
        let before = &self.text[..span.start.min(self.text.len())];
        let line = before.matches('\n').count() + 1;
        let column = before.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1;
        ConfigError {
            file: self.file.to_string(),
            line,
            column,
            key: if key.is_empty() || key == "." {
                "(document)".into()
            } else {
                key.to_string()
            },
            message: message.into(),
        }
    }

    pub(super) fn toml_error(&self, key: &str, error: &toml::de::Error) -> ConfigError {
        self.error(error.span().unwrap_or(0..0), key, error.message().trim())
    }
}
