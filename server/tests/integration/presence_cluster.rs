//! Cluster-wide presence (`docs/cluster.md`): three nodes on one real
//! `redis-server` agree on a channel's count and members; a node killed
//! with SIGKILL leaves every count, list and presence event within its
//! lease; a node started again brings its new members; a node that stops
//! cleanly is forgotten at once. All on default flags but `--redis` and
//! `--api-key`.

use std::collections::BTreeSet;
use std::time::Duration;

use serde_json::{json, Value};
use tokio::time::Instant;

use crate::util::*;
use crate::v2::{connect_v2, event, reply, send};

const KEY: &str = "presence-cluster-api-key-0123";

async fn node(redis: &Redis) -> Server {
    node_with(redis, &[]).await
}

async fn node_with(redis: &Redis, extra: &[&str]) -> Server {
    let url = redis.url();
    let mut args = vec!["--redis", &url, "--api-key", KEY];
    args.extend_from_slice(extra);
    let node = Server::start(&args).await;
    node.wait_health("cluster", "up").await;
    node
}

/// `GET /api/channels/NAME` on `node`: the count and the member names.
async fn seen_by(node: &Server, channel: &str) -> (u64, BTreeSet<String>) {
    let req = format!(
        "GET /api/channels/{channel} HTTP/1.1\r\nHost: {}\r\nAuthorization: Bearer {KEY}\r\nConnection: close\r\n\r\n",
        node.addr()
    );
    let res = http_raw(&node.addr(), req.as_bytes()).await;
    assert_eq!(res.status, 200, "{}", res.body);
    let doc: Value = serde_json::from_str(&res.body).unwrap();
    let names = doc["members"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["name"].as_str().unwrap().to_owned())
        .collect();
    (doc["subscribers"].as_u64().unwrap(), names)
}

