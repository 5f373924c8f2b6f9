//! The console client (`broadcast-server connect`). Its implementation is
//! tracked by the console-client issue; this crate is its future home.
