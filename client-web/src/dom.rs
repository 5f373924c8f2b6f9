//! The page: wires [`Model`] to the DOM and a `WebSocket`.
//!
//! User data only ever reaches the page through `textContent`/text nodes,
//! never as markup.
//!
//! Why one file of this size: every DOM element the page touches is created
//! and updated here, so that `model` knows nothing of web-sys; it is glue,
//! one small function per element.

use std::cell::RefCell;
use std::rc::Rc;

use js_sys::{ArrayBuffer, Date, Math};
use wasm_bindgen::prelude::*;
use wasm_bindgen::JsCast;
use web_sys::{
    BinaryType, CloseEvent, Document, Element, Event, HtmlButtonElement, HtmlElement,
    HtmlInputElement, MessageEvent, WebSocket, Window,
};

use crate::channels::{ChannelItem, ChannelState, Unread, HISTORY};
use crate::clock;
use crate::endpoint;
use crate::model::{Line, LineKind, Model, SendError, Status, OFFERED};

/// Oldest lines are dropped past this many (a channel keeps as many).
const MAX_LINES: u32 = HISTORY as u32;
/// How often the retry timer and the countdown are checked, in ms.
const TICK_MS: i32 = 250;
/// Where the last name used is remembered.
const NAME_KEY: &str = "broadcast.name";

type Handler = Closure<dyn FnMut(Event)>;

/// The elements the client drives (ids from static/index.html).
struct Ui {
    window: Window,
    document: Document,
    status: HtmlElement,
    online: HtmlElement,
    join_form: HtmlElement,
    name: HtmlInputElement,
    name_error: HtmlElement,
    start_channel: HtmlElement,
    start_error: HtmlElement,
    chat: HtmlElement,
    me: HtmlElement,
    channel_list: HtmlElement,
    channel_form: HtmlElement,
    channel: HtmlInputElement,
    channel_error: HtmlElement,
    unread_list: HtmlElement,
    members: HtmlElement,
    retry: HtmlButtonElement,
    leave: HtmlButtonElement,
    log: HtmlElement,
    send_form: HtmlElement,
    message: HtmlInputElement,
    send: HtmlButtonElement,
    send_error: HtmlElement,
}

fn element<T: JsCast>(document: &Document, id: &str) -> Result<T, JsValue> {
    document
        .get_element_by_id(id)
        .ok_or_else(|| JsValue::from_str(&format!("page lacks #{id}")))?
        .dyn_into::<T>()
        .map_err(|_| JsValue::from_str(&format!("#{id} has the wrong element type")))
}

impl Ui {
    fn find() -> Result<Self, JsValue> {
        let window = web_sys::window().ok_or("no window")?;
        let document = window.document().ok_or("no document")?;
        let d = &document;
        Ok(Ui {
            status: element(d, "status")?,
            online: element(d, "online")?,
            join_form: element(d, "join-form")?,
            name: element(d, "name")?,
            name_error: element(d, "name-error")?,
            start_channel: element(d, "start-channel")?,
            start_error: element(d, "start-error")?,
            chat: element(d, "chat")?,
            me: element(d, "me")?,
            channel_list: element(d, "channel-list")?,
            channel_form: element(d, "channel-form")?,
            channel: element(d, "channel")?,
            channel_error: element(d, "channel-error")?,
            unread_list: element(d, "unread-list")?,
            members: element(d, "members")?,
            retry: element(d, "retry")?,
            leave: element(d, "leave")?,
            log: element(d, "log")?,
            send_form: element(d, "send-form")?,
            message: element(d, "message")?,
            send: element(d, "send")?,
            send_error: element(d, "send-error")?,
            window,
            document,
        })
    }

    fn append(&self, lines: &[Line]) -> Result<(), JsValue> {
        if lines.is_empty() {
            return Ok(());
        }
        let log = &self.log;
        let at_bottom = log.scroll_top() + log.client_height() >= log.scroll_height() - 48;
        let mut mine = false;
        for line in lines {
            mine |= line.kind == LineKind::Mine;
            let li = self.line(line)?;
            log.append_child(&li)?;
        }
        while log.child_element_count() > MAX_LINES {
            match log.first_element_child() {
                Some(first) => first.remove(),
                None => break,
            }
        }
        if at_bottom || mine {
            log.set_scroll_top(log.scroll_height());
        }
        Ok(())
    }

