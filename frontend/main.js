// Wires the page together: session events -> status, controls, output and metrics; sources -> pump -> session;
// Start/Stop -> runner. Nothing connects or asks for the camera before Start.

import { Session } from "./socket.js";
import { ErrorCode, QUIET_ERRORS, Reason, plainError } from "./protocol.js";
import { VideoSource } from "./camera.js";
import { Sketch } from "./sketch.js";
import { bindSketchTools } from "./sketchtools.js";
import { Controls } from "./controls.js";
import { Metrics } from "./metrics.js";
import { Phase, Status } from "./status.js";
import { Pump } from "./pump.js";
import { Modes } from "./modes.js";
import { Runner } from "./run.js";
import { Sources } from "./sources.js";
import { OutputView } from "./view.js";
import { addPromptPresets, addSeedTools } from "./extras.js";
import { LiveSettings, liveDefaults } from "./stability.js";
import { ModelNotes } from "./modelnotes.js";

const $ = (id) => document.getElementById(id);

const status = new Status({ pill: "status", notice: "notice", noticeText: "notice-text", progress: "notice-progress",
  action: "notice-action", banner: "model-banner", timeLeft: "time-left", hint: "output-hint" });
const metrics = new Metrics({ inFps: $("m-in"), outFps: $("m-out"), outUnit: $("m-out-unit"),
  latency: $("m-latency"), server: $("m-server"), skipped: $("m-skipped"), change: $("m-change") });
const video = new VideoSource($("video"));
const sketch = new Sketch($("sketch"), $("guide"));
const controls = new Controls($("controls"), { onChange: (changed) => modes.send(changed) });
const session = new Session({ initialParams: () => (controls.inputs.size ? controls.values : {}) });
const pump = new Pump({ session, metrics, video, sketch, settled: () => modes.settled });
const modes = new Modes({ controls, session, pump });
const output = new OutputView({ session, sketch, controls, preview: (ctx, size) => pump.drawInput(ctx, size),
  onError: (text) => status.flash(text), onChange: (value) => metrics.changed(value) });

let live = null; // LiveSettings (stability.js), once the controls are built
const notes = new ModelNotes({ sketch, controls, output: $("output"), brush: $("brush-size") });
const sources = new Sources({
  video, sketch, pump,
  onSourceChange: (source) => {
    status.clearNote(); // a refused camera is no news once another source is chosen
    live?.fit(source);
    modes.fit(source, true);
    notes.sourceChanged(source);
  },
  onError: (text) => status.flash(text, 8000),
  onUnavailable: (text) => status.note(text),
});
bindSketchTools(sketch, { isActive: () => sources.current === "sketch", onError: (text) => status.flash(text) });
const runner = new Runner({ session, sources, pump, status, button: $("start") });
$("swap").addEventListener("click", () => $("stage").classList.toggle("swapped")); // phones: big <-> small picture

status.onPhase = (phase) => {
  output.setPhase(phase);
  if (phase === Phase.STREAMING || phase === Phase.WAITING) metrics.reset(phase === Phase.WAITING); // 0 fps, no ms
  else metrics.blank();
};

session.addEventListener("loading", (e) => status.loading(e.detail));

/** Build the controls once from the schema (config.json lets visitors prepare a prompt before Start). */
function buildControls(schema, model, params) {
  modes.model = model.modes || null;
  const choices = { ...(modes.model && { mode: modes.model }), ...(model.styles && { style: model.styles }) };
  controls.build(schema, params, choices);
  addPromptPresets(controls, model.example_prompts || []);
  addSeedTools(controls);
  live = new LiveSettings(controls, schema);
  live.fit(sources.current);
  modes.fit(sources.current, true); // a source picked before the schema came starts in its own mode now
  notes.apply(model, sources.current);
}

/** No live stream here (ZeroGPU: a GPU per request): say why and offer the Gradio tabs. */
function noLive({ reason }) {
  status.set(Phase.ENDED, "No live stream");
  status.show(reason || plainError(Reason.NO_LIVE_STREAM),
    { action: "Open the Gradio tabs", onAction: () => location.assign("gradio/") });
}

session.addEventListener("nolive", (e) => {
  runner.ended(Reason.NO_LIVE_STREAM, e.detail.reason);
  noLive(e.detail);
});

session.addEventListener("config", (e) => {
  const { schema, model, gradio, live } = e.detail;
  $("gradio-link").hidden = !gradio;
  if (live && !live.available) noLive(live);
  if (model) status.modelNotice(model);
  if (!controls.inputs.size && schema && model) buildControls(schema, model, liveDefaults(schema));
});

session.addEventListener("welcome", (e) => {
  const msg = e.detail;
  if (msg.model) status.modelNotice(msg.model);
  pump.setSize(msg.limits.size);
  output.setSize(msg.limits.size);
  if (!controls.inputs.size) buildControls(msg.schema, msg.model || {}, msg.params);
  else controls.set(msg.params);
  modes.fit(sources.current, false);
});

session.addEventListener("queued", (e) => {
  if (e.detail.position != null) status.queued(e.detail.position, e.detail.length, session.limits);
  else status.set(Phase.QUEUED, "In line", "Preview. Your stream starts here by itself.");
});

session.addEventListener("active", (e) => {
  runner.activated();
  status.timeLeft(e.detail.timeLeft);
  controls.flush();
  pump.touch();
});

session.addEventListener("params", (e) => {
  modes.confirmed(e.detail);
  output.params = e.detail;
});

session.addEventListener("timeleft", (e) => status.timeLeft(e.detail));

session.addEventListener("frame", (e) => {
  metrics.frameReceived(e.detail);
  output.show(e.detail);
  if (e.detail.settling) pump.touch(); // an idle sketch or prompt is sent again: the change goes on to its end
});

session.addEventListener("control-image", (e) => output.showControl(e.detail));

session.addEventListener("error", (e) => {
  const { code, message, field, fatal } = e.detail;
  console.info(`server error ${code}: ${message}`);
  if (QUIET_ERRORS.has(code) || fatal) return; // fatal ones end in a goodbye, shown on close
  const title = field && document.querySelector(`[data-field="${field}"] > span`)?.textContent;
  if (code === ErrorCode.INVALID_PARAMS && field) controls.showError(field, message.replace(`${field}: `, ""));
  if (code === ErrorCode.INVALID_PARAMS && field === "mode") modes.refused();
  status.flash(plainError(code, title));
});

session.addEventListener("reconnecting", (e) => {
  const { reason, text, delay } = e.detail;
  if (reason === Reason.SERVER_FULL || reason === Reason.TOO_MANY_SESSIONS) status.full(text, delay);
  else if (reason !== Reason.MODEL_LOADING) status.reconnecting(delay, text);
});

session.addEventListener("closed", (e) => {
  const { retry, text, reason } = e.detail;
  output.stopRecording();
  if (!retry && runner.running) runner.ended(reason, text);
  if (reason === Reason.NO_LIVE_STREAM) noLive({ reason: text });
});

window.addEventListener("pagehide", () => session.stop());

status.idle();
sources.select("camera");
session.peek();
// Test and debugging hook: read-only views of the page's state.
window.sdxs = { session, metrics, controls, sketch, pump, output, runner, status, modes, notes };
