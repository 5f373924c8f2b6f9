//! Console client tests (see the client-cli crate): the real
//! `broadcast-server` binary runs both the server (`start`) and the clients
//! (`connect`), on loopback ports chosen by the kernel.

mod channels;
mod compression;
mod interactive;
mod jwt;
mod pipe;
mod plain;
mod resume;
mod util;