    /// Shows `lines` (another channel's history) instead of the log's.
    fn replace_log<'a>(&self, lines: impl Iterator<Item = &'a Line>) -> Result<(), JsValue> {
        self.log.set_text_content(None);
        for line in lines {
            self.log.append_child(&*self.line(line)?)?;
        }
        self.log.set_scroll_top(self.log.scroll_height());
        Ok(())
    }

    /// `<li class="line KIND"><time>HH:MM:SS</time><span class="who">…</span><span class="text">…</span></li>`
    fn line(&self, line: &Line) -> Result<Element, JsValue> {
        let kind = match line.kind {
            LineKind::Mine => "mine",
            LineKind::Theirs => "theirs",
            LineKind::Event => "event",
            LineKind::Problem => "problem",
        };
        let li = self.document.create_element("li")?;
        li.set_class_name(&format!("line {kind}"));
        let date = Date::new(&JsValue::from_f64(line.time_ms));
        let time = self.document.create_element("time")?;
        time.set_text_content(Some(&clock::hms(line.time_ms, date.get_timezone_offset())));
        if line.time_ms.is_finite() {
            time.set_attribute("datetime", &String::from(date.to_iso_string()))?;
        }
        li.append_child(&time)?;
        if let Some(who) = &line.who {
            li.append_child(&*self.span("who", who)?)?;
        }
        let class = if line.binary { "text binary" } else { "text" };
        li.append_child(&*self.span(class, &line.text)?)?;
        Ok(li)
    }

    /// `<span class="CLASS">TEXT</span>`, the text as text.
    fn span(&self, class: &str, text: &str) -> Result<Element, JsValue> {
        let span = self.document.create_element("span")?;
        span.set_class_name(class);
        span.set_text_content(Some(text));
        Ok(span)
    }

    /// `<button type="button" class="CLASS" data-channel="NAME">`: the
    /// channel list's and the unread list's clicks are handled on the list
    /// (see [`on_channel_click`]).
    fn channel_button(&self, class: &str, name: &str) -> Result<Element, JsValue> {
        let button = self.document.create_element("button")?;
        button.set_attribute("type", "button")?;
        button.set_class_name(class);
        button.set_attribute("data-channel", name)?;
        Ok(button)
    }

    /// The channel list: `<li class="channel"><button class="switch">#NAME
    /// <span class="badge">N</span></button><button class="part">×</button></li>`.
    fn render_channels(&self, items: &[ChannelItem], can_leave: bool) -> Result<(), JsValue> {
        let list = &self.channel_list;
        list.set_text_content(None);
        for item in items {
            let li = self.document.create_element("li")?;
            li.set_class_name("channel");
            li.set_attribute("data-channel", &item.name)?;
            let switch = self.channel_button("switch", &item.name)?;
            let state = match &item.state {
                ChannelState::Joined => "joined",
                ChannelState::Waiting | ChannelState::Joining => "pending",
                ChannelState::Refused(why) => {
                    switch.set_attribute("title", &format!("refused: {why}"))?;
                    "refused"
                }
            };
            li.set_attribute("data-state", state)?;
            if item.current {
                switch.set_attribute("aria-current", "true")?;
            }
            switch.append_child(&*self.span("name", &format!("#{}", item.name))?)?;
            if item.unread > 0 {
                let badge = self.span("badge", &item.unread.to_string())?;
                badge.append_child(&*self.span("visually-hidden", " unread")?)?;
                switch.append_child(&badge)?;
            }
            li.append_child(&switch)?;
            if can_leave {
                let part = self.channel_button("part", &item.name)?;
                part.set_text_content(Some("×"));
                let label = format!("Leave #{}", item.name);
                part.set_attribute("aria-label", &label)?;
                part.set_attribute("title", &label)?;
                li.append_child(&part)?;
            }
            list.append_child(&li)?;
        }
        Ok(())
    }

    /// The unread list: `<li><button>[#NAME] who text</button></li>`, newest last.
    fn render_unread(&self, unread: &[Unread]) -> Result<(), JsValue> {
        let list = &self.unread_list;
        list.set_text_content(None);
        for u in unread {
            let li = self.document.create_element("li")?;
            let button = self.channel_button("unread", &u.channel)?;
            button.append_child(&*self.span("tag", &u.tag())?)?;
            if let Some(who) = &u.line.who {
                button.append_child(&*self.span("who", who)?)?;
            }
            let class = if u.line.binary { "text binary" } else { "text" };
            button.append_child(&*self.span(class, &u.line.text)?)?;
            li.append_child(&button)?;
            list.append_child(&li)?;
        }
        list.set_hidden(unread.is_empty());
        Ok(())
    }
}

