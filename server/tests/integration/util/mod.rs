//! Helpers shared by the integration tests, one job a file. Everything is
//! re-exported here, so a test says `use crate::util::*` or names the
//! helpers it needs, whichever file they live in.

use std::time::Duration;

mod files;
mod http;
mod process;
mod raw_ws;
mod redis_server;
mod reports;
mod tls;
mod ws;

pub(crate) use files::*;
pub(crate) use http::*;
pub(crate) use process::*;
pub(crate) use raw_ws::*;
pub(crate) use redis_server::*;
pub(crate) use reports::*;
pub(crate) use tls::*;
pub(crate) use ws::*;

/// Bound for "this event must happen": generous, tests never wait this long when green.
pub(crate) const EVENT_TIMEOUT: Duration = Duration::from_secs(15);
/// How long to watch for "nothing arrives".
pub(crate) const QUIET_PERIOD: Duration = Duration::from_millis(300);
