//! The page's channel bookkeeping, free of any DOM and of the socket: which
//! channels it has joined (in join order), which one is shown, each one's
//! subscription state, online count, known members, unread count and
//! bounded history, and the short list of unread messages from the others.
//!
//! [`Model`](crate::model::Model) owns one [`Channels`] and feeds it what
//! the server says; the page renders [`Channels::items`] and
//! [`Channels::unread`] and shows the current channel's history.
//!
//! The list is never empty: the page starts in one channel (the URL's, or
//! [`protocol::channel::DEFAULT`]) and the last one cannot be left, so there
//! is always a current channel to show and to send to.

use std::collections::{BTreeMap, VecDeque};

use protocol::v1::Peer;

use crate::model::{Line, LineKind};

/// Lines kept per channel; older ones are dropped (the page shows at most
/// this many, so a long session stays light).
pub const HISTORY: usize = 500;
/// Unread messages listed from the channels not shown, newest last.
pub const UNREAD_LIST: usize = 5;

/// Where this page stands with the server in one channel.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ChannelState {
    /// Not subscribed: no connection yet, or it dropped (subscribed again
    /// when it opens).
    Waiting,
    /// `subscribe` sent, no answer yet.
    Joining,
    /// The server answered `subscribed` (or, on a v1 or plain connection,
    /// the socket to this channel is open).
    Joined,
    /// The server refused the subscription, for this reason; not retried on
    /// reconnection (joining the channel again retries).
    Refused(String),
}

/// One joined channel.
#[derive(Debug, Clone)]
pub struct Channel {
    name: String,
    state: ChannelState,
    /// Its subscribers (this page included), when the server said.
    online: Option<u64>,
    /// The members known by name: this page, whoever the `members` answer
    /// after subscribing named (named clients only, at most
    /// [`MAX_MEMBERS_LISTED`](protocol::v2::MAX_MEMBERS_LISTED)), and
    /// whoever presence said joined since.
    members: BTreeMap<u64, String>,
    /// Messages from others that arrived while another channel was shown.
    unread: u32,
    /// Whether the server ever said `subscribed` (a later one is a rejoin).
    ever_joined: bool,
    history: VecDeque<Line>,
}

impl Channel {
    fn new(name: String) -> Self {
        Channel {
            name,
            state: ChannelState::Waiting,
            online: None,
            members: BTreeMap::new(),
            unread: 0,
            ever_joined: false,
            history: VecDeque::new(),
        }
    }

    /// The channel's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Its subscription state.
    pub fn state(&self) -> &ChannelState {
        &self.state
    }

    /// Its subscribers, this page included, when known.
    pub fn online(&self) -> Option<u64> {
        self.online
    }

    /// Messages from others not seen yet.
    pub fn unread(&self) -> u32 {
        self.unread
    }

    /// The lines kept, oldest first.
    pub fn history(&self) -> impl Iterator<Item = &Line> {
        self.history.iter()
    }

    /// Whether a subscription is in place or on its way.
    pub fn is_subscribed(&self) -> bool {
        matches!(self.state, ChannelState::Joining | ChannelState::Joined)
    }

    pub(crate) fn set_state(&mut self, state: ChannelState) {
        self.state = state;
    }

    /// The server said we are in: `online` subscribers, `me` among them.
    /// Returns whether this is a rejoin (after a reconnection).
    pub(crate) fn subscribed(&mut self, online: u64, me: Option<&Peer>) -> bool {
        let rejoin = self.ever_joined;
        self.ever_joined = true;
        self.state = ChannelState::Joined;
        self.online = Some(online);
        self.members.clear();
        if let Some(me) = me {
            self.members.insert(me.id, me.name.clone());
        }
        rejoin
    }

    /// The server listed who is here: `online` in all, `members` named
    /// (`me` is kept among them).
    pub(crate) fn listed(&mut self, online: u64, members: &[Peer], me: Option<&Peer>) {
        self.online = Some(online);
        self.members = members.iter().map(|p| (p.id, p.name.clone())).collect();
        if let Some(me) = me {
            self.members.insert(me.id, me.name.clone());
        }
    }

    pub(crate) fn set_online(&mut self, online: u64) {
        self.online = Some(online);
    }

    pub(crate) fn member_joined(&mut self, peer: &Peer) {
        self.members.insert(peer.id, peer.name.clone());
    }

    pub(crate) fn member_left(&mut self, id: u64) {
        self.members.remove(&id);
    }

    /// The connection is gone: nothing is known any more (and a refusal
    /// stays).
    pub(crate) fn disconnected(&mut self) {
        if self.is_subscribed() {
            self.state = ChannelState::Waiting;
        }
        self.online = None;
        self.members.clear();
    }

    /// Who is here, as shown: known names (`me` first, marked), then how
    /// many more are online unnamed. Empty when the count is unknown.
    pub fn members_text(&self, me: Option<u64>) -> String {
        let Some(online) = self.online else {
            return String::new();
        };
        let mine = me.and_then(|id| self.members.get(&id).map(|n| format!("{n} (you)")));
        let others = self
            .members
            .iter()
            .filter(|(id, _)| Some(**id) != me)
            .map(|(_, n)| n.clone());
        let names: Vec<String> = mine.into_iter().chain(others).collect();
        let unnamed = online.saturating_sub(names.len() as u64);
        match (names.is_empty(), unnamed) {
            (true, _) => String::new(),
            (false, 0) => names.join(", "),
            (false, n) => format!("{} and {n} more", names.join(", ")),
        }
    }

