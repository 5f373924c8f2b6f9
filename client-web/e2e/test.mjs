// End-to-end test of the browser client against the real server binary.
//
//   node test.mjs [path/to/broadcast-server]     (run.sh builds it and calls this)
//
// Headless Debian Chromium driven by playwright-core, pages with their own
// browser contexts (storage) in one channel and in several (broadcast.v2),
// plain WebSocket clients from the `ws` package, a server restart, and history and resume through a TCP
// proxy the test severs. Loopback only; every wait is a bounded poll of a
// condition, never a fixed sleep. Screenshots go to ./artifacts/.
// E2E_DEBUG=1 prints every WebSocket frame the pages receive.

import { spawn } from "node:child_process";
import { mkdirSync } from "node:fs";
import net from "node:net";
import path from "node:path";
import { fileURLToPath } from "node:url";
import { chromium } from "playwright-core";
import WebSocket from "ws";

const here = path.dirname(fileURLToPath(import.meta.url));
const root = path.resolve(here, "../..");
const SERVER = path.resolve(process.argv[2] || process.env.BROADCAST_SERVER || path.join(root, "target/release/broadcast-server"));
const CHROMIUM = process.env.CHROMIUM || "/usr/bin/chromium";
const ARTIFACTS = path.join(here, "artifacts");
const WAIT_MS = 10_000; // any single condition
const TOTAL_MS = 180_000; // the whole run

const t0 = Date.now();
const log = (...args) => console.log(`[${((Date.now() - t0) / 1000).toFixed(1).padStart(5)}s]`, ...args);

const cleanups = [];
const watchdog = setTimeout(() => fail(new Error(`the whole test took longer than ${TOTAL_MS / 1000} s`)), TOTAL_MS);

async function cleanup() {
  clearTimeout(watchdog);
  for (const f of cleanups.reverse()) {
    try {
      await f();
    } catch {
      // best effort
    }
  }
}

async function fail(err) {
  console.error(`\nFAIL after ${((Date.now() - t0) / 1000).toFixed(1)} s: ${err?.stack || err}`);
  await cleanup();
  process.exit(1);
}

function check(cond, what) {
  if (!cond) throw new Error(`check failed: ${what}`);
}

/** Polls `fn` (async ok) until it returns a truthy value. */
async function until(fn, what, timeout = WAIT_MS) {
  const end = Date.now() + timeout;
  let last;
  for (;;) {
    try {
      const v = await fn();
      if (v) return v;
    } catch (e) {
      last = e;
    }
    if (Date.now() > end) throw new Error(`timed out after ${timeout} ms waiting for ${what}${last ? ` (last error: ${last})` : ""}`);
    await new Promise((r) => setTimeout(r, 25));
  }
}

// ---------------------------------------------------------------- server

/** Starts the server; resolves with { proc, port } once it prints its address. */
function startServer(port = 0, extra = []) {
  return new Promise((resolve, reject) => {
    const proc = spawn(SERVER, ["start", "--host", "127.0.0.1", "--port", String(port), ...extra], {
      stdio: ["ignore", "pipe", "pipe"],
      env: { ...process.env, RUST_LOG: process.env.RUST_LOG || "warn" },
    });
    let out = "";
    let err = "";
    const timer = setTimeout(() => {
      proc.kill("SIGKILL");
      reject(new Error(`server did not say it was listening within ${WAIT_MS} ms; stdout: ${out} stderr: ${err}`));
    }, WAIT_MS);
    proc.stdout.on("data", (d) => {
      out += d;
      const m = out.match(/broadcast-server listening on wss?:\/\/127\.0\.0\.1:(\d+)\/ws/);
      if (m) {
        clearTimeout(timer);
        resolve({ proc, port: Number(m[1]) });
      }
    });
    proc.stderr.on("data", (d) => {
      err += d;
      process.stderr.write(`  server: ${d}`);
    });
    proc.on("error", (e) => {
      clearTimeout(timer);
      reject(new Error(`cannot start ${SERVER}: ${e.message}`));
    });
    proc.on("exit", (code) => {
      clearTimeout(timer);
      reject(new Error(`server exited with ${code} before listening; stderr: ${err}`));
    });
  });
}

function stopServer(proc, signal = "SIGTERM") {
  if (proc.exitCode !== null || proc.signalCode !== null) return Promise.resolve(proc.exitCode);
  return new Promise((resolve) => {
    const kill = setTimeout(() => proc.kill("SIGKILL"), WAIT_MS);
    proc.once("exit", (code) => {
      clearTimeout(kill);
      resolve(code);
    });
    proc.kill(signal);
  });
}

// ---------------------------------------------------------------- plain WebSocket clients

