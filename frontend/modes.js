// The mode follows the source, and no frame ever meets parameters that do not fit it. A frame waiting at the server
// takes the parameters in force when its turn comes, so a mode change waits until the frames in flight are answered,
// and the pump waits (`settled`) until the server confirms the mode the controls show. Switching Webcam -> Text only
// therefore never sends an empty frame to an image mode, nor leaves one waiting while the mode becomes image.

import { fittingModes } from "./sources.js";

const DRAIN_POLL_MS = 20;

export class Modes {
  constructor({ controls, session, pump }) {
    this.controls = controls;
    this.session = session;
    this.pump = pump;
    this.model = null; // the modes the model has loaded (null: unknown yet)
    this.server = null; // the mode in force on the server (its latest params)
    this.held = null; // changes waiting for the frames in flight to be answered (a mode change and all after it)
  }

  /** The mode the controls show: what the visitor (or the source) asked for. */
  get wanted() {
    return this.controls.inputs.get("mode")?.input.value ?? this.server;
  }

  /** True when frames may go out: the server holds the mode the controls show. */
  get settled() {
    return this.wanted === this.server;
  }

  /** Offer the modes that fit the source; a new source starts in its own mode, a reconnect keeps a fitting one. */
  fit(source, newSource) {
    const fitting = fittingModes(source, this.controls.modeInfo.inputs)
      .filter((m) => !this.model || this.model.includes(m));
    if (!fitting.length) return; // no schema yet: buildControls fits the source once it has one
    this.controls.restrict("mode", fitting);
    const mode = this.controls.inputs.get("mode")?.input.value;
    if (mode && (newSource ? mode !== fitting[0] : !fitting.includes(mode))) {
      this.controls.change("mode", fitting[0]);
      this.controls.flush(); // no debounce: frames of the new source wait for it
    }
    this.pump.touch();
  }

  /** The controls' onChange: a mode change goes out once no frame is in flight (the pump holds new ones). Changes
   * made while one waits join it, later values winning, and go out with it in one message: two quick mode changes
   * (Webcam -> Sketch -> Text only) must not reach the server in the wrong order. */
  send(changed) {
    if (!this.held && !("mode" in changed)) return this.session.sendParams(changed);
    const waiting = this.held !== null;
    this.held = { ...this.held, ...changed };
    if (!waiting) this.#drain();
  }

  #drain() {
    if (this.session.inFlight.size) return setTimeout(() => this.#drain(), DRAIN_POLL_MS);
    const changed = this.held;
    this.held = null;
    this.session.sendParams(changed);
  }

  /** Parameters in force (welcome or params_ok). The mode control is left alone: a params_ok for an earlier mode
   * change must not undo a later one (the welcome handler sets it for a fresh session). */
  confirmed(params) {
    this.server = params.mode;
    const { mode, ...rest } = params;
    this.controls.set(rest);
    this.pump.textOnly = this.controls.modeInfo.inputs[mode] === "none"; // takes no picture: send empty frames
    this.pump.touch();
  }

  /** The server refused a mode (e.g. not loaded): show the one in force again. */
  refused() {
    this.controls.set({ mode: this.server });
  }
}
