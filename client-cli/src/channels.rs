//! The channels a `broadcast.v2` session is in: which ones the user joined
//! (kept across reconnects, so a new connection subscribes to each again),
//! the current one (where typed lines go), the commands in flight, and what
//! the server said about each channel's members.
//!
//! `subscribed` gives a count; the `members` answer that follows names who
//! is there (named clients only, and at most
//! [`MAX_MEMBERS_LISTED`](protocol::v2::MAX_MEMBERS_LISTED)); later
//! `presence` events name who joined and left (or only count them when many
//! changed at once). So the member list holds who is known to be there, and
//! [`Channels::who`] says how many others are only counted.
//!
//! Each joined channel also has a [`Cursor`]: the last position received,
//! kept across connections, so that the subscribe of the next connection
//! resumes from it (`since`) and the replay's outcome can be told.

use std::collections::{BTreeMap, HashMap};

use protocol::history::{Cursor, Position, Resumed, Unrecovered};
use protocol::v2::{Command, Id, Peer};

use crate::render::sanitize;

/// One joined channel.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Channel {
    name: String,
    /// Its subscribers, from the last `subscribed` or `presence` (`None`
    /// until this connection's subscription is confirmed).
    online: Option<u64>,
    /// Members known by name: id → name (this connection included).
    named: BTreeMap<u64, String>,
}

/// A command sent with an id, waiting for its answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Sent {
    /// `rejoin`: sent again on a new connection (not for a `/join`);
    /// `resume`: with `since`.
    Subscribe {
        channel: String,
        rejoin: bool,
        resume: bool,
    },
    Unsubscribe(String),
    /// `members`; `show`: print the answer (a `/who`), not just keep it.
    Members {
        channel: String,
        show: bool,
    },
}

/// The session's channels.
#[derive(Debug, Default)]
pub(crate) struct Channels {
    /// In the order joined.
    joined: Vec<Channel>,
    current: Option<String>,
    /// Commands sent on this connection whose answer has not come.
    in_flight: HashMap<u64, Sent>,
    next_id: u64,
    /// This connection's id and name, from the welcome.
    me: Option<(u64, String)>,
    /// Where each joined channel's messages got to (across connections).
    cursors: HashMap<String, Cursor>,
}

impl Channels {
    /// `names` (valid, distinct), the first one current.
    pub(crate) fn new(names: &[String]) -> Self {
        Self {
            joined: names.iter().map(|n| Channel::new(n)).collect(),
            current: names.first().cloned(),
            ..Self::default()
        }
    }

    /// Where typed lines go.
    pub(crate) fn current(&self) -> Option<&str> {
        self.current.as_deref()
    }

    /// The joined channels' names, in the order joined.
    pub(crate) fn names(&self) -> impl Iterator<Item = &str> {
        self.joined.iter().map(|c| c.name.as_str())
    }