    fn push(&mut self, line: Line) {
        if self.history.len() == HISTORY {
            self.history.pop_front();
        }
        self.history.push_back(line);
    }
}

/// A message from a channel that is not shown, for the unread list.
#[derive(Debug, Clone, PartialEq)]
pub struct Unread {
    /// Where it was published.
    pub channel: String,
    /// The message.
    pub line: Line,
}

impl Unread {
    /// The `[#channel]` tag shown before it.
    pub fn tag(&self) -> String {
        format!("[#{}]", self.channel)
    }
}

/// One entry of the channel list, as the page renders it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChannelItem {
    /// The channel's name.
    pub name: String,
    /// Whether it is the one shown.
    pub current: bool,
    /// Messages from others not seen yet.
    pub unread: u32,
    /// Its subscription state.
    pub state: ChannelState,
}

/// The joined channels, the current one, the unread list.
#[derive(Debug, Clone)]
pub struct Channels {
    /// Never empty.
    list: Vec<Channel>,
    /// Index of the channel shown, always within `list`.
    current: usize,
    unread: VecDeque<Unread>,
}

impl Channels {
    /// The page starts in `first` (a valid name).
    pub fn new(first: &str) -> Self {
        Channels {
            list: vec![Channel::new(first.to_owned())],
            current: 0,
            unread: VecDeque::new(),
        }
    }

    /// The channel shown.
    pub fn current(&self) -> &Channel {
        &self.list[self.current]
    }

    /// Channel `name`, if joined.
    pub fn get(&self, name: &str) -> Option<&Channel> {
        self.list.iter().find(|c| c.name == name)
    }

    pub(crate) fn get_mut(&mut self, name: &str) -> Option<&mut Channel> {
        self.list.iter_mut().find(|c| c.name == name)
    }

    /// The joined channels, in join order.
    pub fn iter(&self) -> impl Iterator<Item = &Channel> {
        self.list.iter()
    }

    pub(crate) fn iter_mut(&mut self) -> impl Iterator<Item = &mut Channel> {
        self.list.iter_mut()
    }

    /// Adds channel `name` (a valid name) at the end, if it is not there.
    /// Returns whether it was added.
    pub fn add(&mut self, name: &str) -> bool {
        if self.get(name).is_some() {
            return false;
        }
        self.list.push(Channel::new(name.to_owned()));
        true
    }

    /// Shows channel `name`: its unread messages count as seen. Returns
    /// whether it is joined (nothing changes otherwise).
    pub fn switch(&mut self, name: &str) -> bool {
        let Some(i) = self.list.iter().position(|c| c.name == name) else {
            return false;
        };
        self.current = i;
        self.list[i].unread = 0;
        self.unread.retain(|u| u.channel != name);
        true
    }

    /// Replaces the whole list with channel `name` alone (the page's start
    /// channel, changed before anything happened in it).
    pub fn restart(&mut self, name: &str) {
        *self = Channels::new(name);
    }

    /// Forgets channel `name`, unless it is the last one. If it was shown,
    /// the one before it (or after, for the first) is shown instead.
    /// Returns the channel removed.
    pub fn remove(&mut self, name: &str) -> Option<Channel> {
        if self.list.len() < 2 {
            return None;
        }
        let i = self.list.iter().position(|c| c.name == name)?;
        let shown = self.list[self.current].name.clone();
        let removed = self.list.remove(i);
        self.unread.retain(|u| u.channel != name);
        if i == self.current {
            let next = self.list[i.saturating_sub(1)].name.clone();
            self.switch(&next);
        } else {
            self.current = self
                .list
                .iter()
                .position(|c| c.name == shown)
                .unwrap_or_default();
        }
        Some(removed)
    }

    /// Keeps `line` in channel `name`'s history. A message from someone
    /// else in a channel not shown counts as unread and joins the unread
    /// list. Returns whether the line belongs to the channel shown (the
    /// page then shows it at once); a channel not joined keeps nothing.
    pub fn record(&mut self, name: &str, line: Line) -> bool {
        let Some(i) = self.list.iter().position(|c| c.name == name) else {
            return false;
        };
        let shown = i == self.current;
        if !shown && line.kind == LineKind::Theirs {
            self.list[i].unread = self.list[i].unread.saturating_add(1);
            if self.unread.len() == UNREAD_LIST {
                self.unread.pop_front();
            }
            self.unread.push_back(Unread {
                channel: name.to_owned(),
                line: line.clone(),
            });
        }
        self.list[i].push(line);
        shown
    }

    /// Keeps `line` (about the connection, not one channel) in every
    /// channel's history, so that whichever is shown tells it.
    pub fn record_everywhere(&mut self, line: &Line) {
        for channel in &mut self.list {
            channel.push(line.clone());
        }
    }

    /// The unread list: the latest [`UNREAD_LIST`] messages from channels
    /// not shown, oldest first.
    pub fn unread(&self) -> impl Iterator<Item = &Unread> {
        self.unread.iter()
    }

    /// The channel list as the page renders it.
    pub fn items(&self) -> Vec<ChannelItem> {
        self.list
            .iter()
            .enumerate()
            .map(|(i, c)| ChannelItem {
                name: c.name.clone(),
                current: i == self.current,
                unread: c.unread,
                state: c.state.clone(),
            })
            .collect()
    }
}

#[cfg(test)]
#[path = "channels_tests.rs"]
mod tests;
