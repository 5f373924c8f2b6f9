//! Who gets a WebSocket connection: the checks of an upgrade request
//! (shutdown, origin, credentials, `--max-new-connections-per-sec`,
//! `--max-connections`, `--max-connections-per-ip`), each refusal counted,
//! and, for an admitted client, a [`Ticket`]: an RAII guard that holds its
//! place in the connection counts and gives it back when dropped, however
//! the connection ends (upgrade failure, close, reset). Nothing is released
//! by hand.

use std::collections::{HashMap, HashSet};
use std::net::IpAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Instant;

use crate::access::{self, Grant};
use crate::config::{Config, TokenBucket};
use crate::stats::Stats;

/// Most client addresses remembered as already logged for hitting
/// `--max-connections-per-ip`.
const LOGGED_IPS: usize = 4096;

/// Why an upgrade was refused (each maps to one HTTP status and counter).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Refusal {
    /// The server is shutting down (503).
    Draining,
    /// A browser `Origin` that is not allowed (403).
    Origin,
    /// Missing or wrong `--auth-token` / `--jwt-secret` credentials (401).
    Unauthorized,
    /// The credentials do not allow the channel asked for (403).
    Channel,
    /// Over `--max-new-connections-per-sec` (503).
    NewConnectionRate,
    /// Over `--max-connections` (503).
    MaxConnections,
    /// Over `--max-connections-per-ip` (503); the limit.
    PerIp(u32),
}

/// What an upgrade request presents, as the checks need it.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Request<'a> {
    pub(crate) peer: IpAddr,
    pub(crate) origin: Option<&'a str>,
    pub(crate) host: Option<&'a str>,
    pub(crate) authorization: Option<&'a str>,
    pub(crate) query_token: Option<&'a str>,
    /// The channel its URL names, when the credentials must allow it.
    pub(crate) channel: Option<&'a str>,
    pub(crate) draining: bool,
}

/// The server-wide admission state (touched once per upgrade and once per
/// ended connection, never per message).
#[derive(Debug)]
pub(crate) struct Admission {
    config: Arc<Config>,
    stats: Arc<Stats>,
    /// Open WebSocket connections per client address (with the limit on).
    per_ip: Mutex<HashMap<IpAddr, u32>>,
    /// Addresses already logged for hitting `--max-connections-per-ip`.
    per_ip_logged: Mutex<HashSet<IpAddr>>,
    /// Server-wide bucket of `--max-new-connections-per-sec`.
    new_conns: Mutex<TokenBucket>,
    /// A paced drain (`--drain-period`) is closing the clients: new ones are
    /// refused, as during the shutdown itself.
    draining: AtomicBool,
}

impl Admission {
    pub(crate) fn new(config: Arc<Config>, stats: Arc<Stats>) -> Arc<Self> {
        let rate = config.max_new_connections_per_sec;
        Arc::new(Self {
            config,
            stats,
            per_ip: Mutex::new(HashMap::new()),
            per_ip_logged: Mutex::new(HashSet::new()),
            new_conns: Mutex::new(TokenBucket::full(rate, Instant::now())),
            draining: AtomicBool::new(false),
        })
    }

    /// From now on, upgrades are refused (a paced drain began).
    pub(crate) fn start_draining(&self) {
        self.draining.store(true, Ordering::Relaxed);
    }

    /// Whether a paced drain is under way.
    pub(crate) fn is_draining(&self) -> bool {
        self.draining.load(Ordering::Relaxed)
    }

    /// The access checks (origin, credentials, the URL's channel), first of
    /// all; returns what the credentials allow. A refusal is counted under
    /// its reason.
    pub(crate) fn authorize(&self, req: &Request<'_>) -> Result<Grant, Refusal> {
        let config = &self.config;
        let verdict = if !access::origin_allowed(&config.allowed_origins, req.origin, req.host) {
            Err(Refusal::Origin)
        } else {
            match access::authorized(config, req.authorization, req.query_token) {
                None => Err(Refusal::Unauthorized),
                Some(grant) if req.channel.is_some_and(|c| !grant.allows(c)) => {
                    Err(Refusal::Channel)
                }
                Some(grant) => Ok(grant),
            }
        };
        self.count(verdict)
    }

    /// The limits, once the request is otherwise good: an admitted client
    /// gets its [`Ticket`]. A refusal is counted under its reason.
    pub(crate) fn admit(self: &Arc<Self>, req: &Request<'_>) -> Result<Ticket, Refusal> {
        self.count(self.check(req))
    }

    fn count<T>(&self, verdict: Result<T, Refusal>) -> Result<T, Refusal> {
        if let Err(reason) = &verdict {
            let s = &self.stats;
            let counter = match reason {
                Refusal::Draining => &s.refused_draining,
                Refusal::Origin => &s.refused_origin,
                Refusal::Unauthorized => &s.refused_auth,
                Refusal::Channel => &s.refused_channel,
                Refusal::NewConnectionRate => &s.refused_rate,
                Refusal::MaxConnections => &s.refused,
                Refusal::PerIp(_) => &s.refused_per_ip,
            };
            counter.fetch_add(1, Ordering::Relaxed);
        }
        verdict
    }