    /// Lines from `channel` carry a `[#channel]` tag unless it is the only
    /// channel joined.
    pub(crate) fn tag<'a>(&self, channel: &'a str) -> Option<&'a str> {
        match &self.joined[..] {
            [only] if only.name == channel => None,
            _ => Some(channel),
        }
    }

    fn find(&mut self, name: &str) -> Option<&mut Channel> {
        self.joined.iter_mut().find(|c| c.name == name)
    }

    pub(crate) fn is_joined(&self, name: &str) -> bool {
        self.joined.iter().any(|c| c.name == name)
    }

    fn command(&mut self, mut sent: Sent) -> Command {
        self.next_id += 1;
        let id = Some(Id::Num(self.next_id));
        let command = match &mut sent {
            Sent::Subscribe {
                channel, resume, ..
            } => {
                let since = self.cursors.get(channel.as_str()).and_then(Cursor::since);
                *resume = since.is_some();
                Command::Subscribe {
                    channel: channel.clone(),
                    id,
                    since: since.cloned(),
                    rewind: None,
                }
            }
            Sent::Unsubscribe(channel) => Command::Unsubscribe {
                channel: channel.clone(),
                id,
            },
            Sent::Members { channel, .. } => Command::Members {
                channel: channel.clone(),
                id,
            },
        };
        self.in_flight.insert(self.next_id, sent);
        command
    }

    /// A new connection, welcomed as `me`: nothing is in flight or known
    /// any more; the subscribes to send, one per joined channel (`again`:
    /// not the first connection, so these join again).
    pub(crate) fn connected(&mut self, me: (u64, String), again: bool) -> Vec<Command> {
        self.in_flight.clear();
        self.me = Some(me);
        let names: Vec<String> = self.names().map(str::to_owned).collect();
        for c in &mut self.joined {
            *c = Channel::new(&c.name);
        }
        names
            .into_iter()
            .map(|channel| {
                self.command(Sent::Subscribe {
                    channel,
                    rejoin: again,
                    resume: false,
                })
            })
            .collect()
    }

    /// `/join NAME` (a valid name not joined yet): it becomes current; the
    /// subscribe to send.
    pub(crate) fn join(&mut self, name: &str) -> Command {
        self.joined.push(Channel::new(name));
        self.current = Some(name.to_owned());
        self.command(Sent::Subscribe {
            channel: name.to_owned(),
            rejoin: false,
            resume: false,
        })
    }

    /// `/leave NAME` (a joined channel): if it was current, the first
    /// channel left becomes current; the unsubscribe to send.
    pub(crate) fn leave(&mut self, name: &str) -> Command {
        self.forget(name);
        self.command(Sent::Unsubscribe(name.to_owned()))
    }

    /// Drops `name` from the joined channels.
    fn forget(&mut self, name: &str) {
        self.joined.retain(|c| c.name != name);
        self.cursors.remove(name);
        if self.current.as_deref() == Some(name) {
            self.current = self.joined.first().map(|c| c.name.clone());
        }
    }

    /// `/switch NAME` to a joined channel; `false` if it is not joined.
    pub(crate) fn switch(&mut self, name: &str) -> bool {
        let joined = self.is_joined(name);
        if joined {
            self.current = Some(name.to_owned());
        }
        joined
    }

    /// `subscribed`: the channel has `online` subscribers, us included.
    /// `true` if this joins it again after a reconnect; and the outcome of
    /// its resume if known already (else [`Channels::message`] says it
    /// when the replay ends).
    pub(crate) fn subscribed(
        &mut self,
        id: Option<&Id>,
        channel: &str,
        online: u64,
        answer: Answer,
    ) -> (bool, Option<Resumed>) {
        let (rejoined, resume) = match id {
            Some(Id::Num(n)) => match self.in_flight.remove(n) {
                Some(Sent::Subscribe { rejoin, resume, .. }) => (rejoin, resume),
                _ => (false, false),
            },
            _ => (false, false),
        };
        let resumed = if self.is_joined(channel) {
            let cursor = self.cursors.entry(channel.to_owned()).or_default();
            cursor.joined(resume, answer.recovered, answer.reason, answer.position)
        } else {
            None
        };
        let me = self.me.clone();
        if let Some(c) = self.find(channel) {
            c.online = Some(online);
            c.named.clear();
            if let Some((id, name)) = me {
                c.named.insert(id, name);
            }
        }
        (rejoined, resumed)
    }

    /// A replay of `channel` is under way.
    pub(crate) fn replaying(&self, channel: &str) -> bool {
        self.cursors.get(channel).is_some_and(Cursor::replaying)
    }

    /// A message on `channel` at `offset` of `epoch` (if history is on);
    /// `own`: one this client sent on an earlier connection (replayed to
    /// it). `Some`: it ends a replay, with the outcome.
    pub(crate) fn message(
        &mut self,
        channel: &str,
        offset: Option<u64>,
        epoch: Option<&str>,
        own: bool,
    ) -> Option<Resumed> {
        self.cursors.get_mut(channel)?.message(offset, epoch, own)
    }

    /// Whether `/who NAME` asks the server: for a channel not joined, or
    /// joined and confirmed (one still joining has nobody to list yet).
    pub(crate) fn may_ask(&self, name: &str) -> bool {
        self.joined
            .iter()
            .find(|c| c.name == name)
            .is_none_or(|c| c.online.is_some())
    }

    /// The `members` command for channel `name`; `show`: its answer is
    /// printed (see [`Channels::members`]).
    pub(crate) fn ask(&mut self, name: &str, show: bool) -> Command {
        self.command(Sent::Members {
            channel: name.to_owned(),
            show,
        })
    }

    /// A `members` answer: a joined channel's list becomes what it says
    /// (this connection kept). `Some`: the `/who` line to print, when the
    /// command was a `/who`.
    pub(crate) fn members(
        &mut self,
        id: Option<&Id>,
        channel: &str,
        online: u64,
        members: &[Peer],
    ) -> Option<String> {
        let show = match id {
            Some(Id::Num(n)) => matches!(
                self.in_flight.remove(n),
                Some(Sent::Members { show: true, .. })
            ),
            _ => false,
        };
        let me = self.me.clone();
        let list = |c: &mut Channel, me: Option<(u64, String)>| {
            c.online = Some(online);
            c.named = members.iter().map(|p| (p.id, p.name.clone())).collect();
            if let Some((id, name)) = me {
                c.named.insert(id, name);
            }
        };
        match self.find(channel) {
            // Still joining: its `subscribed` resets the list anyway.
            Some(c) if c.online.is_none() => {}
            Some(c) => list(c, me),
            // A channel not joined (`/who NAME`): shown, not kept.
            None if show => {
                let mut c = Channel::new(channel);
                list(&mut c, None);
                return Some(c.describe(None));
            }
            None => {}
        }
        show.then(|| self.who(channel))
    }

    /// `unsubscribed`: the answer to a `/leave`.
    pub(crate) fn unsubscribed(&mut self, id: Option<&Id>) {
        if let Some(Id::Num(n)) = id {
            self.in_flight.remove(n);
        }
    }

    /// `presence` on a channel: who joined and left (or how many).
    pub(crate) fn presence(
        &mut self,
        channel: &str,
        online: u64,
        joined: &[Peer],
        left: &[Peer],
        left_count: Option<u64>,
    ) {
        let me = self.me.as_ref().map(|(id, _)| *id);
        let Some(c) = self.find(channel) else {
            return;
        };
        c.online = Some(online);
        for p in joined {
            c.named.insert(p.id, p.name.clone());
        }
        for p in left {
            c.named.remove(&p.id);
        }
        if left_count.is_some_and(|n| n > 0) {
            // Some left, unnamed: any name but ours may be stale.
            c.named.retain(|id, _| Some(*id) == me);
        }
    }

    /// An `error` that answers the command with `id`: which it was. A
    /// refused subscribe also drops the channel from the joined ones.
    pub(crate) fn refused(&mut self, id: Option<&Id>) -> Option<Sent> {
        let Some(Id::Num(n)) = id else {
            return None;
        };
        let sent = self.in_flight.remove(n)?;
        if let Sent::Subscribe { channel, .. } = &sent {
            let channel = channel.clone();
            self.forget(&channel);
        }
        Some(sent)
    }

    /// `/who` for `name`: `#a: 3 online: bob, carol, erin (you)`, or with
    /// only counts for some of them, says so.
    pub(crate) fn who(&self, name: &str) -> String {
        let Some(c) = self.joined.iter().find(|c| c.name == name) else {
            return format!("not in #{name}");
        };
        c.describe(self.me.as_ref().map(|(id, _)| *id))
    }
}