/** A plain (raw, no subprotocol) client that records what it receives; `path` picks the channel. */
function plainClient(port, scheme = "ws", path = "/ws") {
  return new Promise((resolve, reject) => {
    // The TLS test's certificate is self-signed: not verified here.
    const ws = new WebSocket(`${scheme}://127.0.0.1:${port}${path}`, { rejectUnauthorized: false });
    const received = [];
    ws.on("message", (data, isBinary) => received.push(isBinary ? data : data.toString()));
    ws.once("open", () => resolve({ ws, received }));
    ws.once("error", reject);
  });
}

// ---------------------------------------------------------------- a TCP proxy the test can sever

/** A loopback TCP proxy to `targetPort`. `sever()` destroys every connection it carries and holds new ones
 *  (accepted, not forwarded) until `release()`. */
function tcpProxy(targetPort) {
  const sockets = new Set();
  const held = [];
  let open = true;
  const forward = (client) => {
    const upstream = net.connect(targetPort, "127.0.0.1");
    sockets.add(client);
    sockets.add(upstream);
    const close = () => {
      client.destroy();
      upstream.destroy();
      sockets.delete(client);
      sockets.delete(upstream);
    };
    for (const s of [client, upstream]) {
      s.on("error", close);
      s.on("close", close);
    }
    client.pipe(upstream);
    upstream.pipe(client);
  };
  const server = net.createServer((c) => (open ? forward(c) : held.push(c)));
  return new Promise((resolve) =>
    server.listen(0, "127.0.0.1", () =>
      resolve({
        port: server.address().port,
        sever() {
          open = false;
          for (const s of sockets) s.destroy();
          sockets.clear();
        },
        release() {
          open = true;
          for (const c of held.splice(0)) forward(c);
        },
        close() {
          server.close();
          for (const s of [...sockets, ...held]) s.destroy();
        },
      }),
    ),
  );
}

// ---------------------------------------------------------------- page helpers

async function newPage(browser, url, name, viewport = { width: 1280, height: 800 }, contextOptions = {}) {
  const context = await browser.newContext({ viewport, ...contextOptions });
  const page = await context.newPage();
  page.dialogs = [];
  page.problems = [];
  page.sockets = [];
  page.on("websocket", (ws) => page.sockets.push(ws.url()));
  // The upgrade's headers as Chromium sent and got them (the page's
  // WebSocket is the wasm client's own; Playwright does not show headers).
  page.handshakes = [];
  const cdp = await context.newCDPSession(page);
  await cdp.send("Network.enable");
  cdp.on("Network.webSocketHandshakeResponseReceived", (e) => page.handshakes.push(e.response));
  page.on("dialog", async (d) => {
    page.dialogs.push(d.message());
    await d.dismiss();
  });
  page.on("pageerror", (e) => page.problems.push(`${name}: page error: ${e.message}`));
  page.on("console", (m) => {
    // While the server restarts, Chromium logs the refused connections.
    if (m.type() === "error" && !/WebSocket connection to .* failed/.test(m.text())) {
      page.problems.push(`${name}: console error: ${m.text()}`);
    }
  });
  if (process.env.E2E_DEBUG) {
    page.on("websocket", (ws) => ws.on("framereceived", (f) => console.log(`  ${name} <- ${f.payload}`)));
  }
  page.on("requestfailed", (r) => {
    if (!r.url().startsWith("ws")) page.problems.push(`${name}: request failed: ${r.url()}`);
  });
  await page.goto(url);
  return page;
}

const text = (page, selector) => page.evaluate((s) => document.querySelector(s)?.textContent ?? null, selector);

/** Waits until `selector`'s text is exactly `expected` (or matches it, for a RegExp). */
async function waitText(page, selector, expected, timeout = WAIT_MS) {
  let seen;
  try {
    await until(async () => {
      seen = await text(page, selector);
      return expected instanceof RegExp ? expected.test(seen ?? "") : seen === expected;
    }, `${selector} = ${expected}`, timeout);
  } catch (e) {
    throw new Error(`${e.message}; last seen: ${JSON.stringify(seen)}`);
  }
}

/** The log's lines as { kind, who, text }. */
const lines = (page) =>
  page.evaluate(() =>
    [...document.querySelectorAll("#log > li")].map((li) => ({
      kind: li.className.replace("line ", ""),
      who: li.querySelector(".who")?.textContent ?? null,
      text: li.querySelector(".text")?.textContent ?? null,
      time: li.querySelector("time")?.textContent ?? null,
    })),
  );

async function waitLine(page, want, what) {
  const matches = (l) => Object.entries(want).every(([k, v]) => (v instanceof RegExp ? v.test(l[k] ?? "") : l[k] === v));
  try {
    return await until(async () => (await lines(page)).find(matches), what);
  } catch (e) {
    throw new Error(`${e.message}; log: ${JSON.stringify((await lines(page)).slice(-8))}`);
  }
}

