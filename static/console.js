// Baton agent console: plain ES2020, no framework, no build step.
//
// The page holds no data: it asks for an API token, keeps it in sessionStorage
// and calls the JSON API with `Authorization: Bearer`. Live updates come from
// GET /api/v1/events (Server-Sent Events), read with fetch() because
// EventSource cannot send an Authorization header. Customer text is untrusted:
// everything the API returns reaches the page through textContent, never HTML.
"use strict";

(() => {
  const API = document.body.dataset.apiRoot;
  const ROOT = document.body.dataset.consoleRoot.replace(/\/$/, "");
  const TOKEN_KEY = "baton.console.token";

  const HEARTBEAT_MS = 20000;      // presence heartbeat while online (AGENT_HEARTBEAT_TTL is 60 s)
  const TYPING_EVERY_MS = 5000;    // at most one {"typing": true} per 5 s
  const POLL_MS = 5000;            // list refresh while the live stream is down
  const STALL_MS = 45000;          // the server sends a keep-alive every 15 s; silence this long = dead link
  const TICK_MS = 15000;           // re-render "waiting 3 min" labels
  const STATUS_POLL_MS = 10000;    // while the live stream is down: re-read outbound statuses in flight
  // Delivery statuses only move forward (models/message.py STATUS_RANK): a late event never undoes a tick.
  const STATUS_RANK = { queued: 0, sent: 1, delivered: 2, read: 3, played: 4, failed: 5 };
  const BACKOFF_MAX_MS = 30000;
  const WINDOW_MESSAGE = "The customer last wrote over 24 h ago; only templates can be sent.";
  const WINDOW_CLOSED_NOTE = "Free text is off: the customer last wrote over 24 hours ago, and WhatsApp delivers " +
    "only approved templates until they write again. Send a template below; their reply reopens the window.";
  const TEMPLATES_MAX_AGE_MS = 300000;   // re-read GET /templates when the picker opens after this long
  // The parameter a button's one dynamic part takes, by the button's type (templates catalog).
  const BUTTON_PARAMETER = { url: "text", quick_reply: "payload", copy_code: "coupon_code" };

  const STATE_LABELS = {
    BOT_CONTROLLED: "with the bot", PENDING_AGENT: "waiting", AGENT_CONTROLLED: "with an agent", CLOSED: "closed",
  };
  const REASON_LABELS = {
    explicit_request: "asked for a human", bot: "the bot escalated", sentiment: "sounds upset",
    bot_failures: "the bot kept failing", agent_takeover: "an agent took over",
    timeout_reroute: "rerouted after waiting too long",
  };

  const $ = (id) => document.getElementById(id);
  const enc = encodeURIComponent;

  const state = {
    session: 0,              // bumped on sign-in/out: answers for an older session are dropped
    token: null,
    me: null,                // the agent (GET /agents/me), null in read-only mode
    readOnly: false,
    supervisor: false,
    agents: new Map(),       // id -> agent, for supervisors (names)
    transferTargets: null,   // GET /agents/online: {items: online agents, groups}
    transferTargetsAt: 0,
    conversations: new Map(),
    unread: new Set(),
    tab: "waiting",
    open: null,              // the open conversation
    openId: null,
    messages: [],            // the open conversation's history, in seq order (the order Baton handled it)
    messageIds: new Set(),
    historyCursor: null,     // the last message id read over REST (for ?after=)
    typing: null,            // another agent typing in the open conversation: {agentId, until}
    typingSentAt: 0,
    typingOn: false,
    live: "off",
    stream: null,            // AbortController of the live stream
    lastByteAt: 0,
    lastHeartbeat: 0,
    timers: [],
    templates: null,         // GET /templates: {configured, sources, account_templates, note, items}
    templatesAt: 0,
    pickerOpenedFor: null,   // the conversation whose closed window opened the picker (once per conversation)
    attachment: null,        // the File chosen with "Attach", sent with the next message
    mediaLinks: new Map(),   // media id -> {promise of its signed URL, expiresAt}
    mediaNodes: new Map(),   // "id:status" -> the element showing that file (kept across re-renders)
  };

  // -- small helpers ----------------------------------------------------------------------

  /** Build an element. Strings among `children` become text nodes (never HTML). */
  function el(tag, props = {}, ...children) {
    const node = document.createElement(tag);
    for (const [key, value] of Object.entries(props)) {
      if (value === undefined || value === null || value === false) continue;
      if (key === "className") node.className = value;
      else if (key === "dataset") Object.assign(node.dataset, value);
      else if (key === "text") node.textContent = value;
      else if (key.startsWith("on")) node.addEventListener(key.slice(2), value);
      else node.setAttribute(key, value === true ? "" : String(value));
    }
    for (const child of children) {
      if (child !== null && child !== undefined && child !== false) node.append(child);
    }
    return node;
  }

  const present = (nodes) => nodes.filter((n) => n !== null && n !== undefined && n !== false);
  const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

  function duration(ms) {
    const s = Math.max(0, Math.round(ms / 1000));
    if (s < 60) return `${s} s`;
    const m = Math.floor(s / 60);
    if (m < 60) return `${m} min`;
    const h = Math.floor(m / 60);
    if (h < 48) return m % 60 ? `${h} h ${m % 60} min` : `${h} h`;
    return `${Math.floor(h / 24)} d`;
  }

  function clock(iso) {
    if (!iso) return "";
    const when = new Date(iso);
    const sameDay = when.toDateString() === new Date().toDateString();
    return sameDay
      ? when.toLocaleTimeString([], { hour: "2-digit", minute: "2-digit" })
      : when.toLocaleString([], { month: "short", day: "numeric", hour: "2-digit", minute: "2-digit" });
  }

  const since = (iso) => (iso ? Date.now() - Date.parse(iso) : null);
  const username = (c) => {
    const name = c.contact && c.contact.username;
    return name ? (name.startsWith("@") ? name : `@${name}`) : "";
  };
  const contactName = (c) =>
    (c.contact && (c.contact.name || username(c) || c.contact.wa_id)) || "Unknown contact";
  // The phone number when WhatsApp shares it, and the username when the customer has one.
  const contactNumber = (c) =>
    [c.contact && c.contact.wa_id ? `+${c.contact.wa_id}` : "", username(c)].filter(Boolean).join(" · ");
  const isMine = (c) => Boolean(state.me && c.assigned_agent_id === state.me.id);
  const offeredToMe = (c) => Boolean(state.me && c.state === "PENDING_AGENT" && c.offered_agent_id === state.me.id);

  function agentName(agentId) {
    if (!agentId) return "";
    if (state.me && agentId === state.me.id) return "you";
    const agent = state.agents.get(agentId) ||
      (state.transferTargets && state.transferTargets.items.find((a) => a.id === agentId));
    return agent ? agent.name : agentId;
  }

  // -- the API ----------------------------------------------------------------------------

  class ApiError extends Error {
    constructor(status, payload) {
      super((payload && payload.message) || `Baton answered ${status}.`);
      this.status = status;
      this.code = (payload && payload.error) || "http_error";
      this.details = (payload && payload.details) || {};
    }
  }

  async function api(method, path, payload) {
    const headers = { Authorization: `Bearer ${state.token}`, Accept: "application/json" };
    const init = { method, headers, cache: "no-store" };
    if (payload instanceof FormData) {
      init.body = payload;                  // the browser writes the multipart Content-Type
    } else if (payload !== undefined) {
      headers["Content-Type"] = "application/json";
      init.body = JSON.stringify(payload);
    }
    let response;
    try {
      response = await fetch(API + path, init);
    } catch (err) {
      throw new ApiError(0, { error: "network", message: "Baton cannot be reached; check the connection." });
    }
    if (response.status === 204) return null;
    let data = null;
    try {
      data = await response.json();
    } catch (err) {
      data = null;
    }
    if (!response.ok) throw new ApiError(response.status, data);
    return data;
  }

  /** The error's message, with field errors spelled out for a 422 validation failure. */
  function describe(error) {
    if (!(error instanceof ApiError)) return String(error && error.message ? error.message : error);
    if (error.code === "outside_customer_service_window") return WINDOW_MESSAGE;
    const fields = Object.entries(error.details || {})
      .filter(([, v]) => Array.isArray(v))
      .map(([k, v]) => `${k}: ${v.join(" ")}`);
    return fields.length ? `${error.message} (${fields.join("; ")})` : error.message;
  }

  /** Show an API error; a refused token ends the session. */
  function report(error, where = null) {
    if (error instanceof ApiError && error.status === 401 && state.token) {
      signOut(`Your token was refused: ${error.message}`);
      return;
    }
    if (where) where.textContent = describe(error);
    else notice(describe(error));
  }

  function notice(text) {
    $("notice-text").textContent = text;
    $("notice").hidden = false;
  }

  // -- sign in and out ----------------------------------------------------------------------

  async function signIn(token) {
    const session = ++state.session;
    state.token = token;
    let readOnlyReason = null;
    try {
      state.me = await api("GET", "/agents/me");
      state.readOnly = false;
    } catch (err) {
      if (session !== state.session) return;
      if (!(err instanceof ApiError) || err.status !== 403) {
        state.token = null;
        throw err;
      }
      state.me = null;
      state.readOnly = true;
      readOnlyReason = err.message;
    }
    if (session !== state.session) return;
    sessionStorage.setItem(TOKEN_KEY, token);
    state.supervisor = state.readOnly ? await loadAgents() : ["supervisor", "admin"].includes(state.me.role);
    if (session !== state.session) return;
    if (state.supervisor && !state.readOnly) loadAgents();
    if (!state.readOnly) loadTemplates();
    showConsole(readOnlyReason);
    if (state.me && state.me.status === "online") heartbeat();
    startTimers(session);
    liveStream(session);
    await refreshList();
    const deepLink = conversationFromPath();
    if (deepLink && session === state.session) openConversation(deepLink, { push: false });
  }

  function signOut(message = "") {
    state.session += 1;
    if (state.stream) state.stream.abort();
    state.timers.forEach(clearInterval);
    Object.assign(state, {
      token: null, me: null, readOnly: false, supervisor: false, open: null, openId: null, messages: [],
      transferTargets: null, transferTargetsAt: 0,
      historyCursor: null, typing: null, typingOn: false, stream: null, timers: [], live: "off",
      templates: null, templatesAt: 0, pickerOpenedFor: null,
    });
    state.agents.clear();
    state.conversations.clear();
    state.unread.clear();
    state.messageIds.clear();
    state.mediaLinks.clear();
    state.mediaNodes.clear();
    attach(null);
    sessionStorage.removeItem(TOKEN_KEY);
    $("console").hidden = true;
    $("session").hidden = true;
    $("notice").hidden = true;
    $("signin").hidden = false;
    $("signin-error").textContent = message;
    $("token").value = "";
    $("token").focus();
    document.title = "Baton console";
  }

  function showConsole(readOnlyReason) {
    $("signin").hidden = true;
    $("console").hidden = false;
    $("session").hidden = false;
    $("signin-error").textContent = "";
    $("me-name").textContent = state.me ? state.me.name : "No agent";
    $("me-role").textContent = state.me ? state.me.role : "read-only";
    $("presence-field").hidden = state.readOnly;
    const note = $("readonly-note");
    note.hidden = !state.readOnly;
    note.textContent = state.readOnly
      ? `Read-only mode: ${readOnlyReason} You can watch conversations, but not claim, reply or go online. ` +
        "Sign in with an agent's token to work the queue."
      : "";
    document.querySelector('[data-tab="mine"]').hidden = state.readOnly;
    document.querySelector('[data-tab="all"]').hidden = !(state.supervisor || state.readOnly);
    selectTab(state.readOnly ? "all" : "waiting");
    renderPresence();
  }

  /** GET /agents (supervisors only): true when the caller may list agents. */
  async function loadAgents() {
    try {
      const page = await api("GET", "/agents?limit=200");
      state.agents = new Map(page.items.map((a) => [a.id, a]));
      if (state.openId) renderDetail();
      return true;
    } catch (err) {
      if (err instanceof ApiError && err.status === 403) return false;
      report(err);
      return false;
    }
  }

  // -- presence ----------------------------------------------------------------------------

  function renderPresence() {
    if (!state.me) return;
    $("presence").value = state.me.status;
    $("presence-note").textContent = state.me.online
      ? "receiving offers"
      : state.me.status === "online" ? "connecting…" : "not receiving offers";
  }

  async function setPresence(status) {
    try {
      state.me = await api("PATCH", "/agents/me", { status });
      state.lastHeartbeat = Date.now();
    } catch (err) {
      report(err);
    }
    renderPresence();
  }

  async function heartbeat() {
    if (!state.me || state.me.status !== "online") return;
    state.lastHeartbeat = Date.now();
    try {
      state.me = await api("POST", "/agents/me/heartbeat");
      renderPresence();
    } catch (err) {
      report(err);
    }
  }

  // Background tabs throttle timers; stream traffic (a keep-alive every 15 s) is not, so it beats too.
  function heartbeatIfDue() {
    if (Date.now() - state.lastHeartbeat >= HEARTBEAT_MS - 1000) heartbeat();
  }

  // -- the conversation list ----------------------------------------------------------------

  const byNewest = (a, b) => (b.updated_at || "").localeCompare(a.updated_at || "");
  const TABS = {
    waiting: {
      match: (c) => c.state === "PENDING_AGENT",
      // Offers to me first, then whoever has waited longest.
      order: (a, b) => (offeredToMe(b) - offeredToMe(a)) ||
        (a.pending_since || a.updated_at || "").localeCompare(b.pending_since || b.updated_at || ""),
    },
    mine: { match: (c) => isMine(c) && c.state !== "CLOSED", order: byNewest },
    all: { match: () => true, order: byNewest },
  };

  /** The later of two last-message previews (by seq); either may be missing. */
  function laterPreview(a, b) {
    if (!a) return b || null;
    if (!b) return a;
    return b.seq > a.seq ? b : a;
  }

  function upsert(conversation) {
    const known = state.conversations.get(conversation.id);
    // Only the list answers carry `last_message`; live updates and actions keep the one we have.
    const preview = laterPreview(known && known.last_message, conversation.last_message);
    if (known && known.version > conversation.version) {
      known.last_message = preview;
      return known;
    }
    conversation.last_message = preview;
    state.conversations.set(conversation.id, conversation);
    if (state.openId === conversation.id && (!state.open || state.open.version <= conversation.version)) {
      state.open = conversation;
    }
    return conversation;
  }

  async function refreshList() {
    const session = state.session;
    const queries = ["?state=PENDING_AGENT&limit=200"];
    if (!state.readOnly) queries.push("?assigned=me&limit=200");
    if (state.supervisor || state.readOnly) queries.push("?limit=200");
    let pages;
    try {
      pages = await Promise.all(queries.map((q) => api("GET", `/conversations${q}`)));
    } catch (err) {
      if (session === state.session) report(err);
      return;
    }
    if (session !== state.session) return;
    const previous = state.conversations;
    state.conversations = new Map();
    for (const page of pages) {
      for (const c of page.items) {
        const known = previous.get(c.id);
        const kept = known && known.version > c.version ? known : c;
        kept.last_message = laterPreview(known && known.last_message, c.last_message);
        state.conversations.set(c.id, kept);
      }
    }
    if (state.open) upsert(state.open);
    renderList();
  }

  function selectTab(tab) {
    state.tab = tab;
    for (const button of document.querySelectorAll("[data-tab]")) {
      button.setAttribute("aria-selected", String(button.dataset.tab === tab));
    }
    renderList();
  }

  function renderList() {
    const all = [...state.conversations.values()];
    for (const [name, tab] of Object.entries(TABS)) {
      const n = all.filter(tab.match).length;
      document.querySelector(`[data-count="${name}"]`).textContent = n ? `(${n})` : "";
    }
    const tab = TABS[state.tab];
    const items = all.filter(tab.match).sort(tab.order);
    $("conversation-list").replaceChildren(...items.map(renderItem));
    $("list-empty").hidden = items.length > 0;
    const waiting = all.filter(TABS.waiting.match).length;
    document.title = waiting ? `(${waiting}) Baton console` : "Baton console";
  }

  function waitedText(c) {
    if (c.state === "PENDING_AGENT" && c.pending_since) return `waiting ${duration(since(c.pending_since))}`;
    if (c.last_inbound_at) return `last wrote ${duration(since(c.last_inbound_at))} ago`;
    return "";
  }

  function renderItem(c) {
    const reason = c.escalation && c.escalation.reason;
    const button = el("button", { type: "button", className: "conv-button", onclick: () => openConversation(c.id) },
      el("span", { className: "conv-line" },
        el("span", { className: "contact-name" }, contactName(c)),
        el("span", { className: `state state-${c.state}`, dataset: { state: c.state }, title: c.state },
          STATE_LABELS[c.state] || c.state)),
      el("span", { className: "conv-line small" },
        el("span", { className: "contact-number" }, contactNumber(c)),
        c.group ? el("span", { className: "group" }, c.group) : null,
        el("span", { className: "waited" }, waitedText(c))),
      el("span", { className: "conv-line small" },
        reason ? el("span", { className: "reason", dataset: { reason } }, REASON_LABELS[reason] || reason) : null,
        offeredToMe(c) ? el("span", { className: "offered" }, "Offered to you") : null,
        c.state === "AGENT_CONTROLLED" && !isMine(c) && c.assigned_agent_id
          ? el("span", { className: "assignee" }, `with ${agentName(c.assigned_agent_id)}`) : null,
        state.unread.has(c.id) ? el("span", { className: "unread", title: "new messages" }, "new") : null),
      renderPreview(c));
    return el("li", {
      className: ["conv", c.id === state.openId ? "open" : "", offeredToMe(c) ? "offered-to-me" : ""].join(" ").trim(),
      dataset: { id: c.id, state: c.state },
    }, button);
  }

  /** The list entry's last line: who wrote last, what (text or a [type] label), and when. */
  function renderPreview(c) {
    const m = c.last_message;
    if (!m) return null;
    const who = m.direction === "in" ? "" : `${senderLabel(m)}: `;
    return el("span", { className: "conv-line small preview", dataset: { seq: m.seq, direction: m.direction } },
      who ? el("span", { className: "preview-who" }, who) : null,
      el("span", { className: "preview-text" }, messageBody(m)),
      el("time", { className: "preview-time", dateTime: m.sent_at, title: m.sent_at }, clock(m.sent_at)));
  }

  /** A message just seen (live, or sent from here) becomes its conversation's preview if it is the latest. */
  function notePreview(conversationId, m) {
    const c = state.conversations.get(conversationId);
    if (!c || typeof m.seq !== "number") return false;
    const preview = laterPreview(c.last_message, {
      id: m.id, seq: m.seq, direction: m.direction, sender: m.sender, agent_id: m.agent_id, type: m.type,
      text: m.text, sent_at: m.sent_at,
    });
    if (preview === c.last_message) return false;
    c.last_message = preview;
    return true;
  }

  // -- one conversation ---------------------------------------------------------------------

  function conversationFromPath() {
    const prefix = `${ROOT}/conversations/`;
    if (!location.pathname.startsWith(prefix)) return null;
    try {
      return decodeURIComponent(location.pathname.slice(prefix.length).replace(/\/$/, "")) || null;
    } catch (err) {
      return null;
    }
  }

  async function openConversation(id, { push = true } = {}) {
    if (state.openId && state.openId !== id) stopTyping();
    const session = state.session;
    Object.assign(state, { openId: id, open: state.conversations.get(id) || null, messages: [],
                           historyCursor: null, typing: null });
    state.messageIds.clear();
    state.unread.delete(id);
    state.transferTargetsAt = 0;              // who is online now, not when the last conversation opened
    confirmClose(false);
    if (push && conversationFromPath() !== id) history.pushState({ id }, "", `${ROOT}/conversations/${enc(id)}`);
    $("composer-error").textContent = "";
    $("composer-text").value = "";
    attach(null);
    state.mediaNodes.clear();
    $("detail-error").textContent = "";
    $("template-error").textContent = "";
    delete $("template-params").dataset.template;     // another customer: empty parameters
    renderTemplateParameters();
    renderDetail();
    renderHistory();
    renderList();
    try {
      const conversation = await api("GET", `/conversations/${enc(id)}`);
      if (session !== state.session || state.openId !== id) return;
      upsert(conversation);
      state.open = state.conversations.get(id);
      renderDetail();
      renderList();
      await loadMessages(id);
    } catch (err) {
      if (session !== state.session || state.openId !== id) return;
      if (!state.open) $("detail-contact").textContent = "Conversation unavailable";
      report(err, $("detail-error"));
    }
  }

  function closeDetail() {
    stopTyping();
    Object.assign(state, { openId: null, open: null, messages: [], historyCursor: null, typing: null });
    state.messageIds.clear();
    renderDetail();
    renderList();
  }

  /** Read the history after what we already have, following `next_cursor`. */
  async function loadMessages(id) {
    const session = state.session;
    for (let pages = 0; pages < 50; pages += 1) {
      const query = new URLSearchParams({ limit: "200" });
      if (state.historyCursor) query.set("after", state.historyCursor);
      const page = await api("GET", `/conversations/${enc(id)}/messages?${query}`);
      if (session !== state.session || state.openId !== id) return;
      page.items.forEach(addMessage);
      if (page.items.length) state.historyCursor = page.items[page.items.length - 1].id;
      renderHistory();
      if (!page.next_cursor) return;
    }
  }

  /** Re-read the whole history (statuses changed while the live stream was down). */
  async function reloadHistory() {
    const id = state.openId;
    const session = state.session;
    let after = null;
    const fresh = [];
    for (let pages = 0; pages < 50; pages += 1) {
      const query = new URLSearchParams({ limit: "200" });
      if (after) query.set("after", after);
      const page = await api("GET", `/conversations/${enc(id)}/messages?${query}`);
      if (session !== state.session || state.openId !== id) return;
      fresh.push(...page.items);
      if (!page.next_cursor) break;
      after = page.next_cursor;
    }
    const known = new Map(state.messages.map((m) => [m.id, m]));
    for (const m of fresh) known.set(m.id, m);
    state.messages = [...known.values()].sort(messageOrder);
    state.messageIds = new Set(known.keys());
    if (fresh.length) state.historyCursor = fresh[fresh.length - 1].id;
    renderHistory();
  }

  /** The order Baton handled the messages: `seq` (WhatsApp's whole-second timestamps cannot order them). */
  function messageOrder(a, b) {
    if (typeof a.seq === "number" && typeof b.seq === "number") return a.seq - b.seq;
    return (Date.parse(a.sent_at) - Date.parse(b.sent_at)) || (a.id < b.id ? -1 : a.id > b.id ? 1 : 0);
  }

  /** A newer version of a shown message (its delivery status changed); never moves a tick backwards. */
  function updateMessage(message) {
    const shown = state.messages.find((m) => m.id === message.id);
    if (!shown) return false;
    const rank = (m) => (m.status in STATUS_RANK ? STATUS_RANK[m.status] : -1);
    if (rank(message) < rank(shown)) return false;
    addMessage(message);
    return true;
  }

  function addMessage(message) {
    if (state.messageIds.has(message.id)) {
      state.messages = state.messages.map((m) => (m.id === message.id ? message : m));
      return;
    }
    state.messageIds.add(message.id);
    state.messages.push(message);
    state.messages.sort(messageOrder);
  }

  function senderLabel(m) {
    if (m.sender === "user") return state.open ? contactName(state.open) : "Customer";
    if (m.sender === "bot") return "Bot";
    if (m.sender === "system") return "System";
    if (m.sender === "agent") return m.agent_id && state.me && m.agent_id === state.me.id
      ? "You" : `Agent ${agentName(m.agent_id) || ""}`.trim();
    return m.sender;
  }

  /** A message as text: its text, or a `[type]` label (with the caption, if any). */
  function messageBody(m) {
    const hasText = typeof m.text === "string" && m.text !== "";
    const media = m.media && m.media.filename ? ` ${m.media.filename}` : "";
    return hasText ? (m.type === "text" ? m.text : `[${m.type}${media}] ${m.text}`) : `[${m.type}${media}]`;
  }

  // -- media ---------------------------------------------------------------------------------
  // A file's `url` (GET /api/v1/media/{id}) needs the bearer token, which <img src> cannot send:
  // the console asks GET /api/v1/media/{id}/link for the signed URL (valid MEDIA_URL_TTL seconds)
  // and points the element at it.

  const LINK_MARGIN_MS = 15000;           // ask for a new link this long before the old one expires
  const KIND_LABELS = { image: "Photo", sticker: "Sticker", audio: "Audio", video: "Video", document: "Document" };

  function mediaLink(mediaId, fresh = false) {
    const known = state.mediaLinks.get(mediaId);
    if (!fresh && known && (known.expiresAt === null || known.expiresAt - Date.now() > LINK_MARGIN_MS)) {
      return known.promise;
    }
    const entry = { expiresAt: null };
    entry.promise = api("GET", `/media/${enc(mediaId)}/link`).then((link) => {
      entry.expiresAt = Date.parse(link.expires_at) || Date.now() + 60000;
      return link.url;
    }, (err) => {
      if (state.mediaLinks.get(mediaId) === entry) state.mediaLinks.delete(mediaId);
      throw err;
    });
    state.mediaLinks.set(mediaId, entry);
    return entry.promise;
  }

  function fileSize(bytes) {
    if (typeof bytes !== "number") return "";
    if (bytes < 1024) return `${bytes} B`;
    if (bytes < 1024 * 1024) return `${Math.round(bytes / 1024)} KB`;
    return `${(bytes / (1024 * 1024)).toFixed(1)} MB`;
  }

  /** The element showing a message's file: kept while its status stays, so a player keeps playing. */
  function mediaNode(m) {
    const media = m.media;
    const key = `${media.id}:${media.status}`;
    if (media.id && state.mediaNodes.has(key)) return state.mediaNodes.get(key);
    const node = buildMediaNode(media, media.type || m.type);
    if (media.id) state.mediaNodes.set(key, node);
    return node;
  }

  function buildMediaNode(media, kind) {
    const label = KIND_LABELS[kind] || kind;
    const name = media.filename || "";
    const box = (status, ...children) =>
      el("div", { className: `msg-media media-${kind} media-${status}`, dataset: { status, kind } }, ...children);
    // Media recorded before Baton kept files has no id: there is nothing to fetch.
    if (!media.id) return box("none", el("span", { className: "media-note" }, `[${kind}${name ? ` ${name}` : ""}]`));
    if (media.status === "pending") return box("pending", el("span", { className: "media-note" }, `${label}: fetching…`));
    if (media.status === "expired") {
      return box("expired", el("span", { className: "media-note" }, `${label}: no longer kept (retention period)`));
    }
    if (media.status === "failed") {
      const note = el("span", { className: "media-note" }, `${label}: could not be fetched`);
      // The reason comes with the API's 409 media_not_ready.
      mediaLink(media.id).catch((err) => {
        const reason = err instanceof ApiError && err.details && err.details.reason;
        if (reason) note.textContent = `${label}: could not be fetched: ${reason}`;
      });
      return box("failed", note);
    }
    let target;
    if (kind === "image" || kind === "sticker") {
      target = el("img", { className: "media-thumb", alt: name || label });
      const open = el("button", { type: "button", className: "media-open", title: "Enlarge",
        onclick: () => enlarge(target) }, target);
      return load(box("stored", open), target, media);
    }
    if (kind === "audio" || kind === "video") {
      target = el(kind, { className: "media-player", controls: true, preload: "metadata" });
      return load(box("stored", target), target, media);
    }
    target = el("a", { className: "media-doc", href: "#", onclick: (event) => download(event, media) },
      el("span", { className: "media-name" }, name || label), " ",
      el("span", { className: "media-size" }, fileSize(media.size)));
    return load(box("stored", target), target, media);
  }

  /** Point `target` at the file's signed URL; a link that lapsed is asked for again once. */
  function load(node, target, media) {
    const attribute = target.tagName === "A" ? "href" : "src";
    let retried = false;
    const point = (fresh) => mediaLink(media.id, fresh).then((url) => target.setAttribute(attribute, url))
      .catch((err) => {
        node.dataset.status = "unavailable";
        node.replaceChildren(el("span", { className: "media-note" }, `Could not load the file: ${describe(err)}`));
      });
    if (attribute === "src") {
      target.addEventListener("error", () => {
        if (retried || !target.getAttribute("src")) return;
        retried = true;
        point(true);
      });
    }
    point(false);
    return node;
  }

  function download(event, media) {
    event.preventDefault();
    mediaLink(media.id).then((url) => {
      const link = el("a", { href: url, download: media.filename || "" });
      document.body.append(link);
      link.click();
      link.remove();
    }).catch((err) => report(err));
  }

  function enlarge(image) {
    if (!image.getAttribute("src")) return;
    $("lightbox").replaceChildren(el("img", { id: "lightbox-image", src: image.src, alt: image.alt }));
    $("lightbox").hidden = false;
  }

  function closeLightbox() {
    $("lightbox").hidden = true;
    $("lightbox").replaceChildren();
  }

  function renderMessage(m) {
    const body = m.media ? (m.text || "") : messageBody(m);
    const error = m.error || {};
    const status = m.direction === "out" && m.status
      ? el("span", { className: `msg-status status-${m.status}`, dataset: { status: m.status },
        title: [error.code, error.title, error.details].filter((part) => part !== null && part !== undefined
          && part !== "").join(" · ") || undefined },
      m.status === "unknown" ? "sent? waiting for WhatsApp to confirm"
        : m.status + (m.status === "failed" && error.title ? `: ${error.title}` : ""))
      : null;
    const details = m.direction === "out" && m.status === "failed" && error.details
      ? el("div", { className: "msg-error-details" }, error.details) : null;
    return el("li", { className: `msg msg-${m.sender} msg-${m.direction}`, dataset: { id: m.id, sender: m.sender } },
      el("div", { className: "msg-head" },
        el("span", { className: "msg-sender" }, senderLabel(m)),
        el("time", { dateTime: m.sent_at, title: m.sent_at }, clock(m.sent_at)),
        status),
      m.media ? mediaNode(m) : null,
      m.media && !body ? null : el("div", { className: "msg-text" }, body),
      details);
  }

  function renderHistory() {
    const list = $("history");
    const atBottom = list.scrollHeight - list.scrollTop - list.clientHeight < 40;
    list.replaceChildren(...state.messages.map(renderMessage));
    if (atBottom || state.messages.length <= 1) list.scrollTop = list.scrollHeight;
  }

  function renderDetail() {
    const c = state.open;
    $("detail-empty").hidden = Boolean(state.openId);
    $("detail-body").hidden = !state.openId;
    if (!state.openId) return;
    if (!c) {
      $("detail-contact").textContent = "Loading…";
      $("detail-meta").replaceChildren();
      $("detail-window").textContent = "";
      $("actions").hidden = true;
      $("composer").hidden = true;
      return;
    }
    $("detail-contact").replaceChildren(
      el("span", { className: "contact-name" }, contactName(c)), " ",
      el("span", { className: "contact-number" }, contactNumber(c)));
    const reason = c.escalation && c.escalation.reason;
    $("detail-meta").replaceChildren(...present([
      el("span", { id: "detail-state", className: `state state-${c.state}`, dataset: { state: c.state },
        title: c.state }, STATE_LABELS[c.state] || c.state),
      c.group ? el("span", { className: "group", title: "group" }, c.group) : null,
      reason ? el("span", { className: "reason" }, REASON_LABELS[reason] || reason) : null,
      c.assigned_agent_id ? el("span", { className: "assignee" }, `assigned to ${agentName(c.assigned_agent_id)}`) : null,
      offeredToMe(c) ? el("span", { className: "offered" }, "Offered to you") : null,
      c.offered_agent_id && !offeredToMe(c)
        ? el("span", { className: "assignee" }, `offered to ${agentName(c.offered_agent_id)}`) : null,
      el("span", { className: "waited" }, waitedText(c))]));

    const windowOpen = isWindowOpen(c);
    const noWindow = Boolean(c.channel && c.channel.provider === "wasender");
    $("detail-window").textContent = c.state === "CLOSED" || noWindow ? ""
      : windowOpen ? `Window open for ${duration(Date.parse(c.window_expires_at) - Date.now())}`
        : "Window closed: send a template";
    $("detail-window").classList.toggle("warning", c.state !== "CLOSED" && !windowOpen);

    const canManage = !state.readOnly && (state.supervisor || (c.state === "AGENT_CONTROLLED" && isMine(c)));
    const handedOff = c.state === "AGENT_CONTROLLED" || c.state === "PENDING_AGENT";
    const claim = $("action-claim");
    claim.hidden = state.readOnly || !(c.state === "PENDING_AGENT" || (c.state === "BOT_CONTROLLED" && state.supervisor)
      || (c.state === "AGENT_CONTROLLED" && state.supervisor && !isMine(c)));
    claim.textContent = c.state === "PENDING_AGENT" ? "Claim" : "Take over";
    $("action-release").hidden = !(canManage && handedOff);
    const closable = canManage && c.state !== "CLOSED";
    $("close-area").hidden = !closable;
    if (!closable) confirmClose(false);
    $("transfer-form").hidden = !(canManage && handedOff);
    if (canManage && handedOff) loadTransferTargets();
    renderTransferTargets(c);
    $("actions").hidden = state.readOnly;

    const composer = $("composer");
    composer.hidden = state.readOnly;
    const blocked = composerBlocked(c);
    const textBlocked = blocked || (windowOpen ? null : WINDOW_CLOSED_NOTE);
    $("composer-text").disabled = Boolean(textBlocked);
    $("composer-send").disabled = Boolean(textBlocked);
    $("composer-attach").disabled = Boolean(textBlocked);
    $("composer-note").textContent = textBlocked || (offeredToMe(c) || c.state === "PENDING_AGENT"
      ? "Replying claims this conversation." : "");
    const picker = $("template-picker");
    picker.hidden = state.readOnly || Boolean(blocked);
    if (!picker.hidden && !windowOpen && state.pickerOpenedFor !== c.id) {
      state.pickerOpenedFor = c.id;
      picker.open = true;
    }
    renderTyping();
  }

  function isWindowOpen(c) {
    if (c.channel && c.channel.provider === "wasender") return true;   // a WhatsApp Web session: no window
    return Boolean(c.window_expires_at) && Date.parse(c.window_expires_at) > Date.now();
  }

  function composerBlocked(c) {
    if (c.state === "CLOSED") return "Closed. A new message from the customer reopens it with the bot.";
    if (c.state === "AGENT_CONTROLLED" && c.assigned_agent_id && !isMine(c)) {
      return `${agentName(c.assigned_agent_id)} holds this conversation.`;
    }
    if (c.state === "BOT_CONTROLLED" && !state.supervisor) {
      return "The bot holds this conversation; only supervisors take it over.";
    }
    return null;
  }

  /** GET /agents/online: the agents online now and every group; re-read at most every 10 s. */
  async function loadTransferTargets(force = false) {
    if (state.readOnly || (!force && Date.now() - state.transferTargetsAt < 10000)) return;
    const session = state.session;
    state.transferTargetsAt = Date.now();
    try {
      const targets = await api("GET", "/agents/online");
      if (session !== state.session) return;
      state.transferTargets = targets;
      if (state.open) renderTransferTargets(state.open);
    } catch (err) {
      if (session === state.session) report(err, $("detail-error"));
    }
  }

  function renderTransferTargets(c) {
    const select = $("transfer-target");
    const targets = state.transferTargets || { items: [], groups: [] };
    const groups = new Set(targets.groups);
    if (state.me) state.me.groups.forEach((g) => groups.add(g));
    if (c.group) groups.add(c.group);
    const me = state.me && state.me.id;
    const agents = targets.items.filter((a) => a.id !== c.assigned_agent_id && a.id !== me);
    const chosen = select.value;
    select.replaceChildren(
      el("option", { value: "" }, state.transferTargets ? "Pick a group or an agent…" : "Loading…"),
      el("optgroup", { label: "Groups" }, ...[...groups].sort().map((g) => el("option", { value: `group:${g}` },
        g === c.group ? `${g} (this conversation's group)` : g))),
      el("optgroup", { label: "Online agents" }, ...agents.map((a) => el("option", { value: `agent:${a.id}` },
        `${a.name} · ${a.groups.join(", ") || "no group"} · ${a.active_conversations}/${a.max_concurrent}`))));
    if ([...select.options].some((o) => o.value === chosen)) select.value = chosen;
  }

  /** Closing ends the conversation: it asks first, in the page. */
  function confirmClose(asking) {
    $("close-confirm").hidden = !asking;
    $("action-close").hidden = asking;
    if (asking) $("action-close-cancel").focus();
  }

  function renderTyping() {
    const note = $("typing-note");
    const t = state.typing;
    const active = t && t.until > Date.now();
    note.hidden = !active;
    note.textContent = !active ? "" : t.bot ? "The bot is typing…"
      : `${agentName(t.agentId) || "Another agent"} is typing…`;
  }

  // -- actions ----------------------------------------------------------------------------

  async function act(action, payload) {
    const id = state.openId;
    if (!id) return;
    $("detail-error").textContent = "";
    const buttons = document.querySelectorAll("#actions button");
    buttons.forEach((b) => { b.disabled = true; });
    try {
      const conversation = await api("POST", `/conversations/${enc(id)}/${action}`, payload);
      upsert(conversation);
      if (state.openId === id) state.open = state.conversations.get(id);
      renderDetail();
      renderList();
    } catch (err) {
      report(err, $("detail-error"));
    } finally {
      buttons.forEach((b) => { b.disabled = false; });
    }
  }

  function transfer(event) {
    event.preventDefault();
    const value = $("transfer-target").value;
    if (!value) {
      $("detail-error").textContent = "Pick a group or an agent to transfer to.";
      return;
    }
    const [kind, target] = [value.slice(0, value.indexOf(":")), value.slice(value.indexOf(":") + 1)];
    act("transfer", kind === "agent" ? { agent_id: target } : { group: target });
  }

  async function send(event) {
    event.preventDefault();
    const id = state.openId;
    const textarea = $("composer-text");
    const text = textarea.value.trim();
    const file = state.attachment;
    if (!id || (!text && !file)) return;
    $("composer-error").textContent = "";
    $("composer-send").disabled = true;
    try {
      let payload = { text };
      if (file) {
        // Upload first (Baton checks its type and size), then send it, the text as its caption.
        const form = new FormData();
        form.append("file", file, file.name);
        const uploaded = await api("POST", "/media", form);
        payload = text ? { media_id: uploaded.id, caption: text } : { media_id: uploaded.id };
      }
      const answer = await api("POST", `/conversations/${enc(id)}/messages`, payload);
      if (state.openId === id) {
        addMessage(answer.message);
        renderHistory();
        if (textarea.value.trim() === text) textarea.value = "";
        if (state.attachment === file) attach(null);
      }
      notePreview(id, answer.message);
      // Replying may have claimed it: read the conversation now rather than wait for the stream.
      const conversation = await api("GET", `/conversations/${enc(id)}`);
      upsert(conversation);
      if (state.openId === id) renderDetail();
      renderList();
    } catch (err) {
      report(err, $("composer-error"));
    } finally {
      $("composer-send").disabled = state.open
        ? Boolean(composerBlocked(state.open)) || !isWindowOpen(state.open) : false;
      // After the message, not before: ending a typing hold first would hand held messages to the bot.
      stopTyping(id);
    }
  }

  /** The file the next message carries (null: none); shown under the text box. */
  function attach(file) {
    state.attachment = file || null;
    if (!file) $("composer-file").value = "";
    $("composer-attachment").hidden = !file;
    $("composer-attachment-name").textContent = file ? `${file.name} (${fileSize(file.size)})` : "";
  }

  // -- templates ------------------------------------------------------------------------------

  async function loadTemplates() {
    const session = state.session;
    try {
      const answer = await api("GET", "/templates");
      if (session !== state.session) return;
      state.templates = answer;
      state.templatesAt = Date.now();
    } catch (err) {
      if (session !== state.session) return;
      state.templates = null;
      $("template-note").textContent = `The templates could not be read: ${describe(err)}`;
      return;
    }
    renderTemplatePicker();
  }

  function renderTemplatePicker() {
    const list = state.templates;
    const items = list ? list.items : [];
    const select = $("template-select");
    const chosen = select.value;
    select.replaceChildren(...items.map((t, i) => el("option", { value: String(i) },
      `${t.name} · ${t.language}${t.category ? ` (${t.category.toLowerCase()})` : ""}`)));
    if ([...select.options].some((o) => o.value === chosen)) select.value = chosen;
    const notes = [];
    if (list && !items.length) {
      notes.push(list.configured ? "No approved template is listed."
        : "No approved templates are listed here: an admin names them in TEMPLATES_FILE or WHATSAPP_WABA_ID.");
    }
    if (list && list.note && list.account_templates !== "not_configured") notes.push(list.note);
    $("template-note").textContent = notes.join(" ");
    $("template-send").disabled = !items.length;
    select.disabled = !items.length;
    renderTemplateParameters();
  }

  function chosenTemplate() {
    const list = state.templates;
    const index = Number($("template-select").value);
    return list && Number.isInteger(index) ? list.items[index] || null : null;
  }

  /** One input per parameter the chosen template takes: header, body {{1}}…, then its buttons'. */
  function renderTemplateParameters() {
    const t = chosenTemplate();
    $("template-text").textContent = t && t.text ? t.text : "";
    const fields = [];
    const field = (label, dataset) => {
      const id = `template-param-${fields.length / 2}`;
      fields.push(el("label", { for: id }, label),
        el("input", { id, type: ["image", "video", "document"].includes(dataset.kind) ? "url" : "text",
          spellcheck: "false", className: "template-param", dataset }));
    };
    const names = (t && t.parameter_names) || { header: [], body: [] };
    const named = (part, list, i) => (list[i] ? { component: part, kind: "text", name: list[i] }
      : { component: part, kind: "text" });
    if (t && t.header && t.header.parameters) {
      const media = t.header.format !== "text";
      if (media) field(`Header ${t.header.format} link`, { component: "header", kind: t.header.format });
      else field(`Header {{${names.header[0] || 1}}}`, named("header", names.header, 0));
    }
    for (let i = 0; t && i < t.body_parameters; i += 1) {
      field(`Body {{${names.body[i] || i + 1}}}`, named("body", names.body, i));
    }
    for (const button of (t ? t.buttons : [])) {
      if (!button.parameters) continue;
      field(`Button ${button.index + 1} (${button.type.replace("_", " ")})`,
        { component: "button", kind: BUTTON_PARAMETER[button.type] || "text", index: String(button.index),
          subType: button.type });
    }
    // A re-render of the same template (the list read again) keeps what the agent typed.
    const box = $("template-params");
    const key = t ? `${t.name}|${t.language}` : "";
    if (box.dataset.template === key) {
      const typed = new Map([...box.querySelectorAll(".template-param")].map((i) => [i.id, i.value]));
      for (const input of fields.filter((f) => f.tagName === "INPUT")) input.value = typed.get(input.id) || "";
    }
    box.dataset.template = key;
    box.replaceChildren(...fields);
  }

  /** The Cloud API components for the chosen template, from the filled inputs. */
  function templateComponents() {
    const header = [];
    const body = [];
    const buttons = [];
    for (const input of document.querySelectorAll("#template-params .template-param")) {
      const { component, kind, index, subType, name } = input.dataset;
      const value = input.value.trim();
      // A template written with named placeholders takes each text parameter with its name.
      const text = name ? { type: "text", parameter_name: name, text: value } : { type: "text", text: value };
      if (component === "header") {
        header.push(kind === "text" ? text : { type: kind, [kind]: { link: value } });
      } else if (component === "body") {
        body.push(text);
      } else {
        buttons.push({ type: "button", sub_type: subType, index, parameters: [{ type: kind, [kind]: value }] });
      }
    }
    return present([
      header.length ? { type: "header", parameters: header } : null,
      body.length ? { type: "body", parameters: body } : null,
      ...buttons]);
  }

  async function sendTemplate(event) {
    event.preventDefault();
    const id = state.openId;
    const t = chosenTemplate();
    if (!id || !t) return;
    $("template-error").textContent = "";
    const empty = [...document.querySelectorAll("#template-params .template-param")].some((i) => !i.value.trim());
    if (empty) {
      $("template-error").textContent = "Fill in every parameter of the template.";
      return;
    }
    $("template-send").disabled = true;
    try {
      const answer = await api("POST", `/conversations/${enc(id)}/messages`, {
        template: { name: t.name, language: t.language, components: templateComponents() },
      });
      if (state.openId === id) {
        addMessage(answer.message);
        renderHistory();
        document.querySelectorAll("#template-params .template-param").forEach((i) => { i.value = ""; });
      }
      const conversation = await api("GET", `/conversations/${enc(id)}`);
      upsert(conversation);
      if (state.openId === id) renderDetail();
      renderList();
    } catch (err) {
      report(err, $("template-error"));
    } finally {
      $("template-send").disabled = !chosenTemplate();
    }
  }

  function typed() {
    if (!state.openId || state.readOnly) return;
    if (!$("composer-text").value.trim()) return;
    if (Date.now() - state.typingSentAt < TYPING_EVERY_MS) return;
    sendTyping(state.openId, true);
  }

  function stopTyping(id = state.openId) {
    if (state.typingOn && id) sendTyping(id, false);
  }

  async function sendTyping(id, typing) {
    state.typingOn = typing;
    state.typingSentAt = typing ? Date.now() : 0;
    try {
      await api("POST", `/conversations/${enc(id)}/typing`, { typing });
    } catch (err) {
      if (state.openId === id) report(err, $("composer-error"));
    }
  }

  // -- live events ----------------------------------------------------------------------------

  function setLive(mode, text) {
    state.live = mode;
    const badge = $("live");
    badge.dataset.state = mode;
    badge.textContent = text || mode;
  }

  /** Read GET /events with fetch() and parse the SSE frames; reconnect with backoff. */
  async function liveStream(session) {
    let backoff = 1000;
    let retryMs = 1000;
    while (session === state.session) {
      const controller = new AbortController();
      state.stream = controller;
      setLive("connecting", "connecting…");
      try {
        const response = await fetch(`${API}/events`, {
          headers: { Authorization: `Bearer ${state.token}`, Accept: "text/event-stream" },
          cache: "no-store", signal: controller.signal,
        });
        if (session !== state.session) return;
        if (response.status === 401) {
          const payload = await response.json().catch(() => null);
          signOut(`Your token was refused: ${(payload && payload.message) || "unauthorized"}`);
          return;
        }
        if (response.status === 403 || response.status === 404) {
          // This token may not stream (or this Baton has no stream): keep the list fresh by polling.
          setLive("polling", "polling");
          return;
        }
        if (!response.ok || !response.body) throw new Error(`events answered ${response.status}`);
        setLive("live", "live");
        state.lastByteAt = Date.now();
        backoff = 1000;
        refreshAfterGap();
        const reader = response.body.getReader();
        const decoder = new TextDecoder();
        let buffer = "";
        for (;;) {
          const { value, done } = await reader.read();
          if (done || session !== state.session) break;
          state.lastByteAt = Date.now();
          buffer += decoder.decode(value, { stream: true });
          // Normalise line ends, but keep a trailing "\r" until we know whether "\n" follows it.
          const keep = buffer.endsWith("\r") ? 1 : 0;
          const complete = buffer.slice(0, buffer.length - keep).replace(/\r\n?/g, "\n");
          const frames = complete.split("\n\n");
          buffer = frames.pop() + buffer.slice(buffer.length - keep);
          for (const frame of frames) {
            const parsed = parseFrame(frame);
            if (parsed.retry !== null) retryMs = parsed.retry;
            if (parsed.event && parsed.data) handleEvent(parsed.event, parsed.data);
          }
          if (state.me && state.me.status === "online") heartbeatIfDue();
        }
      } catch (err) {
        if (session !== state.session) return;
      }
      if (session !== state.session) return;
      const wait = Math.max(backoff, retryMs) + Math.floor(Math.random() * 500);
      setLive("reconnecting", `reconnecting in ${Math.round(wait / 1000)} s`);
      await sleep(wait);
      backoff = Math.min(backoff * 2, BACKOFF_MAX_MS);
    }
  }

  function parseFrame(frame) {
    let event = "message";
    const data = [];
    let retry = null;
    for (const line of frame.split("\n")) {
      if (!line || line.startsWith(":")) continue;
      const colon = line.indexOf(":");
      const field = colon < 0 ? line : line.slice(0, colon);
      let value = colon < 0 ? "" : line.slice(colon + 1);
      if (value.startsWith(" ")) value = value.slice(1);
      if (field === "event") event = value;
      else if (field === "data") data.push(value);
      else if (field === "retry" && /^\d+$/.test(value)) retry = Number(value);
    }
    return { event, data: data.join("\n"), retry };
  }

  function handleEvent(type, raw) {
    let event;
    try {
      event = JSON.parse(raw);
    } catch (err) {
      return;
    }
    const id = event.conversation_id;
    const data = event.data || {};
    if (type === "conversation.updated") {
      upsert(data);
      if (state.openId === id) renderDetail();
      renderList();
    } else if (type === "message.created") {
      const previewed = notePreview(id, data);
      if (state.openId === id) {
        if (data.sender === "bot" && state.typing && state.typing.bot) {
          state.typing = null;                     // the answer is here
          renderTyping();
        }
        addMessage(data);
        renderHistory();
        if (previewed) renderList();
      } else {
        if (data.direction === "in") state.unread.add(id);
        if (previewed || data.direction === "in") renderList();
      }
    } else if (type === "message.updated") {
      if (state.openId === id && updateMessage(data)) renderHistory();
    } else if (type === "typing") {
      if (state.openId !== id || (state.me && data.agent_id === state.me.id)) return;
      state.typing = data.typing ? { agentId: data.agent_id, bot: Boolean(data.bot),
        until: Date.parse(data.expires_at) || Date.now() + 10000 } : null;
      renderTyping();
      if (state.typing) setTimeout(renderTyping, state.typing.until - Date.now() + 50);
    }
  }

  /** After (re)connecting, re-read what the stream may have missed. */
  function refreshAfterGap() {
    refreshList();
    if (state.openId) refreshOpen();
    if (state.supervisor) loadAgents();
  }

  async function refreshOpen() {
    const id = state.openId;
    try {
      const conversation = await api("GET", `/conversations/${enc(id)}`);
      if (state.openId !== id) return;
      upsert(conversation);
      renderDetail();
      await loadMessages(id);
    } catch (err) {
      if (state.openId === id) report(err, $("detail-error"));
    }
  }

  // -- timers -------------------------------------------------------------------------------

  function startTimers(session) {
    const every = (ms, fn) => state.timers.push(setInterval(() => { if (session === state.session) fn(); }, ms));
    every(HEARTBEAT_MS, heartbeatIfDue);
    every(POLL_MS, () => {
      if (state.live === "live") return;
      refreshList();
      if (state.openId) refreshOpen();
    });
    every(TICK_MS, () => {
      renderList();
      if (state.open) renderDetail();
    });
    every(STATUS_POLL_MS, () => {
      if (state.live === "live") return;           // message.updated events bring the ticks
      const inFlight = state.messages.some((m) => m.direction === "out" && (m.status === "queued" || m.status === "unknown" ||
        (m.status === "sent" && since(m.sent_at) < 600000)));
      if (state.openId && inFlight) reloadHistory().catch((err) => report(err, $("detail-error")));
    });
    every(5000, () => {
      if (state.live === "live" && Date.now() - state.lastByteAt > STALL_MS && state.stream) state.stream.abort();
    });
  }

  // -- wiring -------------------------------------------------------------------------------

  function wire() {
    $("signin-form").addEventListener("submit", async (event) => {
      event.preventDefault();
      const token = $("token").value.trim();
      if (!token) return;
      $("signin-submit").disabled = true;
      $("signin-error").textContent = "";
      try {
        await signIn(token);
      } catch (err) {
        $("signin-error").textContent = describe(err);
      } finally {
        $("signin-submit").disabled = false;
      }
    });
    $("sign-out").addEventListener("click", () => signOut());
    $("notice-close").addEventListener("click", () => { $("notice").hidden = true; });
    $("presence").addEventListener("change", (event) => setPresence(event.target.value));
    for (const button of document.querySelectorAll("[data-tab]")) {
      button.addEventListener("click", () => selectTab(button.dataset.tab));
    }
    $("action-claim").addEventListener("click", () => act("claim"));
    $("action-release").addEventListener("click", () => act("release", {}));
    $("action-close").addEventListener("click", () => confirmClose(true));
    $("action-close-cancel").addEventListener("click", () => confirmClose(false));
    $("action-close-confirm").addEventListener("click", () => {
      confirmClose(false);
      act("close", {});
    });
    $("transfer-target").addEventListener("focus", () => loadTransferTargets());
    $("transfer-form").addEventListener("submit", transfer);
    $("composer").addEventListener("submit", send);
    $("composer-attach").addEventListener("click", () => $("composer-file").click());
    $("composer-file").addEventListener("change", (event) => attach(event.target.files[0] || null));
    $("composer-attachment-remove").addEventListener("click", () => attach(null));
    $("lightbox").addEventListener("click", closeLightbox);
    document.addEventListener("keydown", (event) => {
      if (event.key === "Escape" && !$("lightbox").hidden) closeLightbox();
    });
    $("template-form").addEventListener("submit", sendTemplate);
    $("template-select").addEventListener("change", () => {
      $("template-error").textContent = "";
      renderTemplateParameters();
    });
    $("template-picker").addEventListener("toggle", () => {
      if ($("template-picker").open && Date.now() - state.templatesAt > TEMPLATES_MAX_AGE_MS) loadTemplates();
    });
    const textarea = $("composer-text");
    textarea.addEventListener("input", typed);
    textarea.addEventListener("keydown", (event) => {
      if (event.key === "Enter" && !event.shiftKey && !event.isComposing) {
        event.preventDefault();
        $("composer").requestSubmit();
      }
    });
    textarea.addEventListener("blur", (event) => {
      // Leaving for the Send button is not "stopped typing": send() says so after the message.
      if (event.relatedTarget && $("composer").contains(event.relatedTarget)) return;
      stopTyping();
    });
    window.addEventListener("popstate", () => {
      if (!state.token) return;
      const id = conversationFromPath();
      if (id && id !== state.openId) openConversation(id, { push: false });
      else if (!id && state.openId) closeDetail();
    });
  }

  wire();
  const saved = sessionStorage.getItem(TOKEN_KEY);
  if (saved) {
    signIn(saved).catch((err) => {
      sessionStorage.removeItem(TOKEN_KEY);
      $("signin-error").textContent = describe(err);
    });
  }
})();
