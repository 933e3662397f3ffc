// Wires the page together: session events -> status, controls, output and metrics; sources -> pump -> session.

import { Session } from "./socket.js";
import { QUIET_ERRORS, Explain } from "./protocol.js";
import { VideoSource } from "./camera.js";
import { Sketch } from "./sketch.js";
import { Controls } from "./controls.js";
import { Metrics } from "./metrics.js";
import { Status } from "./status.js";
import { Pump } from "./pump.js";
import { Sources, SOURCE_MODES } from "./sources.js";
import { OutputView } from "./view.js";
import { addPromptPresets, addSeedTools } from "./extras.js";

const $ = (id) => document.getElementById(id);

const status = new Status({ pill: "status", notice: "notice", noticeText: "notice-text", progress: "notice-progress",
  action: "notice-action", banner: "random-banner", timeLeft: "time-left" });
const metrics = new Metrics({ inFps: $("m-in"), outFps: $("m-out"), latency: $("m-latency"), server: $("m-server") });
const video = new VideoSource($("video"));
const sketch = new Sketch($("sketch"), $("guide"));
const controls = new Controls($("controls"), { onChange: (changed) => session.sendParams(changed) });
const session = new Session({ initialParams: () => (controls.inputs.size ? controls.values : {}) });
const pump = new Pump({ session, metrics, video, sketch });
const output = new OutputView({ session, sketch, controls, onError: (text) => status.flash(text) });
let modelModes = null;

/** Offer the modes that fit the source; a new source starts in its own mode, a reconnect keeps a fitting one. */
function fitModes(source, newSource) {
  const fitting = SOURCE_MODES[source].filter((m) => !modelModes || modelModes.includes(m));
  controls.restrict("mode", fitting);
  const mode = controls.inputs.get("mode")?.input.value;
  if (mode && (newSource ? mode !== fitting[0] : !fitting.includes(mode))) controls.change("mode", fitting[0]);
  pump.touch();
}

const sources = new Sources({
  video, sketch, pump,
  onSourceChange: (source) => fitModes(source, true),
  onError: (text) => status.flash(text, 8000),
});

session.addEventListener("loading", (e) => status.loading(e.detail));

/** Build the controls once from the schema (config.json lets visitors prepare a prompt while they wait). */
function buildControls(schema, model, params) {
  modelModes = model.modes || null;
  const choices = { ...(modelModes && { mode: modelModes }), ...(model.styles && { style: model.styles }) };
  controls.build(schema, params, choices);
  addPromptPresets(controls);
  addSeedTools(controls);
  fitModes(sources.current, false);
}

session.addEventListener("config", (e) => {
  const { schema, model, gradio } = e.detail;
  $("gradio-link").hidden = !gradio;
  if (!controls.inputs.size && schema && model) {
    const defaults = Object.fromEntries(Object.entries(schema.properties).map(([k, v]) => [k, v.default]));
    buildControls(schema, model, defaults);
  }
});

session.addEventListener("welcome", (e) => {
  const msg = e.detail;
  status.randomWeights(!!msg.model?.is_random);
  pump.setSize(msg.limits.size);
  output.setSize(msg.limits.size);
  if (!controls.inputs.size) buildControls(msg.schema, msg.model || {}, msg.params);
  else controls.set(msg.params);
  fitModes(sources.current, false);
  metrics.reset();
});

session.addEventListener("queued", (e) => {
  if (e.detail.position != null) status.queued(e.detail.position, e.detail.length);
  else status.set("queued", "In line");
});

session.addEventListener("active", (e) => {
  status.streaming();
  status.timeLeft(e.detail.timeLeft);
  controls.flush();
  pump.touch();
});

session.addEventListener("params", (e) => {
  controls.set(e.detail);
  output.params = e.detail;
  pump.textOnly = e.detail.mode === "text"; // text mode takes no picture: send empty frames
  pump.touch();
});

session.addEventListener("timeleft", (e) => status.timeLeft(e.detail));

session.addEventListener("frame", (e) => {
  const frame = e.detail;
  metrics.frameReceived(frame.clientTs, frame.serverMs);
  output.show(frame);
});

session.addEventListener("control", (e) => output.showControl(e.detail));

session.addEventListener("error", (e) => {
  const { code, message, field } = e.detail;
  if (QUIET_ERRORS.has(code) || e.detail.fatal) return; // fatal ones end in a goodbye, shown on close
  if (code === "invalid_params" && field) controls.showError(field, message);
  status.flash(`${Explain[code] || "Error"}: ${message}`);
});

session.addEventListener("reconnecting", (e) => {
  const { reason, text, delay } = e.detail;
  if (reason === "server_full" || reason === "too_many_sessions") status.full(text, delay);
  else if (reason !== "model_loading") status.reconnecting(delay, text);
});

session.addEventListener("closed", (e) => {
  const { retry, text, reason } = e.detail;
  output.stopRecording();
  if (retry) return;
  if (reason === "client") return status.ended("You left the session.", "Start again", restart);
  const label = reason === "idle_timeout" ? "Resume" : "Start again";
  if (["time_limit", "idle_timeout"].includes(reason)) status.ended(text, label, restart);
  else status.error(text, "Try again", restart);
});

function restart() {
  status.connecting();
  session.attempt = 0;
  session.start();
}

window.addEventListener("pagehide", () => session.stop());

status.connecting();
sources.select("camera");
session.start();
// Test and debugging hook: read-only views of the page's state.
window.sdxs = { session, metrics, controls, sketch, pump, output };