/** The channel list as { name, current, unread, state }. */
const channelList = (page) =>
  page.evaluate(() =>
    [...document.querySelectorAll("#channel-list > li")].map((li) => ({
      name: li.dataset.channel,
      current: li.querySelector(".switch")?.getAttribute("aria-current") === "true",
      unread: Number(li.querySelector(".badge")?.firstChild?.textContent ?? 0),
      state: li.dataset.state,
    })),
  );

/** Waits until the channel list is `want` (name, current, unread of each, in order; all joined). */
async function waitChannels(page, want, what) {
  const shape = (list) => JSON.stringify(list.map(({ name, current, unread, state }) => ({ name, current, unread, state })));
  const expected = shape(want.map((c) => ({ ...c, state: "joined" })));
  let seen;
  try {
    await until(async () => (seen = shape(await channelList(page))) === expected, what);
  } catch (e) {
    throw new Error(`${e.message}; channel list: ${seen}, wanted ${expected}`);
  }
}

/** The unread list as { tag, who, text }. */
const unreadList = (page) =>
  page.evaluate(() =>
    [...document.querySelectorAll("#unread-list button")].map((b) => ({
      tag: b.querySelector(".tag")?.textContent ?? null,
      who: b.querySelector(".who")?.textContent ?? null,
      text: b.querySelector(".text")?.textContent ?? null,
    })),
  );

const hash = (page) => page.evaluate(() => location.hash);

async function join(page, name) {
  // "not connected" before the first join, "disconnected" after leaving.
  await waitText(page, "#status", /^(not connected|disconnected)$/);
  // Keyboard only: the name field has the focus; Enter joins.
  check((await page.evaluate(() => document.activeElement?.id)) === "name", "the name field has the focus on load");
  await page.keyboard.press("ControlOrMeta+A");
  await page.keyboard.type(name);
  await page.keyboard.press("Enter");
  await waitText(page, "#status", "connected");
  check((await page.evaluate(() => document.activeElement?.id)) === "message", "the message field has the focus after joining");
}

async function say(page, message) {
  await page.focus("#message");
  await page.keyboard.type(message);
  await page.keyboard.press("Enter");
  await until(async () => (await page.inputValue("#message")) === "", `${message} sent (input cleared)`);
}

/** A header of a CDP request or response (their names keep the case they were sent in). */
const header = (headers, name) => Object.entries(headers ?? {}).find(([k]) => k.toLowerCase() === name)?.[1];

/** The unlabelled sample `name` of the server's /metrics. */
async function metric(base, name) {
  const body = await (await fetch(base + "/metrics")).text();
  const line = body.split("\n").find((l) => l.startsWith(name + " "));
  check(line, `${name} in /metrics`);
  return Number(line.slice(name.length + 1));
}

// ---------------------------------------------------------------- the test

