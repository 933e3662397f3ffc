// Controls about how people work rather than about the schema: style presets that complete the prompt, and the
// seed's shuffle button and lock (unlocked: every new prompt gets a new seed).

import { el } from "./controls.js";

const PRESETS = {
  "": "",
  Photo: "photo, 35mm, natural light, highly detailed",
  Anime: "anime style, cel shading, vibrant colors",
  "Oil painting": "oil painting, thick brush strokes",
  Watercolor: "watercolor painting, soft edges",
  "Pixel art": "pixel art, 16-bit",
  "3D render": "3d render, soft studio lighting",
};

const randomSeed = () => Math.floor(Math.random() * 2 ** 31);

/** Add a preset picker above the prompt: the model's own example prompts when it has some (the miniature knows
 * only digits), else style presets that replace the words after the last " | ". The picker names what the prompt
 * says: typing the style words away (or typing a preset's words) changes it too. */
export function addPromptPresets(controls, examples = []) {
  const prompt = controls.inputs.get("prompt");
  if (!prompt) return;
  if (examples.length) return addExamples(controls, prompt, examples);
  const select = el("select", { id: "preset", title: "Style preset" },
    ...Object.keys(PRESETS).map((k) => el("option", { value: k }, k || "Style preset…")));
  select.addEventListener("change", () => {
    const subject = prompt.input.value.split(" | ")[0].trim();
    controls.change("prompt", select.value ? `${subject} | ${PRESETS[select.value]}` : subject);
  });
  const named = (text) => {
    const style = text.includes(" | ") ? text.split(" | ").pop().trim() : "";
    return Object.keys(PRESETS).find((k) => style && PRESETS[k] === style) || "";
  };
  prompt.input.addEventListener("input", () => (select.value = named(prompt.input.value)));
  prompt.row.parentElement.before(el("label", { className: "field" }, el("span", {}, "Style preset"), select));
  select.value = named(prompt.input.value);
}

function addExamples(controls, prompt, examples) {
  const select = el("select", { id: "preset", title: "Prompts this model knows" },
    el("option", { value: "" }, "Example prompt…"), ...examples.map((p) => el("option", { value: p }, p)));
  select.addEventListener("change", () => select.value && controls.change("prompt", select.value));
  prompt.input.addEventListener("input", () => (select.value = examples.includes(prompt.input.value) ?
    prompt.input.value : ""));
  prompt.row.parentElement.before(el("label", { className: "field" }, el("span", {}, "Example prompt"), select));
  if (!examples.includes(prompt.input.value)) controls.change("prompt", examples[0]);
  select.value = prompt.input.value;
}

export function addSeedTools(controls) {
  const seed = controls.inputs.get("seed");
  if (!seed) return;
  const shuffle = el("button", { type: "button", textContent: "Shuffle", title: "A new random seed" });
  shuffle.addEventListener("click", () => controls.change("seed", randomSeed()));
  const lock = el("input", { type: "checkbox", checked: true, id: "seed-lock" });
  const lockLabel = el("label", { className: "nowrap", title: "Unlocked: a new seed for every new prompt" },
    lock, " Lock");
  seed.row.append(shuffle, lockLabel);
  controls.inputs.get("prompt")?.input.addEventListener("input", () => {
    if (!lock.checked) controls.change("seed", randomSeed());
  });
}
