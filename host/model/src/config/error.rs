//! Configuration errors: every problem names the file, the YAML path, the offending value and
//! what was expected, so an operator can fix all of them in one pass.

use std::fmt;

/// One problem found in the configuration directory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    /// File relative to the configuration directory (`db_entities/ip.yml`); for problems with
    /// the directory itself, the directory (`db_entities/`) or `.` for the root.
    pub file: String,
    /// YAML path inside the file (`attribs.open_ports.history_params.max_age`); empty when the
    /// problem concerns the whole file.
    pub path: String,
    /// The offending value rendered compactly (`"7x"`, `30`, `{minute: 5}`), if there is one.
    pub value: Option<String>,
    /// What is wrong, e.g. `invalid duration`.
    pub message: String,
    /// What would have been accepted.
    pub expected: Option<String>,
    /// The nearest valid key/name, for typos.
    pub suggestion: Option<String>,
}

impl ConfigError {
    pub fn new(
        file: impl Into<String>,
        path: impl Into<String>,
        message: impl Into<String>,
    ) -> Self {
        ConfigError {
            file: file.into(),
            path: path.into(),
            value: None,
            message: message.into(),
            expected: None,
            suggestion: None,
        }
    }

    pub fn with_value(mut self, value: impl Into<String>) -> Self {
        self.value = Some(value.into());
        self
    }

    pub fn with_expected(mut self, expected: impl Into<String>) -> Self {
        self.expected = Some(expected.into());
        self
    }

    pub fn with_suggestion(mut self, suggestion: Option<String>) -> Self {
        self.suggestion = suggestion;
        self
    }
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: ", self.file)?;
        if !self.path.is_empty() {
            write!(f, "{}: ", self.path)?;
        }
        f.write_str(&self.message)?;
        if let Some(v) = &self.value {
            write!(f, " {v}")?;
        }
        if let Some(e) = &self.expected {
            write!(f, " — expected {e}")?;
        }
        if let Some(s) = &self.suggestion {
            write!(f, " (did you mean \"{s}\"?)")?;
        }
        Ok(())
    }
}

impl std::error::Error for ConfigError {}

/// All problems found while loading a configuration directory (never empty when returned as
/// an error).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ConfigErrors(pub Vec<ConfigError>);

impl ConfigErrors {
    pub fn single(e: ConfigError) -> Self {
        ConfigErrors(vec![e])
    }

    pub fn len(&self) -> usize {
        self.0.len()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    pub fn iter(&self) -> std::slice::Iter<'_, ConfigError> {
        self.0.iter()
    }
}

impl fmt::Display for ConfigErrors {
    /// One error per line.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, e) in self.0.iter().enumerate() {
            if i > 0 {
                writeln!(f)?;
            }
            write!(f, "{e}")?;
        }
        Ok(())
    }
}

impl std::error::Error for ConfigErrors {}

impl IntoIterator for ConfigErrors {
    type Item = ConfigError;
    type IntoIter = std::vec::IntoIter<ConfigError>;
    fn into_iter(self) -> Self::IntoIter {
        self.0.into_iter()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn display_names_file_path_value_expectation_and_suggestion() {
        let e = ConfigError::new(
            "db_entities/ip.yml",
            "attribs.open_ports.history_params.max_agee",
            "unknown key",
        )
        .with_expected("one of max_age, pre_validity")
        .with_suggestion(Some("max_age".into()));
        assert_eq!(
            e.to_string(),
            "db_entities/ip.yml: attribs.open_ports.history_params.max_agee: unknown key — \
             expected one of max_age, pre_validity (did you mean \"max_age\"?)"
        );
        let e = ConfigError::new("database.yml", "", "top level must be a mapping")
            .with_value("[1, 2]");
        assert_eq!(
            e.to_string(),
            "database.yml: top level must be a mapping [1, 2]"
        );
    }
}
