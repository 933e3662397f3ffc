// The sketch toolbar: pen/eraser, brush size, undo/redo (also Ctrl+Z / Ctrl+Shift+Z), clear, download, and an image
// to trace under the strokes that can be removed again.

const $ = (id) => document.getElementById(id);

/** `isActive()`: the sketch is the current source (keyboard shortcuts apply); `onError(text)`: tell the visitor. */
export function bindSketchTools(sketch, { isActive, onError }) {
  for (const radio of document.querySelectorAll('input[name="tool"]')) {
    radio.addEventListener("change", () => radio.checked && sketch.setTool(radio.value));
  }
  $("brush-size").addEventListener("input", (e) => sketch.setSize(e.target.value));
  $("undo").addEventListener("click", () => sketch.undo());
  $("redo").addEventListener("click", () => sketch.redo());
  $("clear").addEventListener("click", () => sketch.clear());
  $("download-sketch").addEventListener("click", () => sketch.download());
  $("trace-file").addEventListener("change", (e) => {
    const file = e.target.files[0];
    e.target.value = ""; // the same file can be chosen again after removing it
    if (!file) return;
    sketch.loadGuide(file).then(
      () => ($("remove-guide").hidden = false),
      () => onError("That file is not an image this browser can read."),
    );
  });
  $("remove-guide").addEventListener("click", () => {
    sketch.clearGuide();
    $("remove-guide").hidden = true;
  });
  document.addEventListener("keydown", (e) => {
    if (!isActive() || !(e.ctrlKey || e.metaKey) || e.target.closest("input, textarea")) return;
    const key = e.key.toLowerCase();
    if (key === "z" && !e.shiftKey) sketch.undo();
    else if (key === "y" || (key === "z" && e.shiftKey)) sketch.redo();
    else return;
    e.preventDefault();
  });
}
