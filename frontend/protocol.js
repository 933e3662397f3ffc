// The wire protocol (docs/protocol.md, version 1). The ONLY module that knows message names, header layouts,
// close codes and error codes; everything else speaks in the terms exported here.

export const VERSION = 1;
const MAGIC0 = 0x53; // "S"
const MAGIC1 = 0x58; // "X"
const IN_HEADER = 16;
const OUT_HEADER = 40;

export const Format = Object.freeze({ NONE: 0, JPEG: 1, WEBP: 2, PNG: 3 });
const MIME = { 1: "image/jpeg", 2: "image/webp", 3: "image/png" };
export const Flags = Object.freeze({ REUSED: 1, SAFETY_REPLACED: 2, CONTROL: 4, SKIPPED: 8, SETTLING: 16 });

// Server -> client text messages.
export const Msg = Object.freeze({
  WELCOME: "welcome",
  STATE: "state",
  QUEUE: "queue",
  PARAMS_OK: "params_ok",
  TIME_LEFT: "time_left",
  PONG: "pong",
  ERROR: "error",
  GOODBYE: "goodbye",
});

export const State = Object.freeze({ QUEUED: "queued", ACTIVE: "active" });

// Client -> server text messages.
export const ClientMsg = Object.freeze({
  HELLO: "hello",
  PARAMS: "params",
  PING: "ping",
  BYE: "bye",
  CONTROL: "control",
});
export const hello = (params, outputFormat = "jpeg") =>
  JSON.stringify({ type: ClientMsg.HELLO, version: VERSION, params, output_format: outputFormat, client: "sdxs-page" });
export const paramsMsg = (params) => JSON.stringify({ type: ClientMsg.PARAMS, params });
export const ping = (t) => JSON.stringify({ type: ClientMsg.PING, t });
export const bye = () => JSON.stringify({ type: ClientMsg.BYE });
// Optional feature "control" (section 2): only sent when `welcome.features` lists it.
export const controlRequest = () => JSON.stringify({ type: ClientMsg.CONTROL });

// `error.code` values (section 6).
export const ErrorCode = Object.freeze({
  BAD_JSON: "bad_json",
  UNKNOWN_TYPE: "unknown_type",
  BAD_MESSAGE: "bad_message",
  NOT_READY: "not_ready",
  UNSUPPORTED_VERSION: "unsupported_version",
  HANDSHAKE_TIMEOUT: "handshake_timeout",
  MESSAGE_TOO_BIG: "message_too_big",
  BAD_FRAME_HEADER: "bad_frame_header",
  BAD_FRAME_ID: "bad_frame_id",
  FLOW_CONTROL: "flow_control",
  NOT_ACTIVE: "not_active",
  BAD_IMAGE: "bad_image",
  IMAGE_TOO_SMALL: "image_too_small",
  IMAGE_TOO_LARGE: "image_too_large",
  IMAGE_REQUIRED: "image_required",
  INVALID_PARAMS: "invalid_params",
  INFERENCE_FAILED: "inference_failed",
  NO_CONTROL: "no_control",
  MODEL_LOADING: "model_loading",
  SERVER_FULL: "server_full",
  TOO_MANY_SESSIONS: "too_many_sessions",
  POLICY_VIOLATION: "policy_violation",
  INTERNAL_ERROR: "internal_error",
  NO_LIVE_STREAM: "no_live_stream",
});

// `goodbye.reason` values (section 7), and what the page calls a close that came without one.
export const Reason = Object.freeze({
  CLIENT: "client",
  TIME_LIMIT: "time_limit",
  IDLE_TIMEOUT: "idle_timeout",
  HANDSHAKE: "handshake",
  POLICY_VIOLATION: "policy_violation",
  SERVER_FULL: "server_full",
  TOO_MANY_SESSIONS: "too_many_sessions",
  MODEL_LOADING: "model_loading",
  SERVER_SHUTDOWN: "server_shutdown",
  INTERNAL_ERROR: "internal_error",
  SLOW_CONSUMER: "slow_consumer",
  NO_LIVE_STREAM: "no_live_stream",
  CONNECTION_LOST: "connection_lost",
  TRY_AGAIN_LATER: "try_again_later",
});

// Optional features a server lists in `welcome.features` and config.json (section 2).
export const Feature = Object.freeze({ CONTROL: "control" });

// `goodbye.reason` -> the close code that follows it (section 7).
export const GoodbyeClose = Object.freeze({
  client: 1000,
  time_limit: 4000,
  idle_timeout: 4001,
  handshake: 4002,
  policy_violation: 1008,
  server_full: 1013,
  too_many_sessions: 1013,
  model_loading: 1013,
  server_shutdown: 1001,
  internal_error: 1011,
  slow_consumer: 1008,
  no_live_stream: 4003,
});

