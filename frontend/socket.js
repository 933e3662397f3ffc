// One real-time session over a WebSocket: handshake, flow control (frames in flight), and reconnecting with
// exponential backoff. Events (EventTarget, `detail` carries the data): config, loading, welcome, queued, active, params,
// timeleft, frame, control, error, closed, reconnecting.

import * as P from "./protocol.js";

const BACKOFF_MS = [500, 1000, 2000, 4000, 5000];
const BUSY_MIN_MS = 3000; // "server full" and friends: do not knock too often
const STALE_MS = 15000; // a frame unanswered this long no longer blocks sending

export class Session extends EventTarget {
  constructor({ initialParams }) {
    super();
    this.initialParams = initialParams; // () => the params to send with hello
    this.ws = null;
    this.state = null;
    this.limits = { max_in_flight: 2 };
    this.features = [];
    this.inFlight = new Map(); // frame_id -> performance.now() at send
    this.nextId = 1;
    this.attempt = 0;
    this.stopped = false;
  }

  #emit(type, detail) {
    this.dispatchEvent(new CustomEvent(type, { detail }));
  }

  get canSend() {
    if (this.ws?.readyState !== WebSocket.OPEN || this.state !== P.State.ACTIVE) return false;
    const now = performance.now();
    for (const [id, at] of this.inFlight) if (now - at > STALE_MS) this.inFlight.delete(id);
    return this.inFlight.size < this.limits.max_in_flight;
  }

  /** Wait for the model (polling config.json), then connect. */
  async start() {
    this.stopped = false;
    for (;;) {
      let config = null;
      try {
        config = await (await fetch(P.configUrl(), { cache: "no-store" })).json();
      } catch {
        return this.#retry("The server cannot be reached.");
      }
      this.#emit("config", config);
      if (config.loading?.ready) return this.#connect();
      this.#emit("loading", config.loading);
      if (config.loading?.stage === "failed") return;
      await new Promise((r) => setTimeout(r, 1000));
      if (this.stopped) return;
    }
  }

  #connect() {
    const ws = new WebSocket(P.wsUrl());
    ws.binaryType = "arraybuffer";
    this.ws = ws;
    this.state = null;
    this.inFlight.clear();
    ws.onopen = () => ws.send(P.hello(this.initialParams()));
    ws.onmessage = (e) => (typeof e.data === "string" ? this.#onText(JSON.parse(e.data)) : this.#onFrame(e.data));
    ws.onclose = (e) => this.#onClose(ws, e);
  }

  #onText(msg) {
    switch (msg.type) {
      case P.Msg.WELCOME:
        this.attempt = 0;
        this.limits = msg.limits;
        this.features = msg.features || [];
        this.#emit("welcome", msg);
        this.#emit("params", msg.params);
        return this.#setState(msg.state, null);
      case P.Msg.STATE:
        return this.#setState(msg.state, msg.time_left_s);
      case P.Msg.QUEUE:
        return this.#emit("queued", { position: msg.position, length: msg.queue_length });
      case P.Msg.PARAMS_OK:
        return this.#emit("params", msg.params);
      case P.Msg.TIME_LEFT:
        return this.#emit("timeleft", msg.time_left_s);
      case P.Msg.ERROR:
        if (msg.frame_id != null) this.#ack(msg.frame_id);
        return this.#emit("error", msg);
      case P.Msg.GOODBYE:
        this.goodbye = msg.reason;
        return;
      default:
        return; // newer servers may add messages; ignoring them is safe
    }
  }

  #setState(state, timeLeft) {
    this.state = state;
    this.#emit(state === P.State.ACTIVE ? "active" : "queued", { timeLeft });
  }

  #onFrame(buffer) {
    const frame = P.decodeFrame(buffer);
    if (frame.isControl) return this.#emit("control", frame);
    this.#ack(frame.frameId);
    this.#emit("frame", frame);
  }

  #ack(frameId) {
    for (const id of this.inFlight.keys()) if (id <= frameId) this.inFlight.delete(id);
  }

  #onClose(ws, event) {
    if (ws !== this.ws) return;
    const reason = this.goodbye || P.Close[event.code]?.reason || "connection_lost";
    this.goodbye = null;
    this.ws = null;
    this.state = null;
    const retry = !this.stopped && (P.Close[event.code]?.retry ?? true);
    this.#emit("closed", { code: event.code, reason, text: P.Explain[reason] || `Closed (${event.code}).`, retry });
    if (retry) this.#retry(P.Explain[reason], reason);
  }

  #retry(text, reason = "connection_lost") {
    if (this.stopped) return;
    let base = BACKOFF_MS[Math.min(this.attempt, BACKOFF_MS.length - 1)];
    if (reason === "server_full" || reason === "too_many_sessions") base = Math.max(base, BUSY_MIN_MS);
    const delay = base * (0.8 + 0.4 * Math.random());
    this.attempt += 1;
    this.#emit("reconnecting", { delay, reason, text: text || P.Explain.connection_lost });
    clearTimeout(this.retryTimer);
    this.retryTimer = setTimeout(() => this.start(), delay);
  }

  /** Send one frame; `format` is a P.Format value, `bytes` an ArrayBuffer (or null for Format.NONE). */
  sendFrame(format, bytes) {
    if (!this.canSend) return false;
    const id = this.nextId++;
    const now = performance.now();
    this.inFlight.set(id, now);
    this.ws.send(P.encodeFrame(id, now, format, bytes));
    return true;
  }

  sendParams(params) {
    if (this.ws?.readyState === WebSocket.OPEN && this.state) this.ws.send(P.paramsMsg(params));
  }

  requestControl() {
    if (this.features.includes("control") && this.state === P.State.ACTIVE) this.ws.send(P.controlRequest());
  }

  /** Leave cleanly and do not reconnect. */
  stop() {
    this.stopped = true;
    clearTimeout(this.retryTimer);
    if (this.ws?.readyState === WebSocket.OPEN) this.ws.send(P.bye());
  }
}
