//! Static files served over HTTP: the browser client's page, script and
//! WebAssembly module, embedded in the binary.

/// One embedded file.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Asset {
    pub(crate) body: &'static [u8],
    pub(crate) content_type: &'static str,
    pub(crate) cache_control: &'static str,
}

const INDEX_HTML: &str = include_str!("index.html");

/// The file served at `path`, if any.
pub(crate) fn lookup(path: &str) -> Option<Asset> {
    match path {
        "/" | "/index.html" => Some(Asset {
            body: INDEX_HTML.as_bytes(),
            content_type: "text/html; charset=utf-8",
            cache_control: "no-cache",
        }),
        _ => None,
    }
}