/** What the page should do after a close, by close code / goodbye reason (section 7). */
export const Close = Object.freeze({
  1000: { reason: "client", retry: false },
  1001: { reason: "server_shutdown", retry: true },
  1006: { reason: "connection_lost", retry: true },
  1008: { reason: "policy_violation", retry: false },
  1009: { reason: "message_too_big", retry: false },
  1011: { reason: "internal_error", retry: true },
  1013: { reason: "try_again_later", retry: true },
  4000: { reason: "time_limit", retry: false },
  4001: { reason: "idle_timeout", retry: false },
  4002: { reason: "handshake", retry: false },
  4003: { reason: "no_live_stream", retry: false },
});

/** Plain words for error codes and goodbye reasons (section 6 and 7). */
export const Explain = Object.freeze({
  server_full: "The server is full right now (all places and the waiting line are taken). Trying again shortly…",
  too_many_sessions: "This address already has the most sessions allowed. Close another tab to start here.",
  model_loading: "The model is still loading.",
  policy_violation: "The connection was closed because the page sent invalid data too often.",
  slow_consumer: "The connection was too slow to keep up.",
  time_limit: "Your session time is up. Start again to rejoin the line.",
  idle_timeout: "Paused because nothing happened for a while.",
  handshake: "This page and the server speak different protocol versions. Reload the page.",
  server_shutdown: "The server is restarting.",
  internal_error: "The server hit an internal error.",
  invalid_params: "A setting was not accepted; the previous value stays.",
  inference_failed: "The model failed on a frame; it will try the next one.",
  bad_image: "A frame could not be read by the server.",
  image_required: "This mode needs an input picture (webcam, sketch, screen or video).",
  connection_lost: "Connection lost.",
  no_live_stream: "This server offers no live stream (it lends a GPU per request). Use the Gradio tabs instead.",
});

/** A plain sentence for a non-fatal `error` message; the server's technical `message` is for the console (and,
 * for a refused setting, next to that field). `fieldTitle`: the refused field's label. */
export function plainError(code, fieldTitle) {
  if (code === ErrorCode.INVALID_PARAMS && fieldTitle) return `${fieldTitle} was not accepted; the previous value stays.`;
  return Explain[code] || "Something went wrong with one picture; the stream goes on.";
}

/** Errors that only concern one frame or field; the rest are shown to the visitor as a notice. */
export const QUIET_ERRORS = new Set([ErrorCode.FLOW_CONTROL, ErrorCode.BAD_FRAME_ID, ErrorCode.NOT_ACTIVE,
  ErrorCode.NO_CONTROL]);

/** Encode an input frame: 16-byte header (magic, version, format, frame_id u32, client_ts f64) + image bytes. */
export function encodeFrame(frameId, clientTs, format, imageBytes) {
  const body = imageBytes ? new Uint8Array(imageBytes) : new Uint8Array(0);
  const out = new Uint8Array(IN_HEADER + body.length);
  const v = new DataView(out.buffer);
  out[0] = MAGIC0;
  out[1] = MAGIC1;
  out[2] = VERSION;
  out[3] = format;
  v.setUint32(4, frameId, true);
  v.setFloat64(8, clientTs, true);
  out.set(body, IN_HEADER);
  return out.buffer;
}

/** Decode an output frame (40-byte header) into its fields and a Blob of the image. */
export function decodeFrame(buffer) {
  const v = new DataView(buffer);
  if (buffer.byteLength < OUT_HEADER || v.getUint8(0) !== MAGIC0 || v.getUint8(1) !== MAGIC1) {
    throw new Error("bad output frame header");
  }
  const flags = v.getUint16(36, true);
  return {
    frameId: v.getUint32(4, true),
    clientTs: v.getFloat64(8, true),
    queueMs: v.getFloat32(16, true),
    decodeMs: v.getFloat32(20, true),
    inferenceMs: v.getFloat32(24, true),
    encodeMs: v.getFloat32(28, true),
    serverMs: v.getFloat32(32, true),
    reused: !!(flags & Flags.REUSED),
    skipped: !!(flags & Flags.SKIPPED), // nearly the same input: the last generated picture again, no inference
    settling: !!(flags & Flags.SETTLING), // a step of a change over several frames: the same input gives the next
    safetyReplaced: !!(flags & Flags.SAFETY_REPLACED),
    isControl: !!(flags & Flags.CONTROL),
    batchSize: v.getUint8(38),
    image: new Blob([new Uint8Array(buffer, OUT_HEADER)], { type: MIME[v.getUint8(3)] || "image/jpeg" }),
  };
}

/** URLs relative to the page, so the app works under a reverse-proxy path prefix. */
export function wsUrl(path = "ws") {
  const url = new URL(path, location.href);
  url.protocol = url.protocol === "https:" ? "wss:" : "ws:";
  return url.href;
}
export const configUrl = () => new URL("config.json", location.href).href;
