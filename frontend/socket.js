// One real-time session over a WebSocket: handshake, flow control (frames in flight), and reconnecting with
// exponential backoff. Events (EventTarget, `detail` carries the data): config, loading, welcome, queued, active, params,
// timeleft, frame, control, error, closed, reconnecting.

import * as P from "./protocol.js";
import { InFlight } from "./flight.js";

const BACKOFF_MS = [500, 1000, 2000, 4000, 5000];
const BUSY_MIN_MS = 3000; // "server full" and friends: do not knock too often

export class Session extends EventTarget {
  constructor({ initialParams }) {
    super();
    this.initialParams = initialParams; // () => the params to send with hello
    this.ws = null;
    this.state = null;
    this.limits = {};
    this.features = [];
    this.inFlight = new InFlight();
    this.attempt = 0;
    this.run = 0;
    this.stopped = false;
  }

  #emit(type, detail) {
    this.dispatchEvent(new CustomEvent(type, { detail }));
  }

  get active() {
    return this.ws?.readyState === WebSocket.OPEN && this.state === P.State.ACTIVE;
  }

  get canSend() {
    return this.active && !this.inFlight.full;
  }

  /** Fetch config.json once (event "config"; its optional features hold before Start too); null when the server
   * cannot be reached. */
  async peek() {
    try {
      const config = await (await fetch(P.configUrl(), { cache: "no-store" })).json();
      if (!this.active) this.features = config.features || [];
      this.#emit("config", config);
      return config;
    } catch {
      return null;
    }
  }

  /** Wait for the model (polling config.json), then connect. */
  async start() {
    const run = ++this.run; // a later start() or stop() ends this one
    this.stopped = false;
    clearTimeout(this.retryTimer);
    for (;;) {
      const config = await this.peek();
      if (run !== this.run) return;
      if (!config) return this.#retry("The server cannot be reached.");
      if (config.live && !config.live.available) return this.#emit("nolive", config.live); // ZeroGPU: Gradio only
      if (config.loading?.ready) return this.#connect();
      this.#emit("loading", config.loading);
      if (config.loading?.stage === "failed") return;
      await new Promise((r) => setTimeout(r, 1000));
      if (run !== this.run) return;
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
        this.inFlight.limit = msg.limits.max_in_flight;
        this.features = msg.features || [];
        this.state = msg.state; // handlers may send params right away
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
        if (msg.frame_id != null) this.inFlight.ack(msg.frame_id);
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
    if (frame.isControl) return this.#emit("control-image", frame);
    this.inFlight.ack(frame.frameId);
    this.#emit("frame", frame);
  }

  #onClose(ws, event) {
    if (ws !== this.ws) return;
    const reason = this.goodbye || P.Close[event.code]?.reason || P.Reason.CONNECTION_LOST;
    this.goodbye = null;
    this.ws = null;
    this.state = null;
    this.inFlight.clear(); // no answers will come
    const retry = !this.stopped && (P.Close[event.code]?.retry ?? true);
    this.#emit("closed", { code: event.code, reason, text: P.Explain[reason] || `Closed (${event.code}).`, retry });
    if (retry) this.#retry(P.Explain[reason], reason);
  }

  #retry(text, reason = P.Reason.CONNECTION_LOST) {
    if (this.stopped) return;
    let base = BACKOFF_MS[Math.min(this.attempt, BACKOFF_MS.length - 1)];
    if (reason === P.Reason.SERVER_FULL || reason === P.Reason.TOO_MANY_SESSIONS) base = Math.max(base, BUSY_MIN_MS);
    const delay = base * (0.8 + 0.4 * Math.random());
    this.attempt += 1;
    this.#emit("reconnecting", { delay, reason, text: text || P.Explain[P.Reason.CONNECTION_LOST] });
    clearTimeout(this.retryTimer);
    this.retryTimer = setTimeout(() => this.start(), delay);
  }

  /** Send one frame; `format` is a P.Format value, `bytes` an ArrayBuffer (or null for Format.NONE). */
  sendFrame(format, bytes) {
    if (!this.canSend) return false;
    const { id, at } = this.inFlight.add();
    this.ws.send(P.encodeFrame(id, at, format, bytes));
    return true;
  }

  sendParams(params) {
    if (this.ws?.readyState === WebSocket.OPEN && this.state) this.ws.send(P.paramsMsg(params));
  }

  requestControl() {
    if (this.features.includes(P.Feature.CONTROL) && this.state === P.State.ACTIVE) this.ws.send(P.controlRequest());
  }

  /** Leave cleanly (bye, then close: the slot or queue place is free at once) and do not reconnect. */
  stop() {
    this.run += 1;
    this.stopped = true;
    clearTimeout(this.retryTimer);
    const ws = this.ws;
    if (!ws) return;
    if (ws.readyState === WebSocket.OPEN) ws.send(P.bye());
    ws.close(1000);
    this.#onClose(ws, { code: 1000 }); // closed now for the page; the close handshake may finish later
  }
}
