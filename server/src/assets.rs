//! Static files served over HTTP: the browser client's page, script and
//! WebAssembly module, embedded in the binary.
//!
//! server/build.rs builds client-web to WebAssembly and writes the files and
//! their table (`$OUT_DIR/assets.rs`). The page (`/`, `/index.html`) and its
//! loader (`/main.js`) are revalidated on every load (`no-cache`); the
//! wasm-bindgen glue and the module carry a content hash in their names
//! (`/client_web-<hash>.js`, `/client_web-<hash>_bg.wasm`) and are cached
//! for a year.

/// One embedded file.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Asset {
    pub(crate) body: &'static [u8],
    pub(crate) content_type: &'static str,
    pub(crate) cache_control: &'static str,
}

// `const FILES: &[(&str, &[u8], &str, &str)]`: path, body, content type,
// cache control.
include!(concat!(env!("OUT_DIR"), "/assets.rs"));

/// The file served at `path`, if any.
pub(crate) fn lookup(path: &str) -> Option<Asset> {
    let path = if path == "/" { "/index.html" } else { path };
    FILES
        .iter()
        .find(|(p, ..)| *p == path)
        .map(|&(_, body, content_type, cache_control)| Asset {
            body,
            content_type,
            cache_control,
        })
}

#[cfg(test)]
mod tests {
    use super::lookup;

    #[test]
    fn the_page_is_served_at_the_root() {
        let page = lookup("/").expect("a page at /");
        assert_eq!(page.content_type, "text/html; charset=utf-8");
        assert_eq!(page.cache_control, "no-cache");
        assert!(std::str::from_utf8(page.body)
            .expect("UTF-8")
            .contains("<link rel=\"icon\" href=\"data:,\">"));
        assert_eq!(lookup("/index.html").map(|a| a.body), Some(page.body));
        assert!(lookup("/nope").is_none());
        assert!(lookup("").is_none());
    }

    #[test]
    fn the_page_references_only_served_files() {
        let page = std::str::from_utf8(lookup("/").expect("page").body).expect("UTF-8");
        if !page.contains("main.js") {
            // Built without the client (BROADCAST_SKIP_WASM or clippy).
            return;
        }
        let main = lookup("/main.js").expect("/main.js");
        assert!(main.content_type.starts_with("text/javascript"));
        let main = std::str::from_utf8(main.body).expect("UTF-8");
        let glue = main
            .split('"')
            .find(|s| s.starts_with("./client_web-") && s.ends_with(".js"))
            .expect("main.js imports the glue");
        let glue = lookup(&glue[1..]).expect("the glue is served");
        assert_eq!(glue.cache_control, "public, max-age=31536000, immutable");
        let glue = std::str::from_utf8(glue.body).expect("UTF-8");
        let module = glue
            .split('\'')
            .find(|s| s.starts_with("client_web-") && s.ends_with("_bg.wasm"))
            .expect("the glue names its module");
        let module = lookup(&format!("/{module}")).expect("the module is served");
        assert_eq!(module.content_type, "application/wasm");
        assert_eq!(&module.body[..4], b"\0asm");
    }
}
