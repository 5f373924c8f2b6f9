//! Tests of `model` (kept apart so the module reads as its code).

use super::*;

/// The jitter seed of the models under test.
const SEED: u64 = 42;

#[test]
fn countdown_rounds_up() {
    assert_eq!(seconds_left(0.0, 3_000.0), 3);
    assert_eq!(seconds_left(0.0, 2_001.0), 3);
    assert_eq!(seconds_left(0.0, 2_000.0), 2);
    assert_eq!(seconds_left(0.0, 10.0), 1);
    assert_eq!(seconds_left(5_000.0, 10.0), 1);
    assert_eq!(seconds_left(0.0, f64::NAN), 1);
}

#[test]
fn the_page_token_goes_into_the_websocket_url() {
    let mut m = Model::new("http:", "h:1", SEED);
    m.name = Some("al".into());
    assert_eq!(m.url(), "ws://h:1/ws?name=al");
    m.set_token(Some("a b".into()));
    assert_eq!(m.url(), "ws://h:1/ws?name=al&token=a%20b");
    m.set_token(Some(String::new()));
    assert_eq!(m.url(), "ws://h:1/ws?name=al");
}

const T: f64 = 1_700_000_000_000.0;

fn joined(name: &str) -> Model {
    let mut m = Model::new("http:", "localhost:8080", SEED);
    m.join(name).unwrap();
    assert!(m.opened(T, v1::SUBPROTOCOL).is_empty());
    m
}

fn welcome(m: &mut Model, id: u64, name: &str, online: u64) -> Vec<Line> {
    m.text_frame(
        T,
        &ServerEvent::Welcome {
            id,
            name: name.into(),
            online,
            time: T as u64,
            position: None,
            reason: None,
            recovered: None,
        }
        .encode(),
    )
}

fn texts(lines: &[Line]) -> Vec<&str> {
    lines.iter().map(|l| l.text.as_str()).collect()
}

#[test]
fn join_checks_the_name_and_builds_the_url() {
    let mut m = Model::new("https:", "example.org", SEED);
    assert_eq!(m.status_text(T), "not connected", "nothing tried yet");
    assert_eq!(m.join("   "), Err(NameError::Empty));
    assert_eq!(m.join("a\u{200B}b"), Err(NameError::NotPrintable));
    assert_eq!(m.join(&"x".repeat(33)), Err(NameError::TooLong));
    assert_eq!(m.status(), Status::Idle);
    assert_eq!(
        m.join("  Zoë K "),
        Ok("wss://example.org/ws?name=Zo%C3%AB%20K".into())
    );
    assert_eq!(m.status_text(T), "connecting…");
}