/// The history fields of a `subscribed` answer.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct Answer {
    pub(crate) recovered: Option<bool>,
    pub(crate) reason: Option<Unrecovered>,
    /// The channel's position when joined (the end of the replay).
    pub(crate) position: Option<Position>,
}

impl Channel {
    fn new(name: &str) -> Self {
        Self {
            name: name.to_owned(),
            online: None,
            named: BTreeMap::new(),
        }
    }

    /// The `/who` line: `#a: 3 online: bob, carol, erin (you)`; `me`:
    /// this connection's id, marked.
    fn describe(&self, me: Option<u64>) -> String {
        let name = &self.name;
        let Some(online) = self.online else {
            return format!("#{name}: not joined yet (waiting for the server)");
        };
        let mut names: Vec<String> = self
            .named
            .iter()
            .map(|(id, n)| {
                let n = sanitize(n);
                if Some(*id) == me {
                    format!("{n} (you)")
                } else {
                    n.into_owned()
                }
            })
            .collect();
        names.sort_by_key(|n| n.to_lowercase());
        let unnamed = online.saturating_sub(names.len() as u64);
        let list = names.join(", ");
        match unnamed {
            0 if names.is_empty() => format!("#{name}: nobody online"),
            0 => format!("#{name}: {online} online: {list}"),
            n if n == online => format!("#{name}: {online} online, {UNNAMED}"),
            n => format!("#{name}: {online} online: {list}, and {n} more {UNNAMED}"),
        }
    }
}

/// Why some members have no name in `/who`.
const UNNAMED: &str = "unnamed (plain clients, or too many to name)";

#[cfg(test)]
mod tests {
    use super::*;

    fn peer(id: u64, name: &str) -> Peer {
        Peer {
            id,
            name: name.into(),
        }
    }