async function main() {
  mkdirSync(ARTIFACTS, { recursive: true });
  let server = await startServer();
  const port = server.port;
  cleanups.push(() => stopServer(server.proc, "SIGKILL"));
  const base = `http://127.0.0.1:${port}`;
  log(`server on port ${port}`);

  // The files: content types, caching, the page's references.
  const get = async (p) => {
    const r = await fetch(base + p);
    return { status: r.status, type: r.headers.get("content-type"), cache: r.headers.get("cache-control"), body: Buffer.from(await r.arrayBuffer()) };
  };
  const page0 = await get("/");
  check(page0.status === 200 && page0.type === "text/html; charset=utf-8" && page0.cache === "no-cache", `GET / headers: ${JSON.stringify({ ...page0, body: undefined })}`);
  check(page0.body.toString().includes('<link rel="icon" href="data:,">'), "favicon link");
  check((await get("/index.html")).body.equals(page0.body), "/index.html is the page");
  const mainJs = await get("/main.js");
  check(mainJs.status === 200 && mainJs.type.startsWith("text/javascript") && mainJs.cache === "no-cache", "main.js headers");
  const glueName = mainJs.body.toString().match(/"\.\/(client_web-[0-9a-f]+\.js)"/)?.[1];
  check(glueName, "main.js imports the hashed glue");
  const glue = await get(`/${glueName}`);
  check(glue.status === 200 && glue.type.startsWith("text/javascript") && /immutable/.test(glue.cache), "glue headers");
  const wasmName = glue.body.toString().match(/'(client_web-[0-9a-f]+_bg\.wasm)'/)?.[1];
  const wasm = await get(`/${wasmName}`);
  check(wasm.status === 200 && wasm.type === "application/wasm" && /max-age=31536000/.test(wasm.cache), "wasm headers");
  check((await get("/nope")).status === 404, "unknown paths are 404");
  log(`assets ok: ${glueName} (${glue.body.length} B), ${wasmName} (${wasm.body.length} B)`);

  // launch() gives Chromium a fresh temporary user-data-dir (removed on
  // close), and each page below gets its own context (storage).
  const browser = await chromium.launch({
    executablePath: CHROMIUM,
    headless: true,
    timeout: 30_000,
    args: [
      "--no-sandbox",
      "--disable-gpu",
      "--disable-quic",
      "--no-first-run",
      "--disable-background-networking",
      "--disable-component-update",
      "--disable-sync",
    ],
  });
  cleanups.push(() => browser.close());
  log(`chromium ${browser.version()} started`);

  // Name checks happen in the page: a refused name would only be a failed connection.
  const alice = await newPage(browser, base + "/", "alice");
  // Before anything was tried the state is neutral, not "disconnected".
  await waitText(alice, "#status", "not connected");
  check((await alice.getAttribute("#status", "data-state")) === "idle", "the status is idle on load");
  await waitText(alice, "#start-channel", "#default");
  await alice.keyboard.type("   ");
  await alice.keyboard.press("Enter");
  await waitText(alice, "#name-error", "Choose another name: the name is empty.");
  check((await alice.getAttribute("#name", "aria-invalid")) === "true", "the name field is marked invalid");
  await alice.fill("#name", "x".repeat(33));
  await alice.press("#name", "Enter");
  await waitText(alice, "#name-error", "Choose another name: the name is longer than 32 characters.");
  check((await text(alice, "#status")) === "not connected", "no connection for a bad name");
  check(alice.sockets.length === 0, "no socket opened for a bad name");
  await alice.screenshot({ path: path.join(ARTIFACTS, "join.png") });
  log("name validation ok");

  await join(alice, "alice");
  await waitText(alice, "#online", "1 online");
  await waitLine(alice, { kind: "event", text: "connected as alice" }, "alice's welcome");
  await waitLine(alice, { kind: "event", text: "you joined #default (1 online)" }, "alice subscribed to the default channel");
  check(alice.sockets.every((u) => u === `ws://127.0.0.1:${port}/ws?name=alice`), `the default channel's URL: ${alice.sockets}`);

  // alice does nothing more once bob is in: bob names her from the
  // server's `members` answer, not from anything she sends.
  const bob = await newPage(browser, base + "/", "bob");
  await join(bob, "bob");
  await waitText(bob, "#online", "2 online");
  await waitText(bob, "#members", "Here: bob (you), alice");
  await waitText(alice, "#online", "2 online");
  await waitLine(alice, { kind: "event", text: "bob joined" }, "alice sees bob join");
  log("two pages connected, online count updated");

  // Both ways between pages; own messages shown once, locally.
  await say(alice, "hello from alice");
  await waitLine(bob, { kind: "theirs", who: "alice", text: "hello from alice", time: /^\d\d:\d\d:\d\d$/ }, "bob gets alice's message");
  await say(bob, "hi alice, bob here");
  await waitLine(alice, { kind: "theirs", who: "bob", text: "hi alice, bob here" }, "alice gets bob's message");
  const aliceLines = await lines(alice);
  check(aliceLines.filter((l) => l.text === "hello from alice").length === 1, "alice's own message shows once");
  check(aliceLines.find((l) => l.text === "hello from alice").kind === "mine", "alice's own message is marked as hers");
  check((await lines(bob)).filter((l) => l.text === "hi alice, bob here").length === 1, "bob's own message shows once");
  log("pages exchanged messages both ways");

  // permessage-deflate: Chromium offers it, the server accepts it, and a
  // message of several KiB goes compressed (once) and arrives intact.
  for (const [who, page] of [["alice", alice], ["bob", bob]]) {
    const answers = () => page.handshakes.map((r) => `${r.status} ${header(r.headers, "sec-websocket-extensions") ?? "(no extension)"}`);
    await until(() => page.handshakes.length > 0, `${who}'s upgrade response`);
    const [answer, ...more] = answers();
    check(more.length === 0 && /^101 permessage-deflate(;|$)/.test(answer) && /server_no_context_takeover/.test(answer), `${who}'s Chromium negotiated permessage-deflate: ${JSON.stringify(answers())}`);
  }
  check((await metric(base, "broadcast_deflate_connections_open")) === 2, "the server counts both pages as compressing");
  const compressedBefore = await metric(base, "broadcast_deflate_messages_total");
  const big = Array.from({ length: 600 }, (_, i) => `${i}:${(i * 7919) % 1000}`).join(" ");
  check(big.length > 4096, `a message of ${big.length} characters`);
  await alice.fill("#message", big);
  await alice.press("#message", "Enter");
  await waitLine(bob, { kind: "theirs", who: "alice", text: big }, "bob gets alice's long message intact");
  await until(async () => (await metric(base, "broadcast_deflate_messages_total")) === compressedBefore + 1, "the long message compressed once");
  log(`permessage-deflate negotiated by Chromium; a ${big.length}-byte message went compressed`);

  // A plain WebSocket client in the same room, both ways, text and binary.
  const plain = await plainClient(port);
  cleanups.push(() => plain.ws.terminate());
  await waitText(alice, "#online", "3 online");
  plain.ws.send("from a plain client");
  const plainLine = await waitLine(alice, { kind: "theirs", text: "from a plain client" }, "alice gets the plain client's message");
  check(/^guest-\d+$/.test(plainLine.who), `plain client shown as a guest: ${plainLine.who}`);
  await waitLine(bob, { kind: "theirs", text: "from a plain client" }, "bob gets the plain client's message");
  plain.ws.send(Buffer.from([0, 1, 2, 255]));
  await waitLine(alice, { kind: "theirs", text: "<binary 4 bytes>" }, "binary shown as its size");
  await say(bob, "bob to the plain client");
  await until(() => plain.received.includes("bob to the plain client"), "the plain client gets bob's message");
  log("plain WebSocket client exchanged messages both ways");

  // The console client in the same room, both ways: one records (--listen),
  // one sends a piped line and exits.
  const consoleArgs = ["connect", "--host", "127.0.0.1", "--port", String(port)];
  const listener = spawn(SERVER, [...consoleArgs, "--name", "cli", "--listen"], { stdio: ["ignore", "pipe", "pipe"] });
  cleanups.push(() => listener.kill("SIGKILL"));
  let listenerOut = "";
  let listenerErr = "";
  listener.stdout.on("data", (d) => (listenerOut += d));
  listener.stderr.on("data", (d) => (listenerErr += d));
  await until(() => / as cli \(\d+ online\)/.test(listenerErr), `the console client connects (stderr: ${listenerErr})`);
  await say(alice, "alice to the console");
  await until(() => /\] alice: alice to the console$/m.test(listenerOut), "the console client prints alice's message");
  const sender = spawn(SERVER, [...consoleArgs, "--name", "cli-sender"], { stdio: ["pipe", "ignore", "pipe"] });
  sender.stdin.end("hello from the console\n");
  const senderExit = await new Promise((resolve) => sender.on("exit", resolve));
  check(senderExit === 0, `the piped console client exits 0 (got ${senderExit})`);
  await waitLine(bob, { kind: "theirs", who: "cli-sender", text: "hello from the console" }, "bob gets the console client's message");
  listener.kill("SIGTERM");
  const listenerExit = await new Promise((resolve) => (listener.exitCode !== null ? resolve(listener.exitCode) : listener.on("exit", resolve)));
  check(listenerExit === 0, `the console client leaves with exit 0 on SIGTERM (got ${listenerExit})`);
  await waitText(alice, "#online", "3 online");
  log("console client exchanged messages both ways");

  // Markup is text, never markup.
  await say(bob, "<script>alert(1)</script>");
  plain.ws.send('<img src=x onerror="alert(2)"><b>bold?</b>');
  await waitLine(alice, { kind: "theirs", who: "bob", text: "<script>alert(1)</script>" }, "the script tag shows as text");
  await waitLine(alice, { kind: "theirs", text: '<img src=x onerror="alert(2)"><b>bold?</b>' }, "the img tag shows as text");
  check((await alice.locator("#log script, #log img, #log b").count()) === 0, "no elements made from messages");
  check(alice.dialogs.length === 0 && bob.dialogs.length === 0, `no dialogs: ${alice.dialogs} ${bob.dialogs}`);
  log("markup in messages shows as text; no dialog");

  // Screenshots: desktop, and a 360 px phone.
  await alice.screenshot({ path: path.join(ARTIFACTS, "desktop.png") });
  const phone = await newPage(browser, base + "/", "phone", { width: 360, height: 740 });
  await join(phone, "carol on a phone");
  await waitText(phone, "#online", "4 online");
  await say(alice, "a long message that has to wrap on a narrow screen: " + "lorem ipsum ".repeat(8));
  await say(bob, "https://example.org/a/very/long/url/without/any/spaces/that/must/not/overflow/the/screen/width/at/all");
  await waitLine(phone, { who: "bob", text: /^https:/ }, "the phone gets bob's long url");
  const overflow = await phone.evaluate(() => document.documentElement.scrollWidth - document.documentElement.clientWidth);
  check(overflow <= 0, `no horizontal scrolling at 360 px (overflow ${overflow} px)`);
  await phone.screenshot({ path: path.join(ARTIFACTS, "phone.png") });
  log("screenshots saved (join.png, desktop.png, phone.png); no overflow at 360 px");

  // Leaving.
  await phone.click("#leave");
  await waitText(phone, "#status", "disconnected");
  check(await phone.isVisible("#name"), "the name form is back after leaving");
  check((await text(phone, "#online")) === "", "no online count after leaving");
  await waitLine(alice, { kind: "event", text: "carol on a phone left" }, "alice sees carol leave");
  await waitText(alice, "#online", "3 online");
  plain.ws.terminate();
  await waitLine(alice, { kind: "event", text: /^guest-\d+ left$/ }, "alice sees the plain client leave");
  await waitText(alice, "#online", "2 online");
  log("leaving works; presence and online count follow");

  // Channels (broadcast.v2): pages in different channels do not see each other.
  const rita = await newPage(browser, base + "/#red", "rita");
  await waitText(rita, "#start-channel", "#red");
  await join(rita, "rita");
  await waitLine(rita, { kind: "event", text: "you joined #red (1 online)" }, "rita subscribed to red");
  await waitText(rita, "#online", "1 online");
  check(rita.sockets[0] === `ws://127.0.0.1:${port}/ws/red?name=rita`, `the socket's URL names the channel: ${rita.sockets}`);
  const bert = await newPage(browser, base + "/?channel=blue", "bert");
  await join(bert, "bert");
  await waitLine(bert, { kind: "event", text: "you joined #blue (1 online)" }, "bert subscribed to blue");
  const plainRed = await plainClient(port, "ws", "/ws/red");
  const plainBlue = await plainClient(port, "ws", "/ws/blue");
  cleanups.push(() => plainRed.ws.terminate(), () => plainBlue.ws.terminate());
  await waitText(rita, "#online", "2 online");
  await waitText(bert, "#online", "2 online");
  await say(rita, "only for red");
  await say(bert, "only for blue");
  await until(() => plainRed.received.includes("only for red"), "the plain red client gets rita's message");
  await until(() => plainBlue.received.includes("only for blue"), "the plain blue client gets bert's message");
  // Markers sent once those were delivered: when a page has its own
  // channel's marker, a message leaked from the other would be there too.
  plainRed.ws.send("red marker");
  plainBlue.ws.send("blue marker");
  await waitLine(rita, { kind: "theirs", text: "red marker" }, "rita gets the red marker");
  await waitLine(bert, { kind: "theirs", text: "blue marker" }, "bert gets the blue marker");
  const has = async (page, texts) => (await lines(page)).some((l) => texts.includes(l.text));
  check(!(await has(rita, ["only for blue", "blue marker"])), "rita sees nothing from blue");
  check(!(await has(bert, ["only for red", "red marker"])), "bert sees nothing from red");
  check(!plainRed.received.includes("only for blue") && !plainBlue.received.includes("only for red"), "each plain client gets its channel only");
  check(!(await has(alice, ["only for red", "only for blue", "red marker", "blue marker"])), "the default channel sees neither");
  log("pages in #red and #blue do not see each other's messages");

  // One page in two channels: rita joins #blue from the page (a bad name first).
  await rita.fill("#channel", "a b");
  await rita.press("#channel", "Enter");
  await waitText(rita, "#channel-error", /^Cannot open that channel: channel name has ' ' at byte 1, outside /);
  check((await rita.getAttribute("#channel", "aria-invalid")) === "true", "the channel field is marked invalid");
  check((await channelList(rita)).length === 1, "no channel added for a bad name");
  await rita.fill("#channel", "blue");
  check((await text(rita, "#channel-error")) === "", "typing clears the error");
  await rita.press("#channel", "Enter");
  await waitLine(rita, { kind: "event", text: "you joined #blue (3 online)" }, "rita subscribed to blue from the page");
  check(rita.sockets.length === 1, "one connection for both channels");
  check((await hash(rita)) === "#blue", "the hash follows the current channel");
  check(!(await has(rita, ["only for red", "red marker"])), "the view shows blue's lines only");
  await waitChannels(rita, [{ name: "red", current: false, unread: 0 }, { name: "blue", current: true, unread: 0 }], "rita's two channels");
  // bert was there first and named by the members answer; the plain client is a guest.
  await waitText(rita, "#members", "Here: rita (you), bert and 1 more");
  await waitLine(bert, { kind: "event", text: "rita joined" }, "bert sees rita join blue");
  await waitText(bert, "#online", "3 online");
  await waitText(bert, "#members", /^Here: bert \(you\), (rita, guest-\d+|guest-\d+, rita)$/);
  await say(bert, "blue to rita");
  await waitLine(rita, { kind: "theirs", who: "bert", text: "blue to rita" }, "rita gets blue's messages");
  plainRed.ws.send("red while away");
  await waitChannels(rita, [{ name: "red", current: false, unread: 1 }, { name: "blue", current: true, unread: 0 }], "red's unread count");
  const unread = await unreadList(rita);
  check(unread.length === 1 && unread[0].tag === "[#red]" && /^guest-\d+$/.test(unread[0].who) && unread[0].text === "red while away", `the unread list names the channel: ${JSON.stringify(unread)}`);
  check(!(await has(rita, ["red while away"])), "the red message is not in the blue view");
  await rita.screenshot({ path: path.join(ARTIFACTS, "channels.png") });
  // Switching shows red's history, and reads it.
  await rita.click('#channel-list li[data-channel="red"] .switch');
  await waitLine(rita, { kind: "theirs", text: "red while away" }, "red's history is shown");
  check((await lines(rita)).some((l) => l.text === "only for red" && l.kind === "mine"), "with rita's own message");
  check(!(await has(rita, ["blue to rita"])), "and without blue's");
  await waitChannels(rita, [{ name: "red", current: true, unread: 0 }, { name: "blue", current: false, unread: 0 }], "red read");
  check((await unreadList(rita)).length === 0 && !(await rita.isVisible("#unread-list")), "the unread list is empty once read");
  check((await hash(rita)) === "#red", "the hash follows the switch");
  await waitText(rita, "#online", "2 online");
  // Leaving with the ×, coming back through the URL's hash.
  await rita.click('#channel-list li[data-channel="blue"] .part');
  await waitLine(bert, { kind: "event", text: "rita left" }, "bert sees rita leave blue");
  await waitText(bert, "#online", "2 online");
  await waitChannels(rita, [{ name: "red", current: true, unread: 0 }], "blue left");
  check((await rita.locator("#channel-list .part").count()) === 0, "the last channel has no ×");
  await rita.evaluate(() => {
    location.hash = "#blue";
  });
  await waitLine(rita, { kind: "event", text: "you joined #blue (3 online)" }, "the hash joins a channel");
  await waitChannels(rita, [{ name: "red", current: false, unread: 0 }, { name: "blue", current: true, unread: 0 }], "blue again");
  check(rita.dialogs.length === 0 && bert.dialogs.length === 0, "no dialogs on the channel pages");
  plainRed.ws.terminate();
  plainBlue.ws.terminate();
  log("one page in two channels: both received, unread counted, switch, leave, hash");

  // Server restart: the pages say they are reconnecting, then recover.
  const stopped = await stopServer(server.proc, "SIGTERM");
  log(`server stopped (exit ${stopped})`);
  for (const page of [alice, bob, rita, bert]) {
    await waitText(page, "#status", /^reconnecting( in \d+ s)?…$/);
    await waitLine(page, { kind: "problem", text: /^connection lost: .*; reconnecting…$/ }, "the drop is reported");
  }
  check((await text(alice, "#online")) === "", "no online count while disconnected");
  await alice.screenshot({ path: path.join(ARTIFACTS, "reconnecting.png") });
  server = await startServer(port);
  log("server restarted on the same port");
  for (const page of [alice, bob, rita, bert]) {
    await waitText(page, "#status", "connected", 20_000);
  }
  await waitLine(alice, { kind: "event", text: "reconnected as alice" }, "alice reconnected");
  await waitLine(alice, { kind: "event", text: /^rejoined #default \(\d online\)$/ }, "alice subscribed again");
  await waitText(alice, "#online", "2 online");
  await say(alice, "after the restart");
  await waitLine(bob, { kind: "theirs", who: "alice", text: "after the restart" }, "messages flow after the restart");
  // Every channel is subscribed again: the one shown and the other.
  await waitLine(rita, { kind: "event", text: /^rejoined #blue \(\d online\)$/ }, "rita back in blue");
  await rita.click('#channel-list li[data-channel="red"] .switch');
  await waitLine(rita, { kind: "event", text: "rejoined #red (1 online)" }, "rita back in red");
  await waitText(bert, "#online", "2 online");
  await say(bert, "blue after the restart");
  await waitChannels(rita, [{ name: "red", current: true, unread: 0 }, { name: "blue", current: false, unread: 1 }], "blue's message after the restart");
  log("the pages recovered after the restart, every channel subscribed again");

  // A server that wants a token: the page passes on its own ?token=.
  const guarded = await startServer(0, ["--auth-token", "s3cret"]);
  cleanups.push(() => guarded.proc.kill("SIGKILL"));
  const tokenPage = await newPage(browser, `http://127.0.0.1:${guarded.port}/?token=s3cret`, "token");
  await join(tokenPage, "dora");
  await waitText(tokenPage, "#online", "1 online");
  log("the page passes its ?token= to a server started with --auth-token");

  // Over TLS: the page served by https:// connects with wss:// to its own host and port.
  const tlsDir = process.env.E2E_TLS_DIR;
  check(tlsDir, "E2E_TLS_DIR (set by run.sh) names the test certificate's directory");
  const secure = await startServer(0, ["--tls-cert", `${tlsDir}/cert.pem`, "--tls-key", `${tlsDir}/key.pem`]);
  cleanups.push(() => secure.proc.kill("SIGKILL"));
  const tlsPage = await newPage(browser, `https://127.0.0.1:${secure.port}/`, "tls", undefined, { ignoreHTTPSErrors: true });
  await join(tlsPage, "erin");
  await waitText(tlsPage, "#online", "1 online");
  const tlsPlain = await plainClient(secure.port, "wss");
  cleanups.push(() => tlsPlain.ws.terminate());
  await say(tlsPage, "over tls");
  await until(() => tlsPlain.received.includes("over tls"), "a wss client gets the https page's message");
  check(
    tlsPage.sockets.length > 0 && tlsPage.sockets.every((u) => u.startsWith(`wss://127.0.0.1:${secure.port}/ws`)),
    `the https page uses wss:// (${tlsPage.sockets.join(", ")})`,
  );
  log("over https the page connects with wss:// and messages flow");

  // History and resume, through a TCP proxy the test severs (a real cut:
  // both sockets destroyed, no close frame) while the server keeps running.
  const hist = await startServer();
  cleanups.push(() => hist.proc.kill("SIGKILL"));
  const proxy = await tcpProxy(hist.port);
  cleanups.push(() => proxy.close());
  const poster = await plainClient(hist.port, "ws", "/ws/hist");
  cleanups.push(() => poster.ws.terminate());
  // A second plain client straight to the server: once it has a message,
  // the server has given it its position in the channel's history.
  const witness = await plainClient(hist.port, "ws", "/ws/hist");
  cleanups.push(() => witness.ws.terminate());
  const post = async (n) => {
    const m = `h-${String(n).padStart(2, "0")}`;
    poster.ws.send(m);
    await until(() => witness.received.includes(m), `${m} published`);
  };
  const shownHist = async (page) => (await lines(page)).filter((l) => /^h-\d\d$/.test(l.text ?? "")).map((l) => l.text);
  const range = (a, b) => Array.from({ length: b - a + 1 }, (_, i) => `h-${String(a + i).padStart(2, "0")}`);
  for (let n = 1; n <= 5; n++) await post(n);
  const reader = await newPage(browser, `http://127.0.0.1:${proxy.port}/#hist`, "reader");
  await join(reader, "reader");
  await until(async () => (await shownHist(reader)).length === 5, "the recent history on opening");
  check(JSON.stringify(await shownHist(reader)) === JSON.stringify(range(1, 5)), `history in order: ${await shownHist(reader)}`);
  await reader.reload();
  await join(reader, "reader");
  await until(async () => (await shownHist(reader)).length === 5, "the recent history after a reload");
  check(JSON.stringify(await shownHist(reader)) === JSON.stringify(range(1, 5)), `history after reload: ${await shownHist(reader)}`);
  log("the page opens on the channel's recent history, after a reload too");

  proxy.sever();
  await waitText(reader, "#status", /^(reconnecting|connecting)/);
  for (let n = 6; n <= 15; n++) await post(n);
  proxy.release();
  await waitLine(reader, { kind: "event", text: "resumed: 10 missed messages delivered" }, "the resume line");
  await post(16);
  await until(async () => (await shownHist(reader)).includes("h-16"), "a live message after the resume");
  check(JSON.stringify(await shownHist(reader)) === JSON.stringify(range(1, 16)), `every message once, in order: ${await shownHist(reader)}`);
  const all = await lines(reader);
  const at = (t) => all.findIndex((l) => l.text === t);
  check(at("h-15") < at("resumed: 10 missed messages delivered") && at("resumed: 10 missed messages delivered") < at("h-16"), "the resume line after the replay, before live");
  check(!all.some((l) => /could not resume/.test(l.text ?? "")), "no resume failure shown");
  await reader.screenshot({ path: path.join(ARTIFACTS, "resumed.png") });
  log("a dropped connection resumes without a gap and says so");

  const problems = [...alice.problems, ...bob.problems, ...phone.problems, ...rita.problems, ...bert.problems, ...tlsPage.problems, ...reader.problems];
  check(problems.length === 0, `no console errors or failed requests:\n  ${problems.join("\n  ")}`);
  check(alice.dialogs.length === 0 && bob.dialogs.length === 0, "no dialogs at all");

  await cleanup();
  log("PASS");
}

main().catch(fail);
