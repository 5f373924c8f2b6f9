//! Which frames of a batch each member of a shard gets. Pure: no sockets,
//! no shard, so the rules are unit-tested here.
//!
//! A batch is what a shard takes from its inbox in one round. [`Plan`]
//! groups its frames by channel (keeping their order), so that delivery
//! walks only the members of the channels in the batch, and each member
//! only its channel's frames: the cost of a batch is proportional to the
//! members of the channels it touches, whatever the number of channels.

use std::time::Instant;

use bytes::Bytes;

use crate::channels::ChannelId;
use crate::fanout::{Broadcast, ConnId, Format};

/// A batch's frames, grouped by channel. Reused from batch to batch.
#[derive(Debug, Default)]
pub(crate) struct Plan {
    /// Indices into the batch, sorted by channel, in batch order within one.
    order: Vec<usize>,
}

/// What the rules need to know of a recipient.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Recipient {
    pub(crate) id: ConnId,
    pub(crate) format: Format,
    /// When it joined the channel being delivered.
    pub(crate) joined_at: Instant,
    /// Messages of the channel up to this offset were replayed to it when
    /// it joined (0: none): their live copies are skipped.
    pub(crate) after: u64,
    /// What it negotiated of permessage-deflate (`None`: not used).
    pub(crate) deflate: Option<crate::deflate::Negotiated>,
}

impl Plan {
    /// Groups `frames` by channel; then [`Plan::runs`] walks the groups.
    pub(crate) fn group(&mut self, frames: &[Broadcast]) {
        self.order.clear();
        self.order.extend(0..frames.len());
        // Stable: frames of one channel keep the order they were published in.
        self.order.sort_by_key(|&i| frames[i].channel);
    }

    /// Each channel of the batch with the indices of its frames, in order.
    pub(crate) fn runs<'a>(
        &'a self,
        frames: &'a [Broadcast],
    ) -> impl Iterator<Item = (ChannelId, &'a [usize])> + 'a {
        self.order
            .chunk_by(move |&a, &b| frames[a].channel == frames[b].channel)
            .map(move |run| (frames[run[0]].channel, run))
    }
}

