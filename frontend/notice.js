// The notice line under the header: a sentence, an optional progress bar and one action button. Each notice says
// how long it is true: a phase's own (it goes when the pill leaves that phase), a passing one (`flash`: a few
// seconds) or a lasting one (`note`: a condition that holds until the visitor acts, e.g. a refused camera).

export const Kind = Object.freeze({ PHASE: "phase", FLASH: "flash", NOTE: "note" });

export class Notice {
  constructor({ box, text, progress, action }) {
    this.box = box;
    this.text = text;
    this.progress = progress;
    this.action = action;
    this.kind = null; // the Kind of the notice shown, null while hidden
    this.onAction = null;
    action.addEventListener("click", () => this.onAction?.());
  }

  show(text, { progress = null, action = null, onAction = null, kind = Kind.PHASE } = {}) {
    clearTimeout(this.flashTimer);
    this.kind = kind;
    this.box.hidden = false;
    this.text.textContent = text;
    this.progress.hidden = progress == null;
    if (progress != null) this.progress.value = progress;
    this.action.hidden = !action;
    this.action.textContent = action || "";
    this.onAction = onAction;
  }

  /** A passing message; after `ms` it goes when `canGo()` (e.g. the stream is live), else with the phase. */
  flash(text, ms, canGo) {
    this.show(text, { kind: Kind.FLASH });
    this.flashTimer = setTimeout(() => (canGo() ? this.hide() : (this.kind = Kind.PHASE)), ms);
  }

  hide() {
    clearTimeout(this.flashTimer);
    this.kind = null;
    this.box.hidden = true;
  }

  /** The pill changed phase: what belonged to the old phase goes; flashes and notes stay. */
  phaseChanged() {
    if (this.kind === Kind.PHASE) this.hide();
  }

  /** Take back a lasting note (its condition is over); anything shown since then stays. */
  clearNote() {
    if (this.kind === Kind.NOTE) this.hide();
  }
}
