//! The page: wires [`Model`] to the DOM and a `WebSocket`.
//!
//! User data only ever reaches the page through `textContent`/text nodes,
//! never as markup.

use std::cell::RefCell;
use std::rc::Rc;

use js_sys::{ArrayBuffer, Date, Math};
use protocol::v1;
use wasm_bindgen::prelude::*;
use wasm_bindgen::JsCast;
use web_sys::{
    BinaryType, CloseEvent, Document, Element, Event, HtmlButtonElement, HtmlElement,
    HtmlInputElement, MessageEvent, WebSocket, Window,
};

use crate::clock;
use crate::model::{Line, LineKind, Model, Status};

/// Oldest lines are dropped past this many, so a long session stays light.
const MAX_LINES: u32 = 1_000;
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
    chat: HtmlElement,
    me: HtmlElement,
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
            chat: element(d, "chat")?,
            me: element(d, "me")?,
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

    fn append(&self, lines: Vec<Line>) -> Result<(), JsValue> {
        if lines.is_empty() {
            return Ok(());
        }
        let log = &self.log;
        let at_bottom = log.scroll_top() + log.client_height() >= log.scroll_height() - 48;
        let mut mine = false;
        for line in lines {
            mine |= line.kind == LineKind::Mine;
            let li = self.line(&line)?;
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
            let span = self.document.create_element("span")?;
            span.set_class_name("who");
            span.set_text_content(Some(who));
            li.append_child(&span)?;
        }
        let text = self.document.create_element("span")?;
        text.set_class_name(if line.binary { "text binary" } else { "text" });
        text.set_text_content(Some(&line.text));
        li.append_child(&text)?;
        Ok(li)
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
    fn render(&self) {
        let ui = &self.ui;
        let status = self.model.status();
        set_text(&ui.status, &self.model.status_text(now()));
        let state = match status {
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
        let joined = status != Status::Disconnected;
        ui.join_form.set_hidden(joined);
        ui.chat.set_hidden(!self.joined_once);
        ui.leave.set_hidden(!joined);
        ui.retry
            .set_hidden(!matches!(status, Status::Waiting { .. }));
        ui.message.set_disabled(!joined);
        ui.send.set_disabled(!joined);
        set_text(&ui.me, self.model.display_name());
    }

    fn append(&self, lines: Vec<Line>) {
        report(self.ui.append(lines));
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
    let protocols = js_sys::Array::of1(&JsValue::from_str(v1::SUBPROTOCOL));
    let ws = match WebSocket::new_with_str_sequence(url, &protocols) {
        Ok(ws) => ws,
        Err(e) => {
            web_sys::console::error_1(&e);
            let lines = app.model.closed(now(), 1006, "");
            app.append(lines);
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
        app.append(lines);
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
        app.append(lines);
    });
    let onclose = on(|app, event| {
        let (code, reason) = match event.dyn_ref::<CloseEvent>() {
            Some(e) => (e.code(), e.reason()),
            None => (1006, String::new()),
        };
        let lines = app.model.closed(now(), code, &reason);
        app.append(lines);
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

fn on_join(shared: &Shared) {
    let input = shared.borrow().ui.name.value();
    let result = shared.borrow_mut().model.join(&input);
    match result {
        Ok(url) => {
            {
                let mut app = shared.borrow_mut();
                app.joined_once = true;
                let ui = &app.ui;
                set_text(&ui.name_error, "");
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

fn on_send(shared: &Shared) {
    let app = shared.borrow();
    let text = app.ui.message.value();
    let checked = app.model.check_outgoing(&text);
    let result = match (checked, &app.conn) {
        (Ok(()), Some(conn)) => conn.ws.send_with_str(&text).map_err(|e| {
            web_sys::console::error_1(&e);
            "the browser refused to send the message".to_owned()
        }),
        (Ok(()), None) => Err(crate::model::SendError::NotConnected.to_string()),
        (Err(crate::model::SendError::Empty), _) => return,
        (Err(e), _) => Err(e.to_string()),
    };
    match result {
        Ok(()) => {
            let line = app.model.sent(now(), &text);
            app.append(vec![line]);
            app.ui.message.set_value("");
            set_text(&app.ui.send_error, "");
        }
        Err(why) => set_text(&app.ui.send_error, &format!("Not sent: {why}.")),
    }
    app.render();
}

fn on_leave(shared: &Shared) {
    let mut app = shared.borrow_mut();
    if let Some(line) = app.model.leave(now()) {
        app.append(vec![line]);
    }
    app.generation += 1;
    app.drop_conn();
    app.render();
    let _ = app.ui.name.focus();
}

fn on_retry(shared: &Shared) {
    let url = shared.borrow_mut().model.retry_now();
    if let Some(url) = url {
        connect(shared, &url);
    }
}

fn on_tick(shared: &Shared) {
    let url = shared.borrow_mut().model.retry_due(now());
    match url {
        Some(url) => connect(shared, &url),
        None => shared.borrow().render(),
    }
}

/// Attaches `f` as a listener for `kind` on `target`, for the page's lifetime.
fn listen(
    target: &web_sys::EventTarget,
    kind: &str,
    shared: &Shared,
    prevent_default: bool,
    f: fn(&Shared),
) -> Result<(), JsValue> {
    let shared = Rc::clone(shared);
    let handler: Handler = Closure::new(move |event: Event| {
        if prevent_default {
            event.prevent_default();
        }
        f(&shared);
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
    if let Ok(Some(storage)) = ui.window.local_storage() {
        if let Ok(Some(name)) = storage.get_item(NAME_KEY) {
            ui.name.set_value(&name);
        }
    }
    let shared: Shared = Rc::new(RefCell::new(App {
        ui,
        model,
        conn: None,
        generation: 0,
        joined_once: false,
    }));
    {
        let app = shared.borrow();
        let ui = &app.ui;
        listen(&ui.join_form, "submit", &shared, true, on_join)?;
        listen(&ui.send_form, "submit", &shared, true, on_send)?;
        listen(&ui.leave, "click", &shared, false, on_leave)?;
        listen(&ui.retry, "click", &shared, false, on_retry)?;
        // Back online: no point waiting out the backoff.
        listen(&ui.window, "online", &shared, false, on_retry)?;
        listen(&ui.name, "input", &shared, false, |shared| {
            let app = shared.borrow();
            set_text(&app.ui.name_error, "");
            let _ = app.ui.name.remove_attribute("aria-invalid");
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
        let _ = ui.name.focus();
    }
    Ok(())
}
