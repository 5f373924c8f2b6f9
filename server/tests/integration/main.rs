//! Integration tests: each test starts the real `broadcast-server` binary on
//! a loopback port chosen by the kernel and talks to it over real sockets.

mod access;
mod broadcast;
mod channels;
mod cluster;
mod compression;
mod deploy;
mod drain_cluster;
mod flow;
mod hardening;
mod history;
mod http;
mod jwt;
mod lifecycle;
mod limits;
mod ops;
mod presence_cluster;
mod protocol_errors;
mod settings;
mod tls;
mod util;
mod v1;
mod v2;