/// Sets an element's text only when it changes (the tick renders often).
fn set_text(el: &HtmlElement, text: &str) {
    if el.text_content().as_deref() != Some(text) {
        el.set_text_content(Some(text));
    }
}

/// An open (or opening) socket and the handlers attached to it.
struct Conn {
    ws: WebSocket,
    _handlers: Vec<Handler>,
}

impl Conn {
    /// Detaches the handlers (so the socket's last events are not seen) and
    /// closes it.
    fn shut(self) {
        self.ws.set_onopen(None);
        self.ws.set_onmessage(None);
        self.ws.set_onclose(None);
        let _ = self.ws.close_with_code(1000);
    }
}

struct App {
    ui: Ui,
    model: Model,
    conn: Option<Conn>,
    /// Incremented for each socket, so events of an old one are ignored.
    generation: u64,
    /// Whether the chat was ever shown (the log stays after leaving).
    joined_once: bool,
    /// The channel whose lines the log shows.
    shown_channel: String,
    /// The channel list and unread list as last rendered (they are
    /// rebuilt only when they change).
    shown_items: Option<(Vec<ChannelItem>, bool)>,
    shown_unread: Vec<Unread>,
}

type Shared = Rc<RefCell<App>>;

fn now() -> f64 {
    Date::now()
}

fn report(result: Result<(), JsValue>) {
    if let Err(e) = result {
        web_sys::console::error_1(&e);
    }
}

impl App {
    fn render(&mut self) {
        self.sync_log();
        let ui = &self.ui;
        let status = self.model.status();
        set_text(&ui.status, &self.model.status_text(now()));
        let state = match status {
            Status::Idle => "idle",
            Status::Disconnected => "disconnected",
            Status::Connecting { .. } => "connecting",
            Status::Connected => "connected",
            Status::Waiting { .. } => "waiting",
        };
        if ui.status.get_attribute("data-state").as_deref() != Some(state) {
            let _ = ui.status.set_attribute("data-state", state);
        }
        let online = self
            .model
            .online()
            .map(|n| format!("{n} online"))
            .unwrap_or_default();
        set_text(&ui.online, &online);
        let members = self.model.members_text();
        let members = if members.is_empty() {
            members
        } else {
            format!("Here: {members}")
        };
        set_text(&ui.members, &members);
        let joined = !matches!(status, Status::Idle | Status::Disconnected);
        ui.join_form.set_hidden(joined);
        ui.chat.set_hidden(!self.joined_once);
        ui.leave.set_hidden(!joined);
        ui.retry
            .set_hidden(!matches!(status, Status::Waiting { .. }));
        ui.message.set_disabled(!joined);
        ui.send.set_disabled(!joined);
        set_text(&ui.me, self.model.display_name());
        let current = self.model.current_channel();
        set_text(&ui.start_channel, &format!("#{current}"));
        let placeholder = format!("Message #{current} (Enter sends)");
        if ui.message.placeholder() != placeholder {
            ui.message.set_placeholder(&placeholder);
        }
        let single = self.model.single_channel();
        ui.channel_form.set_hidden(single);

        let items = self.model.channels().items();
        let can_leave = !single && items.len() > 1;
        if self.shown_items.as_ref() != Some(&(items.clone(), can_leave)) {
            report(self.ui.render_channels(&items, can_leave));
            self.shown_items = Some((items, can_leave));
        }
        let unread: Vec<Unread> = self.model.channels().unread().cloned().collect();
        if unread != self.shown_unread {
            report(self.ui.render_unread(&unread));
            self.shown_unread = unread;
        }
        if self.joined_once {
            self.sync_hash();
        }
    }

    /// Makes the URL's hash name the current channel.
    fn sync_hash(&self) {
        let location = self.ui.window.location();
        let (Ok(hash), Ok(search)) = (location.hash(), location.search()) else {
            return;
        };
        if let Some(hash) = endpoint::hash_for(self.model.current_channel(), &hash, &search) {
            let _ = location.set_hash(&hash);
        }
    }

