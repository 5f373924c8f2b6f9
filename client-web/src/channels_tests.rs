//! Tests of `channels` (kept apart so the module reads as its code).

use super::*;

fn theirs(text: &str) -> Line {
    Line::message(
        LineKind::Theirs,
        0.0,
        "bob",
        &protocol::v1::Body::Text(text.into()),
    )
}

fn names(c: &Channels) -> Vec<&str> {
    c.iter().map(Channel::name).collect()
}

#[test]
fn messages_elsewhere_are_unread_until_shown() {
    let mut c = Channels::new("red");
    assert!(c.add("blue"));
    assert!(!c.add("blue"), "already there");
    assert_eq!(names(&c), ["red", "blue"]);
    assert_eq!(c.current().name(), "red");

    assert!(c.record("red", theirs("r1")));
    assert!(!c.record("blue", theirs("b1")));
    assert!(!c.record("blue", theirs("b2")));
    // Only messages from others count.
    assert!(!c.record("blue", Line::event(0.0, "carol joined")));
    assert!(!c.record("green", theirs("lost")), "not joined: dropped");
    assert_eq!(c.get("red").unwrap().unread(), 0);
    assert_eq!(c.get("blue").unwrap().unread(), 2);
    let unread: Vec<_> = c
        .unread()
        .map(|u| (u.tag(), u.line.text.as_str()))
        .collect();
    assert_eq!(
        unread,
        [("[#blue]".to_owned(), "b1"), ("[#blue]".to_owned(), "b2")]
    );
    assert_eq!(
        c.items(),
        [
            ChannelItem {
                name: "red".into(),
                current: true,
                unread: 0,
                state: ChannelState::Waiting
            },
            ChannelItem {
                name: "blue".into(),
                current: false,
                unread: 2,
                state: ChannelState::Waiting
            },
        ]
    );

    assert!(c.switch("blue"));
    assert_eq!(c.current().name(), "blue");
    assert_eq!(c.get("blue").unwrap().unread(), 0);
    assert_eq!(c.unread().count(), 0);
    let texts: Vec<_> = c.current().history().map(|l| l.text.as_str()).collect();
    assert_eq!(texts, ["b1", "b2", "carol joined"]);
    assert!(!c.switch("green"));
    assert_eq!(c.current().name(), "blue");
}

#[test]
fn history_and_unread_list_are_bounded() {
    let mut c = Channels::new("a");
    c.add("b");
    for i in 0..HISTORY + 10 {
        c.record("a", theirs(&i.to_string()));
        c.record("b", theirs(&i.to_string()));
    }
    let a: Vec<_> = c.get("a").unwrap().history().collect();
    assert_eq!(a.len(), HISTORY);
    assert_eq!(a[0].text, "10", "the oldest are dropped");
    assert_eq!(c.get("b").unwrap().history().count(), HISTORY);
    // The count keeps counting; the list keeps the latest.
    assert_eq!(c.get("b").unwrap().unread(), (HISTORY + 10) as u32);
    let listed: Vec<_> = c.unread().map(|u| u.line.text.clone()).collect();
    let want: Vec<_> = (HISTORY + 5..HISTORY + 10).map(|i| i.to_string()).collect();
    assert_eq!(listed, want);
}

#[test]
fn leaving_shows_a_neighbour_and_never_empties_the_list() {
    let mut c = Channels::new("a");
    c.add("b");
    c.add("c");
    c.record("c", theirs("x"));
    c.switch("b");
    // Leaving one not shown keeps the current one.
    assert_eq!(c.remove("c").map(|ch| ch.name), Some("c".into()));
    assert_eq!(c.current().name(), "b");
    assert_eq!(c.unread().count(), 0, "its unread messages go too");
    c.add("c");
    c.switch("c");
    assert!(c.remove("a").is_some());
    assert_eq!(c.current().name(), "c", "found again after the shift");
    // Leaving the one shown shows the one before it...
    assert!(c.remove("c").is_some());
    assert_eq!(c.current().name(), "b");
    assert!(c.remove("nope").is_none());
    // ...but never the last.
    assert!(c.remove("b").is_none());
    assert_eq!(names(&c), ["b"]);
    c.add("d");
    c.switch("b");
    assert!(c.remove("b").is_some());
    assert_eq!(
        c.current().name(),
        "d",
        "the first one's neighbour is after it"
    );
    c.restart("e");
    assert_eq!(names(&c), ["e"]);
}

#[test]
fn connection_lines_go_everywhere() {
    let mut c = Channels::new("a");
    c.add("b");
    c.record_everywhere(&Line::problem(0.0, "connection lost"));
    for ch in c.iter() {
        assert_eq!(ch.history().count(), 1);
        assert_eq!(ch.unread(), 0);
    }
}

#[test]
fn members_are_named_as_presence_tells() {
    let mut c = Channels::new("a");
    let ch = c.get_mut("a").unwrap();
    assert_eq!(ch.members_text(Some(7)), "");
    let me = Peer {
        id: 7,
        name: "zed".into(),
    };
    assert!(!ch.subscribed(3, Some(&me)));
    assert_eq!(ch.state(), &ChannelState::Joined);
    assert_eq!(ch.members_text(Some(7)), "zed (you) and 2 more");
    ch.member_joined(&Peer {
        id: 9,
        name: "amy".into(),
    });
    ch.set_online(4);
    assert_eq!(ch.members_text(Some(7)), "zed (you), amy and 2 more");
    ch.member_left(9);
    ch.set_online(2);
    assert_eq!(ch.members_text(Some(7)), "zed (you) and 1 more");
    ch.set_online(1);
    assert_eq!(ch.members_text(Some(7)), "zed (you)");
    // A members answer replaces the names, and keeps this page's.
    let bo = Peer {
        id: 2,
        name: "bo".into(),
    };
    ch.listed(4, &[bo], Some(&me));
    assert_eq!(ch.members_text(Some(7)), "zed (you), bo and 2 more");
    ch.listed(1, &[], Some(&me));
    assert_eq!(ch.members_text(Some(7)), "zed (you)");

    ch.disconnected();
    assert_eq!(ch.state(), &ChannelState::Waiting);
    assert_eq!(ch.online(), None);
    assert_eq!(ch.members_text(Some(7)), "");
    assert!(ch.subscribed(1, Some(&me)), "the second time is a rejoin");

    ch.set_state(ChannelState::Refused("no".into()));
    ch.disconnected();
    assert_eq!(ch.state(), &ChannelState::Refused("no".into()));
}