/// Waits (polling the API, at most `limit`) until every node in `nodes`
/// says `channel` has `count` members named `names`.
async fn agree(nodes: &[&Server], channel: &str, count: u64, names: &[&str], limit: Duration) {
    let want: BTreeSet<String> = names.iter().map(|n| (*n).to_owned()).collect();
    let deadline = Instant::now() + limit;
    for (i, node) in nodes.iter().enumerate() {
        loop {
            let seen = seen_by(node, channel).await;
            if seen == (count, want.clone()) {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "node {i} still sees {seen:?}, not {count} and {want:?}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

/// A v2 client named `name` subscribed to `channel` on `node`.
async fn member(node: &Server, name: &str, channel: &str) -> Ws {
    let (mut ws, _) = connect_v2(node, &format!("/ws?name={name}"), None).await;
    send(
        &mut ws,
        json!({"type": "subscribe", "channel": channel, "id": 1}),
    )
    .await;
    assert_eq!(reply(&mut ws).await["type"], "subscribed");
    ws
}

/// Reads `ws`'s presence events until one says `online` is `count`;
/// returns the names that left in all of them.
async fn presence_until(ws: &mut Ws, count: u64) -> BTreeSet<String> {
    let mut left = BTreeSet::new();
    loop {
        let e = event(ws).await;
        if e["type"] != "presence" {
            continue;
        }
        for p in e["left"].as_array().into_iter().flatten() {
            left.insert(p["name"].as_str().unwrap().to_owned());
        }
        if e["online"] == count {
            return left;
        }
    }
}

#[tokio::test]
async fn three_nodes_agree_and_a_killed_node_leaves_within_its_lease() {
    let redis = Redis::start().await;
    let (a, b) = (node(&redis).await, node(&redis).await);
    let mut c = node(&redis).await;
    let mut ann = member(&a, "ann", "room").await;
    let _bob = member(&b, "bob", "room").await;
    let _cat = member(&c, "cat", "room").await;
    // A plain client is counted everywhere, listed nowhere.
    let _plain = connect(&format!("{}/room", c.ws_url())).await;
    let all = [&a, &b, &c];
    agree(
        &all,
        "room",
        4,
        &["ann", "bob", "cat"],
        Duration::from_secs(5),
    )
    .await;
    // Presence events count the whole cluster too.
    presence_until(&mut ann, 4).await;
    // The channel list as well.
    let list = http_raw(
        &a.addr(),
        format!(
            "GET /api/channels HTTP/1.1\r\nHost: {}\r\nAuthorization: Bearer {KEY}\r\nConnection: close\r\n\r\n",
            a.addr()
        )
        .as_bytes(),
    )
    .await;
    let doc: Value = serde_json::from_str(&list.body).unwrap();
    assert_eq!(
        doc["channels"],
        json!([{"channel": "room", "subscribers": 4}]),
        "{doc}"
    );

    // SIGKILL: no goodbye. Within the default lease (10 s, checked every
    // 2 s) its members are gone from every count, list and event.
    let killed = Instant::now();
    c.signal("KILL");
    c.wait_exit(Duration::from_secs(5)).await;
    let left = presence_until(&mut ann, 2).await;
    let took = killed.elapsed();
    assert!(left.contains("cat"), "the left names: {left:?}");
    agree(
        &[&a, &b],
        "room",
        2,
        &["ann", "bob"],
        Duration::from_secs(1),
    )
    .await;
    assert!(took < Duration::from_secs(15), "forgotten after {took:?}");

    // Started again (a new node id): its new members appear.
    let c2 = node(&redis).await;
    let _dan = member(&c2, "dan", "room").await;
    agree(
        &[&a, &b, &c2],
        "room",
        3,
        &["ann", "bob", "dan"],
        Duration::from_secs(5),
    )
    .await;
    presence_until(&mut ann, 3).await;
}

#[tokio::test]
async fn a_node_that_stops_cleanly_is_forgotten_at_once_and_late_nodes_learn_everyone() {
    let redis = Redis::start().await;
    // A lease far longer than the test: only A's goodbye can make B
    // forget its members.
    let mut a = node_with(&redis, &["--cluster-lease", "3600"]).await;
    let _amy = member(&a, "amy", "hall").await;
    let b = node(&redis).await;
    // B started after A's members joined: it learns them from A's
    // snapshot (its hello asks for it).
    let mut ben = member(&b, "ben", "hall").await;
    agree(
        &[&a, &b],
        "hall",
        2,
        &["amy", "ben"],
        Duration::from_secs(5),
    )
    .await;
    presence_until(&mut ben, 2).await;

    // SIGTERM (no --drain-period): A says goodbye, B forgets amy.
    a.signal("TERM");
    a.wait_exit(Duration::from_secs(10)).await;
    let left = presence_until(&mut ben, 1).await;
    assert!(left.contains("amy"), "{left:?}");
    agree(&[&b], "hall", 1, &["ben"], Duration::from_secs(1)).await;
}

#[tokio::test]
async fn many_joins_on_one_node_cost_the_others_a_few_presence_messages() {
    const JOINS: u64 = 300;
    let redis = Redis::start().await;
    let (a, b) = (node(&redis).await, node(&redis).await);
    let mut watcher = member(&b, "watcher", "crowd").await;
    let before = metric(
        &b.metrics().await,
        "broadcast_cluster_presence_in_total",
        "",
    );
    let mut crowd = Vec::new();
    for _ in 0..JOINS {
        crowd.push(connect(&format!("{}/crowd", a.ws_url())).await);
    }
    presence_until(&mut watcher, JOINS + 1).await;
    agree(
        &[&a, &b],
        "crowd",
        JOINS + 1,
        &["watcher"],
        Duration::from_secs(5),
    )
    .await;
    let got = metric(
        &b.metrics().await,
        "broadcast_cluster_presence_in_total",
        "",
    ) - before;
    // One delta per half second at most while they joined, not one per join.
    assert!(
        got >= 1.0 && got < (JOINS / 10) as f64,
        "{got} presence messages for {JOINS} joins"
    );
}