    /// Shows the current channel's history if the log shows another one.
    /// Returns whether it did.
    fn sync_log(&mut self) -> bool {
        let current = self.model.current_channel();
        if current == self.shown_channel {
            return false;
        }
        self.shown_channel = current.to_owned();
        report(
            self.ui
                .replace_log(self.model.channels().current().history()),
        );
        true
    }

    /// Shows `lines`, new in the current channel (already in its history).
    fn show(&mut self, lines: Vec<Line>) {
        if !self.sync_log() {
            report(self.ui.append(&lines));
        }
    }

    /// Sends the frames the model queued.
    fn flush(&mut self) {
        let frames = self.model.take_outgoing();
        let Some(conn) = &self.conn else {
            return;
        };
        for frame in frames {
            if let Err(e) = conn.ws.send_with_str(&frame) {
                web_sys::console::error_1(&e);
            }
        }
    }

    fn drop_conn(&mut self) {
        if let Some(conn) = self.conn.take() {
            conn.shut();
        }
    }
}

/// Opens a socket to `url` and attaches its handlers.
fn connect(shared: &Shared, url: &str) {
    let mut app = shared.borrow_mut();
    app.drop_conn();
    app.generation += 1;
    let generation = app.generation;
    let protocols: js_sys::Array = OFFERED.iter().map(|p| JsValue::from_str(p)).collect();
    let ws = match WebSocket::new_with_str_sequence(url, &protocols) {
        Ok(ws) => ws,
        Err(e) => {
            web_sys::console::error_1(&e);
            let lines = app.model.closed(now(), 1006, "");
            app.show(lines);
            app.render();
            return;
        }
    };
    ws.set_binary_type(BinaryType::Arraybuffer);

    // Each handler runs only while its socket is the current one.
    let on = |f: fn(&mut App, Event)| -> Handler {
        let shared = Rc::clone(shared);
        Closure::new(move |event: Event| {
            let mut app = shared.borrow_mut();
            if app.generation == generation {
                f(&mut app, event);
                app.flush();
                app.render();
            }
        })
    };
    let onopen = on(|app, _| {
        let protocol = app
            .conn
            .as_ref()
            .map(|c| c.ws.protocol())
            .unwrap_or_default();
        let lines = app.model.opened(now(), &protocol);
        app.show(lines);
    });
    let onmessage = on(|app, event| {
        let Ok(event) = event.dyn_into::<MessageEvent>() else {
            return;
        };
        let data = event.data();
        let lines = if let Some(text) = data.as_string() {
            app.model.text_frame(now(), &text)
        } else if let Some(buffer) = data.dyn_ref::<ArrayBuffer>() {
            app.model.binary_frame(now(), buffer.byte_length() as usize)
        } else {
            Vec::new()
        };
        app.show(lines);
    });
    let onclose = on(|app, event| {
        let (code, reason) = match event.dyn_ref::<CloseEvent>() {
            Some(e) => (e.code(), e.reason()),
            None => (1006, String::new()),
        };
        let lines = app.model.closed(now(), code, &reason);
        app.show(lines);
        // The socket is done; its handlers are freed once this one returns.
        app.conn = None;
    });
    ws.set_onopen(Some(onopen.as_ref().unchecked_ref()));
    ws.set_onmessage(Some(onmessage.as_ref().unchecked_ref()));
    ws.set_onclose(Some(onclose.as_ref().unchecked_ref()));
    app.conn = Some(Conn {
        ws,
        _handlers: vec![onopen, onmessage, onclose],
    });
    app.render();
}

fn on_join(shared: &Shared, _: &Event) {
    let input = shared.borrow().ui.name.value();
    let result = shared.borrow_mut().model.join(&input);
    match result {
        Ok(url) => {
            {
                let mut app = shared.borrow_mut();
                app.joined_once = true;
                let ui = &app.ui;
                set_text(&ui.name_error, "");
                set_text(&ui.start_error, "");
                let _ = ui.name.remove_attribute("aria-invalid");
                if let Ok(Some(storage)) = ui.window.local_storage() {
                    let _ = storage.set_item(NAME_KEY, input.trim());
                }
            }
            connect(shared, &url);
            let app = shared.borrow();
            set_text(&app.ui.send_error, "");
            let _ = app.ui.message.focus();
        }
        Err(e) => {
            let app = shared.borrow();
            set_text(&app.ui.name_error, &format!("Choose another name: {e}."));
            let _ = app.ui.name.set_attribute("aria-invalid", "true");
            let _ = app.ui.name.focus();
        }
    }
}