    fn check(self: &Arc<Self>, req: &Request<'_>) -> Result<Ticket, Refusal> {
        let config = &self.config;
        if req.draining {
            return Err(Refusal::Draining);
        }
        if !self.take_new_connection_token() {
            return Err(Refusal::NewConnectionRate);
        }
        let open = &self.stats.connections;
        if open.fetch_add(1, Ordering::Relaxed) >= config.max_connections {
            open.fetch_sub(1, Ordering::Relaxed);
            return Err(Refusal::MaxConnections);
        }
        // From here on the ticket gives back what it holds when dropped.
        let mut ticket = Ticket {
            admission: self.clone(),
            ip: None,
        };
        ticket.ip = self.count_ip(req.peer)?.map(Box::new);
        Ok(ticket)
    }

    /// Takes a token from `--max-new-connections-per-sec` (always, when off).
    fn take_new_connection_token(&self) -> bool {
        let rate = self.config.max_new_connections_per_sec;
        if rate == 0 {
            return true;
        }
        let mut bucket = self
            .new_conns
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        bucket.take(rate, Instant::now())
    }

    /// Counts a connection from `ip` against `--max-connections-per-ip`:
    /// `Ok(Some(ip))` counted, `Ok(None)` the limit is off.
    fn count_ip(&self, ip: IpAddr) -> Result<Option<IpAddr>, Refusal> {
        let limit = self.config.max_connections_per_ip;
        if limit == 0 {
            return Ok(None);
        }
        let mut map = self.per_ip.lock().unwrap_or_else(PoisonError::into_inner);
        let n = map.entry(ip).or_insert(0);
        if *n >= limit {
            drop(map);
            let mut logged = self
                .per_ip_logged
                .lock()
                .unwrap_or_else(PoisonError::into_inner);
            if logged.len() < LOGGED_IPS && logged.insert(ip) {
                tracing::warn!(
                    %ip,
                    limit,
                    "refusing connections from this address: --max-connections-per-ip reached (logged once per address)"
                );
            }
            return Err(Refusal::PerIp(limit));
        }
        *n += 1;
        Ok(Some(ip))
    }

    fn release_ip(&self, ip: IpAddr) {
        let mut map = self.per_ip.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(n) = map.get_mut(&ip) {
            *n -= 1;
            if *n == 0 {
                map.remove(&ip);
            }
        }
    }
}

/// An admitted client's place in the connection counts (open connections,
/// and its address with `--max-connections-per-ip`), given back on drop.
#[derive(Debug)]
pub(crate) struct Ticket {
    admission: Arc<Admission>,
    /// Boxed: counted only with `--max-connections-per-ip` (off by
    /// default), and every connection holds a ticket.
    ip: Option<Box<IpAddr>>,
}

impl Drop for Ticket {
    fn drop(&mut self) {
        self.admission
            .stats
            .connections
            .fetch_sub(1, Ordering::Relaxed);
        if let Some(ip) = self.ip.take() {
            self.admission.release_ip(*ip);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req(peer: [u8; 4]) -> Request<'static> {
        Request {
            peer: IpAddr::from(peer),
            origin: None,
            host: None,
            authorization: None,
            query_token: None,
            channel: Some(protocol::channel::DEFAULT),
            draining: false,
        }
    }

    #[test]
    fn tickets_hold_and_release_the_counts() {
        let config = Config {
            max_connections: 3,
            max_connections_per_ip: 2,
            ..Config::default()
        };
        let stats = Arc::new(Stats::new());
        let adm = Admission::new(Arc::new(config), stats.clone());
        let a = adm.admit(&req([127, 0, 0, 1])).unwrap();
        let b = adm.admit(&req([127, 0, 0, 1])).unwrap();
        assert_eq!(
            adm.admit(&req([127, 0, 0, 1])).unwrap_err(),
            Refusal::PerIp(2)
        );
        let c = adm.admit(&req([127, 0, 0, 2])).unwrap();
        assert_eq!(
            adm.admit(&req([127, 0, 0, 3])).unwrap_err(),
            Refusal::MaxConnections
        );
        assert_eq!(stats.connections.load(Ordering::Relaxed), 3);
        assert_eq!(stats.refused_per_ip.load(Ordering::Relaxed), 1);
        assert_eq!(stats.refused.load(Ordering::Relaxed), 1);
        drop((a, c));
        assert_eq!(stats.connections.load(Ordering::Relaxed), 1);
        let _d = adm.admit(&req([127, 0, 0, 1])).expect("a slot was freed");
        drop(b);
        assert_eq!(stats.connections.load(Ordering::Relaxed), 1);
        assert!(adm
            .per_ip
            .lock()
            .unwrap()
            .get(&IpAddr::from([127, 0, 0, 2]))
            .is_none());
    }

    #[test]
    fn a_browser_from_elsewhere_is_refused_and_counted() {
        let adm = Admission::new(Arc::new(Config::default()), Arc::new(Stats::new()));
        let mut r = req([127, 0, 0, 1]);
        r.origin = Some("https://evil.example");
        r.host = Some("chat.example");
        assert_eq!(adm.authorize(&r), Err(Refusal::Origin));
        assert_eq!(adm.stats.refused_origin.load(Ordering::Relaxed), 1);
        r.origin = Some("https://chat.example");
        assert_eq!(adm.authorize(&r), Ok(Grant::default()));
    }

    #[test]
    fn draining_refuses_first_of_the_limits() {
        let adm = Admission::new(Arc::new(Config::default()), Arc::new(Stats::new()));
        let mut r = req([127, 0, 0, 1]);
        r.draining = true;
        assert_eq!(adm.admit(&r).unwrap_err(), Refusal::Draining);
        assert_eq!(adm.stats.connections.load(Ordering::Relaxed), 0);
        assert_eq!(adm.stats.refused_draining.load(Ordering::Relaxed), 1);
    }
}
