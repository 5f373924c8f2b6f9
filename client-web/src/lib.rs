//! The browser client, compiled to WebAssembly. Its implementation is
//! tracked by the browser-client issue; this crate is its future home.