fn on_send(shared: &Shared, _: &Event) {
    let mut guard = shared.borrow_mut();
    let app = &mut *guard;
    let text = app.ui.message.value();
    let result = match (app.model.publish(&text), &app.conn) {
        (Ok(frame), Some(conn)) => conn.ws.send_with_str(&frame).map_err(|e| {
            web_sys::console::error_1(&e);
            "the browser refused to send the message".to_owned()
        }),
        (Ok(_), None) => Err(SendError::NotConnected.to_string()),
        (Err(SendError::Empty), _) => return,
        (Err(e), _) => Err(e.to_string()),
    };
    match result {
        Ok(()) => {
            let line = app.model.sent(now(), &text);
            app.show(vec![line]);
            app.ui.message.set_value("");
            set_text(&app.ui.send_error, "");
        }
        Err(why) => set_text(&app.ui.send_error, &format!("Not sent: {why}.")),
    }
    app.render();
}

fn on_leave(shared: &Shared, _: &Event) {
    let mut app = shared.borrow_mut();
    if let Some(line) = app.model.leave(now()) {
        app.show(vec![line]);
    }
    app.generation += 1;
    app.drop_conn();
    app.render();
    let _ = app.ui.name.focus();
}

fn on_retry(shared: &Shared, _: &Event) {
    let url = shared.borrow_mut().model.retry_now();
    if let Some(url) = url {
        connect(shared, &url);
    }
}

fn on_tick(shared: &Shared) {
    let url = shared.borrow_mut().model.retry_due(now());
    match url {
        Some(url) => connect(shared, &url),
        None => shared.borrow_mut().render(),
    }
}

/// Where a channel error is shown: under the channel list once the chat is
/// shown, on the join screen before.
fn channel_error(app: &App) -> (&HtmlElement, Option<&HtmlInputElement>) {
    if app.joined_once {
        (&app.ui.channel_error, Some(&app.ui.channel))
    } else {
        (&app.ui.start_error, None)
    }
}

/// Opens channel `input`, or says why not.
fn open_channel(app: &mut App, input: &str) -> bool {
    let result = app.model.open_channel(input);
    let (error, field) = channel_error(app);
    let ok = match result {
        Ok(()) => {
            set_text(error, "");
            if let Some(field) = field {
                let _ = field.remove_attribute("aria-invalid");
            }
            true
        }
        Err(e) => {
            set_text(error, &format!("Cannot open that channel: {e}."));
            if let Some(field) = field {
                let _ = field.set_attribute("aria-invalid", "true");
            }
            false
        }
    };
    app.flush();
    app.render();
    ok
}

/// The channel form: join (or show) the channel typed.
fn on_open_channel(shared: &Shared, _: &Event) {
    let mut app = shared.borrow_mut();
    let input = app.ui.channel.value();
    if open_channel(&mut app, &input) {
        app.ui.channel.set_value("");
        let _ = app.ui.message.focus();
    } else {
        let _ = app.ui.channel.focus();
    }
}

/// The URL's hash changed (typed, or back and forward): open that channel.
fn on_hash(shared: &Shared, _: &Event) {
    let mut app = shared.borrow_mut();
    let location = app.ui.window.location();
    let (Ok(hash), Ok(search)) = (location.hash(), location.search()) else {
        return;
    };
    match endpoint::location_channel(&hash, &search) {
        Ok(name) => {
            open_channel(&mut app, &name);
        }
        Err(e) => {
            set_text(
                channel_error(&app).0,
                &format!("Cannot open that channel: {e}."),
            );
            app.render();
        }
    }
}