#[test]
fn welcome_messages_and_presence_become_lines() {
    let mut m = joined("alice");
    assert_eq!(m.status_text(T), "connected");
    assert_eq!(m.online(), None);
    let lines = welcome(&mut m, 7, "alice", 3);
    assert_eq!(texts(&lines), ["you joined as alice (3 online)"]);
    assert_eq!(m.online(), Some(3));

    let msg = ServerEvent::Message {
        from: 8,
        name: "bob".into(),
        time: T as u64 + 5,
        body: Body::Text("<script>alert(1)</script>".into()),
        epoch: None,
        offset: None,
    };
    let lines = m.text_frame(T, &msg.encode());
    assert_eq!(
        lines,
        [Line {
            kind: LineKind::Theirs,
            time_ms: T + 5.0,
            who: Some("bob".into()),
            text: "<script>alert(1)</script>".into(),
            binary: false,
        }]
    );

    let bin = ServerEvent::Message {
        from: 8,
        name: "bob".into(),
        time: T as u64,
        body: Body::Data(vec![1, 2, 3]),
        epoch: None,
        offset: None,
    };
    let lines = m.text_frame(T, &bin.encode());
    assert_eq!(texts(&lines), ["<binary 3 bytes>"]);
    assert!(lines[0].binary);

    // Our own join is not news; others' are.
    let presence = ServerEvent::Presence {
        online: 4,
        joined: vec![
            Peer {
                id: 7,
                name: "alice".into(),
            },
            Peer {
                id: 9,
                name: "carol".into(),
            },
        ],
        left: vec![Peer {
            id: 8,
            name: "bob".into(),
        }],
        joined_count: None,
        left_count: None,
    };
    let lines = m.text_frame(T, &presence.encode());
    assert_eq!(texts(&lines), ["carol joined", "bob left"]);
    assert_eq!(m.online(), Some(4));

    let many = ServerEvent::Presence {
        online: 200,
        joined: vec![],
        left: vec![],
        joined_count: Some(150),
        left_count: Some(3),
    };
    assert_eq!(
        texts(&m.text_frame(T, &many.encode())),
        ["150 joined, 3 left"]
    );
    assert_eq!(m.online(), Some(200));

    // Future event types are skipped; garbage is reported, not fatal.
    assert!(m.text_frame(T, r#"{"type":"typing"}"#).is_empty());
    let lines = m.text_frame(T, "nope");
    assert_eq!(lines.len(), 1);
    assert_eq!(lines[0].kind, LineKind::Problem);
    assert_eq!(m.status(), Status::Connected);
}

#[test]
fn a_taken_name_is_explained() {
    let mut m = joined("alice");
    let lines = welcome(&mut m, 2, "alice-2", 2);
    assert_eq!(
        texts(&lines),
        ["you joined as alice-2 (alice is taken; 2 online)"]
    );
    assert_eq!(m.display_name(), "alice-2");
    let mine = m.sent(T, "hi");
    assert_eq!(mine.kind, LineKind::Mine);
    assert_eq!(mine.who.as_deref(), Some("alice-2"));
}

#[test]
fn sending_needs_an_open_connection_and_a_sane_size() {
    let mut m = Model::new("http:", "h", SEED);
    assert_eq!(m.publish("hi"), Err(SendError::NotConnected));
    m.join("a").unwrap();
    assert_eq!(m.publish("hi"), Err(SendError::NotConnected));
    m.opened(T, v1::SUBPROTOCOL);
    assert_eq!(m.publish("hi").as_deref(), Ok("hi"), "v1 sends the text");
    assert_eq!(m.publish("  \n "), Err(SendError::Empty));
    let big = "x".repeat(protocol::DEFAULT_MAX_MESSAGE_SIZE + 1);
    assert_eq!(m.publish(&big), Err(SendError::TooLong(big.len())));
    assert!(m.publish(&big[1..]).is_ok(), "exactly the limit is fine");
    assert!(m.take_outgoing().is_empty(), "v1 has no commands");
}

#[test]
fn drops_are_retried_with_growing_delays() {
    let mut m = joined("alice");
    welcome(&mut m, 1, "alice", 1);
    let notice = ServerEvent::Notice {
        code: 1001,
        text: "the server is shutting down".into(),
    };
    assert_eq!(
        texts(&m.text_frame(T, &notice.encode())),
        ["server: the server is shutting down"]
    );
    // The same schedule as the model's: same bounds, same seed. Each
    // delay the model waits is the twin's next one, so a reset that
    // should (or should not) happen shows as a different delay.
    let mut twin = Backoff::with_seed(BACKOFF_FIRST, BACKOFF_CAP, SEED);
    let next = |attempt: u32, twin: &mut Backoff| {
        let d = twin.next_delay();
        assert_eq!(twin.attempt(), attempt);
        assert!(d <= twin.ceiling(attempt), "{d:?} over the ceiling");
        d.as_secs_f64() * 1_000.0
    };
    let waiting = |t: f64, delay: f64| Status::Waiting {
        retry_at: t + delay,
    };

    // Up for a minute: the schedule starts over, and a 1001 close (the
    // server is restarting) makes it the flat one-second window.
    let t = T + 60_000.0;
    twin.expect_return();
    let lines = m.closed(t, 1001, "server shutting down");
    assert_eq!(
        texts(&lines),
        ["connection lost: closed with code 1001; reconnecting…"]
    );
    let d = next(1, &mut twin);
    assert!(d <= 1_000.0);
    assert_eq!(m.status(), waiting(t, d));
    assert_eq!(m.status_text(t), "reconnecting in 1 s…");
    assert_eq!(m.online(), None);
    assert_eq!(m.retry_due(t + d - 1.0), None);
    assert_eq!(
        m.retry_due(t + d).as_deref(),
        Some("ws://localhost:8080/ws?name=alice")
    );
    assert_eq!(m.status_text(t), "reconnecting…");
    assert_eq!(m.retry_due(t + d + 100.0), None, "already connecting");

    // The server is still down: quietly wait, within the window.
    let t = t + d + 100.0;
    assert!(m.closed(t, 1006, "").is_empty());
    let d = next(2, &mut twin);
    assert!(d <= 1_000.0);
    assert_eq!(m.status(), waiting(t, d));
    assert_eq!(
        m.status_text(t),
        format!("reconnecting in {} s…", seconds_left(t, t + d))
    );
    m.retry_due(t + d).unwrap();
    let t = t + d + 100.0;
    assert!(m.closed(t, 1006, "").is_empty());
    let d = next(3, &mut twin);
    assert_eq!(m.status(), waiting(t, d));

    // "Retry now", and this time it works.
    m.retry_now().unwrap();
    m.opened(t + 10.0, v1::SUBPROTOCOL);
    let lines = welcome(&mut m, 2, "alice", 2);
    assert_eq!(texts(&lines), ["reconnected as alice (2 online)"]);
    assert_eq!(m.status_text(t), "connected");

    // A connection that drops at once does not reset the schedule.
    let lines = m.closed(t + 20.0, 1013, "slow consumer");
    assert_eq!(
        texts(&lines),
        ["connection lost: slow consumer (1013); reconnecting…"]
    );
    assert_eq!(m.status(), waiting(t + 20.0, next(4, &mut twin)));

    // One that stayed up does: back to the first ceiling.
    m.retry_now().unwrap();
    m.opened(t + 30.0, v1::SUBPROTOCOL);
    welcome(&mut m, 3, "alice", 2);
    let t = t + 30.0 + STABLE_MS;
    m.closed(t, 1006, "");
    twin.reset();
    assert_eq!(m.status(), waiting(t, next(1, &mut twin)));
}

#[test]
fn a_first_connection_that_fails_says_so_once() {
    let mut m = Model::new("http:", "h", SEED);
    m.join("a").unwrap();
    assert_eq!(
        texts(&m.closed(T, 1006, "")),
        ["cannot reach the server; retrying…"]
    );
    m.retry_now().unwrap();
    assert!(m.closed(T, 1006, "").is_empty());
    // The second attempt waits up to two seconds.
    let text = m.status_text(T);
    assert!(
        ["reconnecting in 1 s…", "reconnecting in 2 s…"].contains(&text.as_str()),
        "{text}"
    );
}

#[test]
fn leaving_stops_everything() {
    let mut m = joined("alice");
    welcome(&mut m, 1, "alice", 1);
    assert_eq!(
        texts(&m.leave(T).into_iter().collect::<Vec<_>>()),
        ["you left"]
    );
    assert_eq!(m.status_text(T), "disconnected");
    assert_eq!(m.online(), None);
    // The close event of the socket we closed changes nothing.
    assert!(m.closed(T, 1000, "").is_empty());
    assert_eq!(m.status(), Status::Disconnected);
    assert_eq!(m.retry_due(T + 1e9), None);
    assert_eq!(m.leave(T), None);
    // Frames from a stale socket are ignored.
    assert!(m
        .text_frame(T, r#"{"type":"notice","code":1,"text":"x"}"#)
        .is_empty());
    // Joining again under another name starts afresh.
    assert_eq!(
        m.join("bob").as_deref(),
        Ok("ws://localhost:8080/ws?name=bob")
    );
    m.opened(T, v1::SUBPROTOCOL);
    assert_eq!(
        texts(&welcome(&mut m, 5, "bob", 2)),
        ["you joined as bob (2 online)"]
    );
}

#[test]
fn plain_servers_work_in_raw_mode() {
    let mut m = Model::new("http:", "h", SEED);
    m.join("a").unwrap();
    let lines = m.opened(T, "");
    assert_eq!(
        texts(&lines),
        ["connected to a plain broadcast server: no names or presence"]
    );
    let lines = m.text_frame(T, r#"{"type":"welcome"}"#);
    assert_eq!(lines[0].who.as_deref(), Some(UNNAMED));
    assert_eq!(lines[0].text, r#"{"type":"welcome"}"#);
    let lines = m.binary_frame(T, 1);
    assert_eq!(texts(&lines), ["<binary 1 byte>"]);
    assert_eq!(m.online(), None);
}

// ------------------------------------------------------------ broadcast.v2

fn ev(m: &mut Model, event: Event) -> Vec<Line> {
    m.text_frame(T, &event.encode())
}

fn subscribe_cmd(channel: &str, id: u64) -> String {
    Command::Subscribe {
        channel: channel.into(),
        id: Some(Id::Num(id)),
        since: None,
        rewind: Some(REWIND_ON_OPEN),
    }
    .encode()
}

fn members_cmd(channel: &str, id: u64) -> String {
    Command::Members {
        channel: channel.into(),
        id: Some(Id::Num(id)),
    }
    .encode()
}

fn v2_message(channel: &str, name: &str, text: &str) -> Event {
    Event::Message {
        channel: channel.into(),
        from: 8,
        name: name.into(),
        time: T as u64,
        body: Body::Text(text.into()),
        epoch: None,
        offset: None,
    }
}

/// A page started at `/#red`, joined as alice on a v2 server, in `red`
/// with `online` subscribers.
fn v2_in_red(online: u64) -> Model {
    let mut m = Model::new("http:", "h", SEED);
    m.open_channel("red").unwrap();
    assert_eq!(m.join("alice").as_deref(), Ok("ws://h/ws/red?name=alice"));
    assert!(m.opened(T, v2::SUBPROTOCOL).is_empty());
    assert_eq!(m.take_outgoing(), [subscribe_cmd("red", 1)]);
    assert!(m.take_outgoing().is_empty(), "taken once");
    assert_eq!(m.channels().current().state(), &ChannelState::Joining);
    let welcome = Event::Welcome {
        client: 7,
        name: "alice".into(),
        time: T as u64,
    };
    assert_eq!(texts(&ev(&mut m, welcome)), ["connected as alice"]);
    let subscribed = Event::Subscribed {
        id: Some(Id::Num(1)),
        channel: "red".into(),
        online,
        offset: None,
        epoch: None,
        recovered: None,
        reason: None,
    };
    assert_eq!(
        texts(&ev(&mut m, subscribed)),
        [format!("you joined #red ({online} online)")]
    );
    // Then it asks who was there already.
    assert_eq!(m.take_outgoing(), [members_cmd("red", 2)]);
    m
}

fn history(m: &Model, channel: &str) -> Vec<String> {
    m.channels()
        .get(channel)
        .unwrap()
        .history()
        .map(|l| l.text.clone())
        .collect()
}

#[test]
fn v2_carries_every_channel_over_one_connection() {
    let mut m = v2_in_red(2);
    assert_eq!(m.mode(), Some(Mode::V2));
    assert!(!m.single_channel());
    assert_eq!(m.online(), Some(2));
    assert_eq!(m.members_text(), "alice (you) and 1 more");
    assert_eq!(m.channels().current().state(), &ChannelState::Joined);

    // Joining a second channel subscribes at once and shows it.
    assert_eq!(m.open_channel(" #blue "), Ok(()));
    assert_eq!(m.current_channel(), "blue");
    assert_eq!(m.take_outgoing(), [subscribe_cmd("blue", 3)]);
    assert_eq!(m.online(), None, "not known before the answer");
    let subscribed = Event::Subscribed {
        id: Some(Id::Num(3)),
        channel: "blue".into(),
        online: 1,
        offset: None,
        epoch: None,
        recovered: None,
        reason: None,
    };
    assert_eq!(
        texts(&ev(&mut m, subscribed)),
        ["you joined #blue (1 online)"]
    );
    assert_eq!(m.take_outgoing(), [members_cmd("blue", 4)]);

    // A message in the channel not shown is kept and counted, not shown.
    assert!(ev(&mut m, v2_message("red", "bob", "in red")).is_empty());
    let lines = ev(&mut m, v2_message("blue", "carol", "in blue"));
    assert_eq!(texts(&lines), ["in blue"]);
    assert_eq!(lines[0].who.as_deref(), Some("carol"));
    let red = m.channels().get("red").unwrap();
    assert_eq!(red.unread(), 1);
    assert_eq!(m.channels().get("blue").unwrap().unread(), 0);
    let unread: Vec<_> = m
        .channels()
        .unread()
        .map(|u| {
            format!(
                "{} {}: {}",
                u.tag(),
                u.line.who.as_deref().unwrap(),
                u.line.text
            )
        })
        .collect();
    assert_eq!(unread, ["[#red] bob: in red"]);

    // Showing it reads it; its history has everything.
    assert!(m.show_channel("red"));
    assert_eq!(m.channels().get("red").unwrap().unread(), 0);
    assert_eq!(m.channels().unread().count(), 0);
    assert_eq!(
        history(&m, "red"),
        ["connected as alice", "you joined #red (2 online)", "in red"]
    );
    assert!(!m.show_channel("green"), "not joined");

    // Sending goes to the channel shown, with an id; the line is kept there.
    let frame = m.publish("hi red").unwrap();
    assert_eq!(
        Command::decode(&frame),
        Ok(Command::Publish {
            channel: "red".into(),
            id: Some(Id::Num(5)),
            body: Body::Text("hi red".into()),
        })
    );
    let mine = m.sent(T, "hi red");
    assert_eq!(
        (mine.kind, mine.who.as_deref()),
        (LineKind::Mine, Some("alice"))
    );
    assert_eq!(history(&m, "red").last().unwrap(), "hi red");
    assert!(ev(
        &mut m,
        Event::Published {
            id: Some(Id::Num(5)),
            channel: "red".into()
        }
    )
    .is_empty());
    // A refusal names its channel, wherever it is shown.
    m.publish("again").unwrap();
    m.show_channel("blue");
    let refused = Event::Error {
        id: Some(Id::Num(6)),
        code: ErrorCode::RateLimited,
        text: "too fast".into(),
    };
    assert!(ev(&mut m, refused).is_empty());
    assert_eq!(
        history(&m, "red").last().unwrap(),
        "not sent to #red: too fast"
    );
    let anonymous = Event::Error {
        id: None,
        code: ErrorCode::BadRequest,
        text: "what?".into(),
    };
    assert_eq!(texts(&ev(&mut m, anonymous)), ["refused: what?"]);

    // Presence per channel: counts, names, lines.
    let presence = Event::Presence {
        channel: "blue".into(),
        online: 3,
        joined: vec![
            Peer {
                id: 7,
                name: "alice".into(),
            },
            Peer {
                id: 9,
                name: "dave".into(),
            },
        ],
        left: vec![],
        joined_count: None,
        left_count: None,
    };
    assert_eq!(texts(&ev(&mut m, presence)), ["dave joined"]);
    assert_eq!(m.online(), Some(3));
    assert_eq!(m.members_text(), "alice (you), dave and 1 more");
    assert_eq!(m.channels().get("red").unwrap().online(), Some(2));

    // Leaving: an unsubscribe, the neighbour shown, later events dropped.
    assert!(m.leave_channel("blue"));
    assert_eq!(
        m.take_outgoing(),
        [Command::Unsubscribe {
            channel: "blue".into(),
            id: None
        }
        .encode()]
    );
    assert_eq!(m.current_channel(), "red");
    assert!(ev(&mut m, v2_message("blue", "dave", "late")).is_empty());
    assert!(m.channels().get("blue").is_none());
    assert_eq!(m.channels().unread().count(), 0);
    assert!(!m.leave_channel("red"), "the last channel stays");
    assert!(m.take_outgoing().is_empty());
    // Joining it again starts afresh.
    m.open_channel("blue").unwrap();
    assert_eq!(m.take_outgoing(), [subscribe_cmd("blue", 7)]);
    assert!(history(&m, "blue").is_empty());
}

#[test]
fn a_reconnection_subscribes_every_channel_again() {
    let mut m = v2_in_red(1);
    m.open_channel("blue").unwrap();
    m.take_outgoing();
    let lines = m.closed(T + 60_000.0, 1006, "");
    assert_eq!(
        texts(&lines),
        ["connection lost: the connection broke; reconnecting…"]
    );
    assert_eq!(
        history(&m, "red").last(),
        lines.last().map(|l| &l.text),
        "told everywhere"
    );
    for c in m.channels().iter() {
        assert_eq!(c.state(), &ChannelState::Waiting);
        assert_eq!(c.online(), None);
    }
    assert_eq!(m.members_text(), "");
    // A channel joined while disconnected waits for the connection.
    m.open_channel("green").unwrap();
    assert!(m.take_outgoing().is_empty());
    assert_eq!(m.publish("x"), Err(SendError::NotConnected));

    // The URL names the channel shown (for a server that answers v1).
    assert_eq!(m.retry_now().as_deref(), Some("ws://h/ws/green?name=alice"));
    m.opened(T + 61_000.0, v2::SUBPROTOCOL);
    assert_eq!(
        m.take_outgoing(),
        [
            subscribe_cmd("red", 4),
            subscribe_cmd("blue", 5),
            subscribe_cmd("green", 6)
        ]
    );
    let welcome = Event::Welcome {
        client: 11,
        name: "alice".into(),
        time: T as u64,
    };
    assert_eq!(texts(&ev(&mut m, welcome)), ["reconnected as alice"]);
    m.show_channel("red");
    let again = Event::Subscribed {
        id: Some(Id::Num(4)),
        channel: "red".into(),
        online: 2,
        offset: None,
        epoch: None,
        recovered: None,
        reason: None,
    };
    assert_eq!(texts(&ev(&mut m, again)), ["rejoined #red (2 online)"]);
    assert_eq!(m.members_text(), "alice (you) and 1 more");
    // Answers to the old connection's commands mean nothing now.
    let stale = Event::Error {
        id: Some(Id::Num(2)),
        code: ErrorCode::Forbidden,
        text: "no".into(),
    };
    assert_eq!(texts(&ev(&mut m, stale)), ["refused: no"]);
    assert_eq!(
        m.channels().get("blue").unwrap().state(),
        &ChannelState::Joining
    );
}

#[test]
fn a_refused_channel_says_why_and_is_not_retried() {
    let mut m = v2_in_red(1);
    m.open_channel("secret").unwrap();
    m.take_outgoing();
    let forbidden = Event::Error {
        id: Some(Id::Num(3)),
        code: ErrorCode::Forbidden,
        text: "your token does not allow this channel".into(),
    };
    assert_eq!(
        texts(&ev(&mut m, forbidden)),
        ["cannot join #secret: your token does not allow this channel"]
    );
    assert_eq!(
        m.channels().current().state(),
        &ChannelState::Refused("your token does not allow this channel".into())
    );
    assert_eq!(m.publish("x"), Err(SendError::Refused("secret".into())));
    assert_eq!(
        SendError::Refused("secret".into()).to_string(),
        "you are not in #secret"
    );

    m.closed(T, 1006, "");
    m.retry_now().unwrap();
    m.opened(T, v2::SUBPROTOCOL);
    assert_eq!(m.take_outgoing(), [subscribe_cmd("red", 4)], "not secret");
    // Joining it again asks again (say the token changed).
    m.show_channel("red");
    m.open_channel("secret").unwrap();
    assert_eq!(m.take_outgoing(), [subscribe_cmd("secret", 5)]);
    assert_eq!(m.channels().current().state(), &ChannelState::Joining);
    ev(
        &mut m,
        Event::Error {
            id: Some(Id::Num(5)),
            code: ErrorCode::Forbidden,
            text: "still no".into(),
        },
    );
    // Leaving it sends nothing: it was never subscribed.
    assert!(m.leave_channel("secret"));
    assert!(m.take_outgoing().is_empty());

    // "Already subscribed" is as good as subscribed.
    m.open_channel("blue").unwrap();
    ev(
        &mut m,
        Event::Error {
            id: Some(Id::Num(6)),
            code: ErrorCode::AlreadySubscribed,
            text: "already".into(),
        },
    );
    assert_eq!(m.channels().current().state(), &ChannelState::Joined);
}

#[test]
fn answers_for_a_channel_left_are_dropped() {
    let mut m = v2_in_red(1);
    m.open_channel("blue").unwrap();
    assert!(m.leave_channel("blue"));
    m.open_channel("blue").unwrap();
    assert_eq!(
        m.take_outgoing(),
        [
            subscribe_cmd("blue", 3),
            Command::Unsubscribe {
                channel: "blue".into(),
                id: None
            }
            .encode(),
            subscribe_cmd("blue", 4),
        ]
    );
    // The server answers all three in order; only the last counts.
    let old = Event::Subscribed {
        id: Some(Id::Num(3)),
        channel: "blue".into(),
        online: 1,
        offset: None,
        epoch: None,
        recovered: None,
        reason: None,
    };
    assert!(ev(&mut m, old).is_empty());
    assert_eq!(m.channels().current().state(), &ChannelState::Joining);
    ev(
        &mut m,
        Event::Unsubscribed {
            id: None,
            channel: "blue".into(),
            online: 0,
        },
    );
    let new = Event::Subscribed {
        id: Some(Id::Num(4)),
        channel: "blue".into(),
        online: 1,
        offset: None,
        epoch: None,
        recovered: None,
        reason: None,
    };
    assert_eq!(texts(&ev(&mut m, new)), ["you joined #blue (1 online)"]);
    assert_eq!(m.channels().current().state(), &ChannelState::Joined);
}

#[test]
fn channel_names_are_checked_in_the_page() {
    let mut m = v2_in_red(1);
    assert_eq!(
        m.open_channel("a b"),
        Err(OpenError::Name(ChannelError::BadByte { ch: ' ', at: 1 }))
    );
    assert_eq!(
        m.open_channel(""),
        Err(OpenError::Name(ChannelError::Empty))
    );
    let long = "x".repeat(channel::MAX_LEN + 1);
    assert_eq!(
        m.open_channel(&long),
        Err(OpenError::Name(ChannelError::TooLong { len: long.len() }))
    );
    assert_eq!(m.channels().iter().count(), 1);
    assert!(m.take_outgoing().is_empty());
    // The one already joined is only shown.
    m.open_channel("blue").unwrap();
    m.take_outgoing();
    m.open_channel("#red").unwrap();
    assert_eq!(m.current_channel(), "red");
    assert!(m.take_outgoing().is_empty());
}

#[test]
fn a_v1_server_gets_the_single_channel_of_the_url() {
    let mut m = Model::new("http:", "h", SEED);
    m.open_channel("red").unwrap();
    m.open_channel("blue").unwrap();
    assert_eq!(
        m.channels().iter().map(|c| c.name()).collect::<Vec<_>>(),
        ["blue"],
        "before the first join the start channel is replaced"
    );
    assert_eq!(m.join("alice").as_deref(), Ok("ws://h/ws/blue?name=alice"));
    assert!(m.opened(T, v1::SUBPROTOCOL).is_empty());
    assert!(m.take_outgoing().is_empty());
    assert!(m.single_channel());
    assert_eq!(
        texts(&welcome(&mut m, 3, "alice", 2)),
        ["you joined as alice (2 online)"]
    );
    assert_eq!(m.online(), Some(2));
    assert_eq!(m.members_text(), "alice (you) and 1 more");
    assert_eq!(m.open_channel("green"), Err(OpenError::OneChannelOnly));
    assert_eq!(
        OpenError::OneChannelOnly.to_string(),
        "this server speaks broadcast.v1, one channel per connection"
    );
    assert!(!m.leave_channel("blue"));
    assert_eq!(m.publish("hi").as_deref(), Ok("hi"));
    let msg = ServerEvent::Message {
        from: 8,
        name: "bob".into(),
        time: T as u64,
        body: Body::Text("hello blue".into()),
        epoch: None,
        offset: None,
    };
    assert_eq!(texts(&m.text_frame(T, &msg.encode())), ["hello blue"]);
    assert_eq!(history(&m, "blue").last().unwrap(), "hello blue");
}

#[test]
fn the_url_names_the_channel_shown_when_connecting() {
    let mut m = Model::new("https:", "h", SEED);
    m.open_channel("?channel=x").unwrap_err();
    assert_eq!(m.join("al").as_deref(), Ok("wss://h/ws?name=al"));
    assert_eq!(m.status_text(T), "connecting…");
    m.open_channel("team/chat").unwrap();
    m.closed(T, 1006, "");
    assert_eq!(
        m.retry_now().as_deref(),
        Some("wss://h/ws/team/chat?name=al")
    );
}

#[test]
fn the_members_answer_names_who_was_there_before() {
    let mut m = v2_in_red(3);
    assert_eq!(m.members_text(), "alice (you) and 2 more");
    let peer = |id, name: &str| Peer {
        id,
        name: name.into(),
    };
    // bob and alice named, one plain client only counted; no line shown.
    let answer = Event::Members {
        id: Some(Id::Num(2)),
        channel: "red".into(),
        online: 3,
        members: vec![peer(3, "bob"), peer(7, "alice")],
        truncated: false,
    };
    assert!(ev(&mut m, answer).is_empty());
    assert_eq!(m.members_text(), "alice (you), bob and 1 more");
    // Presence goes on from there.
    let left = Event::Presence {
        channel: "red".into(),
        online: 2,
        joined: vec![],
        left: vec![peer(3, "bob")],
        joined_count: None,
        left_count: None,
    };
    assert_eq!(texts(&ev(&mut m, left)), ["bob left"]);
    assert_eq!(m.members_text(), "alice (you) and 1 more");

    // An answer for a channel not joined (left, or still joining) changes
    // nothing; a refused one says so in its channel.
    m.open_channel("blue").unwrap();
    let early = Event::Members {
        id: None,
        channel: "blue".into(),
        online: 5,
        members: vec![peer(4, "cy")],
        truncated: true,
    };
    assert!(ev(&mut m, early).is_empty());
    assert_eq!(m.online(), None);
    let subscribed = Event::Subscribed {
        id: Some(Id::Num(3)),
        channel: "blue".into(),
        online: 1,
        offset: None,
        epoch: None,
        recovered: None,
        reason: None,
    };
    ev(&mut m, subscribed);
    assert_eq!(
        m.take_outgoing(),
        [subscribe_cmd("blue", 3), members_cmd("blue", 4)]
    );
    let refused = Event::Error {
        id: Some(Id::Num(4)),
        code: ErrorCode::Forbidden,
        text: "no".into(),
    };
    assert_eq!(texts(&ev(&mut m, refused)), ["cannot list #blue: no"]);
    assert_eq!(m.members_text(), "alice (you)");
}

fn positioned(from: u64, text: &str, offset: u64) -> Event {
    Event::Message {
        channel: "red".into(),
        from,
        name: if from == 7 { "alice" } else { "bob" }.into(),
        time: T as u64,
        body: Body::Text(text.into()),
        epoch: Some("e".into()),
        offset: Some(offset),
    }
}

fn subscribed_at(
    id: u64,
    offset: u64,
    recovered: Option<bool>,
    reason: Option<Unrecovered>,
) -> Event {
    Event::Subscribed {
        id: Some(Id::Num(id)),
        channel: "red".into(),
        online: 1,
        offset: Some(offset),
        epoch: Some("e".into()),
        recovered,
        reason,
    }
}

#[test]
fn a_page_opens_on_recent_history_and_resumes_after_a_drop() {
    let mut m = Model::new("http:", "h", SEED);
    m.open_channel("red").unwrap();
    m.join("alice").unwrap();
    m.opened(T, v2::SUBPROTOCOL);
    // A first join asks for the channel's recent history.
    assert_eq!(m.take_outgoing(), [subscribe_cmd("red", 1)]);
    let welcome = |client| Event::Welcome {
        client,
        name: "alice".into(),
        time: T as u64,
    };
    ev(&mut m, welcome(7));
    assert_eq!(
        texts(&ev(&mut m, subscribed_at(1, 2, Some(true), None))),
        ["you joined #red (1 online)"]
    );
    assert_eq!(texts(&ev(&mut m, positioned(8, "one", 1))), ["one"]);
    assert_eq!(texts(&ev(&mut m, positioned(8, "two", 2))), ["two"]);
    assert_eq!(texts(&ev(&mut m, positioned(8, "three", 3))), ["three"]);

    // Dropped: the next connection resumes after offset 3.
    m.closed(T + 1_000.0, 1006, "");
    m.retry_now().unwrap();
    m.opened(T + 2_000.0, v2::SUBPROTOCOL);
    let resume = Command::Subscribe {
        channel: "red".into(),
        id: Some(Id::Num(3)),
        since: Some(Position {
            offset: 3,
            epoch: "e".into(),
        }),
        rewind: None,
    };
    assert_eq!(m.take_outgoing(), [resume.encode()]);
    ev(&mut m, welcome(9));
    assert_eq!(
        texts(&ev(&mut m, subscribed_at(3, 6, Some(true), None))),
        ["rejoined #red (1 online)"]
    );
    assert_eq!(texts(&ev(&mut m, positioned(8, "four", 4))), ["four"]);
    // Its own message of the last connection is not shown again.
    assert!(ev(&mut m, positioned(7, "mine", 5)).is_empty());
    assert_eq!(
        texts(&ev(&mut m, positioned(8, "six", 6))),
        ["six", "resumed: 2 missed messages delivered"]
    );
    assert_eq!(texts(&ev(&mut m, positioned(8, "seven", 7))), ["seven"]);

    // History gone: the page says so.
    m.closed(T + 3_000.0, 1006, "");
    m.retry_now().unwrap();
    m.opened(T + 4_000.0, v2::SUBPROTOCOL);
    m.take_outgoing();
    ev(&mut m, welcome(10));
    let lost = subscribed_at(5, 900, Some(false), Some(Unrecovered::Expired));
    assert_eq!(
        texts(&ev(&mut m, lost)),
        [
            "rejoined #red (1 online)",
            "could not resume #red: some messages may be missing (the server no longer had them all)"
        ]
    );
    // Left and joined again, a channel opens on its recent history again.
    m.open_channel("blue").unwrap();
    m.leave_channel("red");
    m.open_channel("red").unwrap();
    let outgoing = m.take_outgoing();
    assert!(
        outgoing.last().unwrap().contains(r#""rewind":50"#),
        "{outgoing:?}"
    );
}
