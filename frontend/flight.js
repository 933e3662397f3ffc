// Frames in flight (docs/protocol.md section 5): a frame counts from sending until the page receives an output frame
// or an error whose frame_id is equal or greater. At most `limit` at once; a lost answer blocks for STALE_MS at most.

const STALE_MS = 15000;

export class InFlight {
  constructor() {
    this.sent = new Map(); // frame_id -> performance.now() at send
    this.limit = 2; // the welcome's limits.max_in_flight
    this.nextId = 1; // frame ids only grow, across reconnects too
  }

  get size() {
    const now = performance.now();
    for (const [id, at] of this.sent) if (now - at > STALE_MS) this.sent.delete(id);
    return this.sent.size;
  }

  get full() {
    return this.size >= this.limit;
  }

  /** A new frame leaves now: its id and timestamp. */
  add() {
    const id = this.nextId++;
    const at = performance.now();
    this.sent.set(id, at);
    return { id, at };
  }

  /** One answer acknowledges every earlier frame. */
  ack(frameId) {
    for (const id of this.sent.keys()) if (id <= frameId) this.sent.delete(id);
  }

  clear() {
    this.sent.clear();
  }
}