/// The frames of `run` (indices into `frames`, all of one channel) that
/// `to` gets, into `out`: not its own messages (unless `echo`), only the
/// encoding of its format, no presence event older than its joining
/// (what it was told on joining already counts those changes), and no
/// message its replay already held (offset up to `to.after`).
pub(crate) fn pick<'a>(
    frames: &'a [Broadcast],
    run: &[usize],
    to: Recipient,
    echo: bool,
    out: &mut Vec<&'a Bytes>,
) {
    out.clear();
    out.extend(
        run.iter()
            .map(|&i| &frames[i])
            .filter(|f| echo || f.sender != to.id)
            .filter(|f| f.raw.is_some() || f.framed_at >= to.joined_at)
            .filter(|f| f.offset == 0 || f.offset > to.after)
            .filter_map(|f| f.frame_for(to.format, to.deflate)),
    );
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    fn frame(channel: ChannelId, sender: u64, tag: &'static str, at: Instant) -> Broadcast {
        Broadcast {
            raw: Some(Bytes::from_static(tag.as_bytes())),
            v1: Some(Bytes::from(format!("v1:{tag}"))),
            v2: Some(Bytes::from(format!("v2:{tag}"))),
            sender: ConnId(sender),
            channel,
            framed_at: at,
            cost: 0,
            offset: 0,
            deflated: None,
        }
    }

    fn presence(channel: ChannelId, tag: &'static str, at: Instant) -> Broadcast {
        Broadcast {
            raw: None,
            v1: Some(Bytes::from_static(tag.as_bytes())),
            v2: None,
            sender: ConnId(0),
            channel,
            framed_at: at,
            cost: 0,
            offset: 0,
            deflated: None,
        }
    }

    fn texts(out: &[&Bytes]) -> Vec<String> {
        out.iter()
            .map(|b| String::from_utf8_lossy(b).into_owned())
            .collect()
    }

    #[test]
    fn frames_are_grouped_by_channel_in_publish_order() {
        let t = Instant::now();
        let frames = [
            frame(2, 1, "a1", t),
            frame(1, 1, "b1", t),
            frame(2, 3, "a2", t),
            frame(1, 4, "b2", t),
            frame(2, 1, "a3", t),
        ];
        let mut plan = Plan::default();
        plan.group(&frames);
        let runs: Vec<(ChannelId, Vec<usize>)> =
            plan.runs(&frames).map(|(c, r)| (c, r.to_vec())).collect();
        assert_eq!(runs, [(1, vec![1, 3]), (2, vec![0, 2, 4])]);
        // An empty batch has no runs.
        plan.group(&[]);
        assert_eq!(plan.runs(&[]).count(), 0);
    }

    #[test]
    fn a_member_gets_its_format_and_not_its_own_messages() {
        let t = Instant::now();
        let frames = [
            frame(1, 7, "x", t),
            frame(1, 8, "y", t),
            frame(1, 7, "z", t),
        ];
        let run = [0, 1, 2];
        let mut out = Vec::new();
        let raw = Recipient {
            id: ConnId(7),
            format: Format::Raw,
            joined_at: t,
            after: 0,
            deflate: None,
        };
        pick(&frames, &run, raw, false, &mut out);
        assert_eq!(texts(&out), ["y"]);
        pick(&frames, &run, raw, true, &mut out);
        assert_eq!(texts(&out), ["x", "y", "z"]);
        let v1 = Recipient {
            id: ConnId(8),
            format: Format::V1,
            ..raw
        };
        pick(&frames, &run, v1, false, &mut out);
        assert_eq!(texts(&out), ["v1:x", "v1:z"]);
    }

    #[test]
    fn presence_from_before_joining_is_skipped_but_messages_are_not() {
        let t0 = Instant::now();
        let joined = t0 + Duration::from_millis(10);
        let frames = [
            presence(1, "old presence", t0),
            frame(1, 2, "old message", t0),
            presence(1, "new presence", joined + Duration::from_millis(1)),
        ];
        let mut out = Vec::new();
        let to = Recipient {
            id: ConnId(9),
            format: Format::V1,
            joined_at: joined,
            after: 0,
            deflate: None,
        };
        pick(&frames, &[0, 1, 2], to, false, &mut out);
        assert_eq!(texts(&out), ["v1:old message", "new presence"]);
        // Raw clients get no presence at all.
        let raw = Recipient {
            format: Format::Raw,
            ..to
        };
        pick(&frames, &[0, 1, 2], raw, false, &mut out);
        assert_eq!(texts(&out), ["old message"]);
    }

    #[test]
    fn messages_a_replay_held_are_not_delivered_again() {
        let t = Instant::now();
        let mut frames: Vec<Broadcast> = ["m3", "m4", "m5", "m6"]
            .iter()
            .zip(3..)
            .map(|(tag, offset)| Broadcast {
                offset,
                ..frame(1, 2, tag, t)
            })
            .collect();
        // A presence update has no offset: never skipped as replayed.
        frames.push(presence(1, "presence", t + Duration::from_millis(1)));
        let run = [0, 1, 2, 3, 4];
        let mut out = Vec::new();
        let to = Recipient {
            id: ConnId(9),
            format: Format::V1,
            joined_at: t,
            after: 4,
            deflate: None,
        };
        pick(&frames, &run, to, false, &mut out);
        assert_eq!(texts(&out), ["v1:m5", "v1:m6", "presence"]);
        // Without a replay everything goes.
        pick(&frames, &run, Recipient { after: 0, ..to }, false, &mut out);
        assert_eq!(
            texts(&out),
            ["v1:m3", "v1:m4", "v1:m5", "v1:m6", "presence"]
        );
        // A replay past the whole batch: only the presence update.
        pick(&frames, &run, Recipient { after: 6, ..to }, false, &mut out);
        assert_eq!(texts(&out), ["presence"]);
    }

    #[test]
    fn a_deflate_member_gets_the_compressed_frame_its_window_allows() {
        use crate::deflate::Negotiated;
        use crate::fanout::Deflated;
        let t = Instant::now();
        let long =
            protocol::frame::encode_server_frame(protocol::frame::OpCode::Text, &[b'a'; 600]);
        let mut deflated = Deflated::default();
        deflated.push(Format::Raw, 15, Bytes::from_static(b"z15"));
        deflated.push(Format::Raw, 9, Bytes::from_static(b"z9"));
        let frames = [Broadcast {
            raw: Some(Bytes::from(long)),
            deflated: Some(std::sync::Arc::new(deflated)),
            ..frame(1, 2, "x", t)
        }];
        let mut out = Vec::new();
        let plain = Recipient {
            id: ConnId(9),
            format: Format::Raw,
            joined_at: t,
            after: 0,
            deflate: None,
        };
        let with = |bits| Recipient {
            deflate: Some(Negotiated {
                server_window_bits: bits,
                client_window_bits: 15,
                client_no_context_takeover: false,
            }),
            ..plain
        };
        pick(&frames, &[0], plain, false, &mut out);
        assert_eq!(out[0].len(), 604, "plain frame");
        pick(&frames, &[0], with(15), false, &mut out);
        assert_eq!(texts(&out), ["z15"]);
        // 600 bytes do not fit a 512-byte window, but do a 1 KiB one.
        pick(&frames, &[0], with(9), false, &mut out);
        assert_eq!(texts(&out), ["z9"]);
        pick(&frames, &[0], with(10), false, &mut out);
        assert_eq!(texts(&out), ["z15"]);
        // A v1 member: no compressed v1 frame, so the plain one.
        pick(
            &frames,
            &[0],
            Recipient {
                format: Format::V1,
                ..with(15)
            },
            false,
            &mut out,
        );
        assert_eq!(texts(&out), ["v1:x"]);
    }
}