/// A click in the channel list or the unread list: a channel's button shows
/// it, its × leaves it.
fn on_channel_click(shared: &Shared, event: &Event) {
    let Some(button) = event
        .target()
        .and_then(|t| t.dyn_into::<Element>().ok())
        .and_then(|e| e.closest("button[data-channel]").ok().flatten())
    else {
        return;
    };
    let Some(name) = button.get_attribute("data-channel") else {
        return;
    };
    let mut app = shared.borrow_mut();
    if button.class_list().contains("part") {
        app.model.leave_channel(&name);
        // The button is gone with its channel.
        let _ = app.ui.message.focus();
    } else {
        app.model.show_channel(&name);
    }
    set_text(&app.ui.channel_error, "");
    app.flush();
    app.render();
}

/// Attaches `f` as a listener for `kind` on `target`, for the page's lifetime.
fn listen(
    target: &web_sys::EventTarget,
    kind: &str,
    shared: &Shared,
    prevent_default: bool,
    f: fn(&Shared, &Event),
) -> Result<(), JsValue> {
    let shared = Rc::clone(shared);
    let handler: Handler = Closure::new(move |event: Event| {
        if prevent_default {
            event.prevent_default();
        }
        f(&shared, &event);
    });
    target.add_event_listener_with_callback(kind, handler.as_ref().unchecked_ref())?;
    handler.forget();
    Ok(())
}

#[wasm_bindgen(start)]
fn start() -> Result<(), JsValue> {
    let ui = Ui::find()?;
    let location = ui.window.location();
    // The jitter's seed: 53 random bits (all a double holds) from the
    // browser, since the backoff's own generator has no entropy on wasm32.
    let seed = (Math::random() * 9_007_199_254_740_992.0) as u64;
    let mut model = Model::new(&location.protocol()?, &location.host()?, seed);
    // `http://host/?token=...`: the token a server started with --auth-token wants.
    let search = location.search()?;
    let query = search.strip_prefix('?').unwrap_or(&search);
    model.set_token(protocol::v1::query_param(query, "token").flatten());
    // `/#room` or `/?channel=room`: the channel to start in.
    match endpoint::location_channel(&location.hash()?, &search) {
        Ok(name) => {
            // A valid name: opening it cannot fail.
            let _ = model.open_channel(&name);
        }
        Err(e) => set_text(
            &ui.start_error,
            &format!("Cannot open that channel: {e}; you will join #default."),
        ),
    }
    if let Ok(Some(storage)) = ui.window.local_storage() {
        if let Ok(Some(name)) = storage.get_item(NAME_KEY) {
            ui.name.set_value(&name);
        }
    }
    let shown_channel = model.current_channel().to_owned();
    let shared: Shared = Rc::new(RefCell::new(App {
        ui,
        model,
        conn: None,
        generation: 0,
        joined_once: false,
        shown_channel,
        shown_items: None,
        shown_unread: Vec::new(),
    }));
    {
        let mut app = shared.borrow_mut();
        let ui = &app.ui;
        listen(&ui.join_form, "submit", &shared, true, on_join)?;
        listen(&ui.send_form, "submit", &shared, true, on_send)?;
        listen(&ui.leave, "click", &shared, false, on_leave)?;
        listen(&ui.retry, "click", &shared, false, on_retry)?;
        listen(&ui.channel_form, "submit", &shared, true, on_open_channel)?;
        listen(&ui.channel_list, "click", &shared, false, on_channel_click)?;
        listen(&ui.unread_list, "click", &shared, false, on_channel_click)?;
        listen(&ui.window, "hashchange", &shared, false, on_hash)?;
        // Back online: no point waiting out the backoff.
        listen(&ui.window, "online", &shared, false, on_retry)?;
        listen(&ui.name, "input", &shared, false, |shared, _| {
            let app = shared.borrow();
            set_text(&app.ui.name_error, "");
            let _ = app.ui.name.remove_attribute("aria-invalid");
        })?;
        listen(&ui.channel, "input", &shared, false, |shared, _| {
            let app = shared.borrow();
            set_text(&app.ui.channel_error, "");
            let _ = app.ui.channel.remove_attribute("aria-invalid");
        })?;
        let tick: Closure<dyn FnMut()> = {
            let shared = Rc::clone(&shared);
            Closure::new(move || on_tick(&shared))
        };
        ui.window
            .set_interval_with_callback_and_timeout_and_arguments_0(
                tick.as_ref().unchecked_ref(),
                TICK_MS,
            )?;
        tick.forget();
        app.render();
        let _ = app.ui.name.focus();
    }
    Ok(())
}