    impl Channels {
        /// `subscribed` without history.
        fn sub(&mut self, id: Option<&Id>, channel: &str, online: u64) -> bool {
            self.subscribed(id, channel, online, Answer::default()).0
        }
    }

    fn welcomed(names: &[&str]) -> (Channels, Vec<Command>) {
        let names: Vec<String> = names.iter().map(|n| (*n).to_owned()).collect();
        let mut ch = Channels::new(&names);
        let subs = ch.connected((7, "erin".into()), false);
        (ch, subs)
    }

    #[test]
    fn a_connection_subscribes_to_every_joined_channel_with_ids() {
        let (mut ch, subs) = welcomed(&["a", "b"]);
        assert_eq!(
            subs,
            [
                Command::Subscribe {
                    channel: "a".into(),
                    id: Some(Id::Num(1)),
                    since: None,
                    rewind: None
                },
                Command::Subscribe {
                    channel: "b".into(),
                    id: Some(Id::Num(2)),
                    since: None,
                    rewind: None
                },
            ]
        );
        assert_eq!(ch.current(), Some("a"));
        // A reconnect subscribes again, with fresh ids.
        let again = ch.connected((9, "erin".into()), true);
        assert_eq!(again.len(), 2);
        assert_eq!(again[0].id(), Some(&Id::Num(3)));
        assert!(ch.sub(again[0].id(), "a", 1), "joined again");
        let join = ch.join("c");
        assert!(!ch.sub(join.id(), "c", 1), "a /join is a first join");
    }

    fn at(offset: u64) -> Option<Position> {
        Some(Position {
            offset,
            epoch: "e".into(),
        })
    }

    #[test]
    fn a_new_connection_resumes_each_channel_from_its_last_message() {
        let (mut ch, subs) = welcomed(&["a", "b"]);
        let live = Answer {
            position: at(3),
            ..Answer::default()
        };
        assert_eq!(ch.subscribed(subs[0].id(), "a", 1, live), (false, None));
        ch.subscribed(subs[1].id(), "b", 1, Answer::default());
        assert_eq!(ch.message("a", Some(4), Some("e"), false), None);
        let again = ch.connected((9, "erin".into()), true);
        assert!(matches!(&again[0], Command::Subscribe { since, .. } if since == &at(4)));
        assert!(
            matches!(&again[1], Command::Subscribe { since: None, .. }),
            "no history, no since"
        );
        let resumed = Answer {
            recovered: Some(true),
            position: at(6),
            ..Answer::default()
        };
        assert_eq!(ch.subscribed(again[0].id(), "a", 1, resumed), (true, None));
        assert_eq!(ch.message("a", Some(5), Some("e"), false), None);
        assert_eq!(
            ch.message("a", Some(6), Some("e"), false),
            Some(Resumed::Recovered { missed: 2 })
        );
        // Leaving forgets the position: a later /join starts live.
        ch.leave("a");
        assert!(matches!(
            ch.join("a"),
            Command::Subscribe { since: None, .. }
        ));
    }

    #[test]
    fn tags_only_when_more_than_one_channel() {
        let (mut ch, _) = welcomed(&["a"]);
        assert_eq!(ch.tag("a"), None);
        assert_eq!(ch.tag("b"), Some("b"));
        ch.join("b");
        assert_eq!(ch.tag("a"), Some("a"));
        assert_eq!(ch.current(), Some("b"));
    }

    #[test]
    fn leaving_the_current_channel_moves_to_the_first_left() {
        let (mut ch, _) = welcomed(&["a", "b", "c"]);
        assert!(ch.switch("c"));
        assert!(!ch.switch("x"));
        let cmd = ch.leave("c");
        assert!(matches!(cmd, Command::Unsubscribe { channel, .. } if channel == "c"));
        assert_eq!(ch.current(), Some("a"));
        ch.leave("a");
        ch.leave("b");
        assert_eq!(ch.current(), None);
        assert_eq!(ch.names().count(), 0);
    }

    #[test]
    fn a_refused_subscribe_drops_the_channel() {
        let (mut ch, _) = welcomed(&["a"]);
        let cmd = ch.join("secret");
        assert_eq!(ch.current(), Some("secret"));
        assert_eq!(
            ch.refused(cmd.id()),
            Some(Sent::Subscribe {
                channel: "secret".into(),
                rejoin: false,
                resume: false,
            })
        );
        assert_eq!(ch.current(), Some("a"));
        assert!(!ch.is_joined("secret"));
        assert_eq!(ch.refused(cmd.id()), None, "answered once");
        assert_eq!(ch.refused(None), None);
    }

