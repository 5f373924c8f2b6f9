//! Temporary files handed to the binary (configuration files).

/// A file in the temporary directory, removed when dropped.
pub(crate) struct TempFile(tempfile::NamedTempFile);

impl TempFile {
    /// Writes `text` to a new file whose name ends with `tag`.
    pub(crate) fn new(tag: &str, text: &str) -> TempFile {
        use std::io::Write as _;
        let mut file = tempfile::Builder::new()
            .prefix("bs-test-")
            .suffix(&format!("-{tag}"))
            .tempfile()
            .expect("create temp file");
        file.write_all(text.as_bytes()).expect("write temp file");
        file.flush().expect("write temp file");
        TempFile(file)
    }

    pub(crate) fn path(&self) -> &str {
        self.0.path().to_str().expect("UTF-8 temp path")
    }
}