    #[test]
    fn who_lists_named_members_and_says_what_is_only_counted() {
        let (mut ch, subs) = welcomed(&["a"]);
        assert_eq!(ch.who("a"), "#a: not joined yet (waiting for the server)");
        ch.sub(subs[0].id(), "a", 2);
        assert_eq!(
            ch.who("a"),
            "#a: 2 online: erin (you), and 1 more unnamed (plain clients, or too many to name)"
        );
        ch.presence("a", 3, &[peer(7, "erin"), peer(8, "Bob")], &[], None);
        ch.presence("a", 4, &[peer(9, "carol")], &[], None);
        assert!(ch
            .who("a")
            .starts_with("#a: 4 online: Bob, carol, erin (you), and 1 more"));
        ch.presence("a", 3, &[], &[peer(8, "Bob")], None);
        ch.presence("a", 2, &[], &[], Some(1));
        assert_eq!(
            ch.who("a"),
            "#a: 2 online: erin (you), and 1 more unnamed (plain clients, or too many to name)"
        );
        ch.presence("a", 2, &[peer(10, "dan")], &[], None);
        assert_eq!(ch.who("a"), "#a: 2 online: dan, erin (you)");
        assert_eq!(ch.who("zz"), "not in #zz");
    }

    #[test]
    fn who_with_only_counts() {
        let (mut ch, subs) = welcomed(&["a"]);
        ch.sub(subs[0].id(), "a", 1);
        assert_eq!(ch.who("a"), "#a: 1 online: erin (you)");
        ch.me = None;
        ch.sub(None, "a", 5);
        assert_eq!(
            ch.who("a"),
            "#a: 5 online, unnamed (plain clients, or too many to name)"
        );
    }

    #[test]
    fn a_members_answer_names_who_was_there_before() {
        let (mut ch, subs) = welcomed(&["a"]);
        // Asked on joining: the answer is kept, not printed.
        ch.sub(subs[0].id(), "a", 4);
        let ask = ch.ask("a", false);
        assert_eq!(
            ask,
            Command::Members {
                channel: "a".into(),
                id: Some(Id::Num(2))
            }
        );
        let there = [peer(3, "ann"), peer(7, "erin")];
        assert_eq!(ch.members(ask.id(), "a", 4, &there), None);
        assert_eq!(
            ch.who("a"),
            "#a: 4 online: ann, erin (you), and 2 more unnamed (plain clients, or too many to name)"
        );
        // Presence still moves it on.
        ch.presence("a", 4, &[peer(9, "bo")], &[peer(3, "ann")], None);
        assert!(ch
            .who("a")
            .starts_with("#a: 4 online: bo, erin (you), and 2"));
        // A `/who` asks again and prints the answer, which replaces the list.
        assert!(ch.may_ask("a"));
        let who = ch.ask("a", true);
        assert_eq!(
            ch.members(who.id(), "a", 2, &[peer(5, "cy")]).as_deref(),
            Some("#a: 2 online: cy, erin (you)")
        );
        assert_eq!(ch.members(who.id(), "a", 2, &[]), None, "answered once");
    }

    #[test]
    fn who_asks_about_a_channel_not_joined_and_waits_for_one_joining() {
        let (mut ch, _) = welcomed(&["a"]);
        assert!(!ch.may_ask("a"), "no subscribed yet");
        assert!(ch.may_ask("elsewhere"));
        let who = ch.ask("elsewhere", true);
        assert_eq!(
            ch.members(who.id(), "elsewhere", 3, &[peer(2, "zed"), peer(1, "amy")])
                .as_deref(),
            Some("#elsewhere: 3 online: amy, zed, and 1 more unnamed (plain clients, or too many to name)")
        );
        assert!(!ch.is_joined("elsewhere"), "only shown");
        let empty = ch.ask("empty", true);
        assert_eq!(
            ch.members(empty.id(), "empty", 0, &[]).as_deref(),
            Some("#empty: nobody online")
        );
        // An answer for a channel still joining is dropped.
        let early = ch.ask("a", false);
        assert_eq!(ch.members(early.id(), "a", 2, &[peer(1, "amy")]), None);
        assert_eq!(ch.who("a"), "#a: not joined yet (waiting for the server)");
        // A refused `members` is only answered.
        let refused = ch.ask("secret", true);
        assert_eq!(
            ch.refused(refused.id()),
            Some(Sent::Members {
                channel: "secret".into(),
                show: true
            })
        );
        assert!(ch.is_joined("a"));
    }
}
