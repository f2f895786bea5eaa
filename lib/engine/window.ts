/**
 * The in-flight window and the low-water mark.
 *
 * Blobs enter in ascending id order and may finish in any order. The mark is
 * the highest id at or below which every blob has finished; a blob is
 * "finalized" (counted in the checkpoint, its log record written) only when
 * the mark passes it. Dispatch waits while the window (blobs entered but not
 * yet passed by the mark) is full, so a crash re-does at most a window.
 */

export interface WindowEntry<T> {
  id: number;
  done: boolean;
  value: T | undefined;
}

export class InFlightWindow<T> {
  readonly capacity: number;
  #entries: (WindowEntry<T> | undefined)[] = [];
  #head = 0;
  #mark: number;
  #waiters: (() => void)[] = [];
  #closed = false;
  readonly #onFinalize: (entry: WindowEntry<T>) => void;

  constructor(capacity: number, startMark: number, onFinalize: (entry: WindowEntry<T>) => void) {
    this.capacity = Math.max(1, capacity);
    this.#mark = startMark;
    this.#onFinalize = onFinalize;
  }

  /** Highest id at or below which everything is finalized. */
  get mark(): number {
    return this.#mark;
  }

  /** Entries in the window (entered, not yet passed by the mark). */
  get size(): number {
    return this.#entries.length - this.#head;
  }

  /** Resolves once the window has room, or once it is closed. */
  async room(): Promise<void> {
    while (this.size >= this.capacity && !this.#closed) {
      await new Promise<void>((resolve) => this.#waiters.push(resolve));
    }
  }

  /** The run is stopping: nobody waits for room any more. */
  close(): void {
    this.#closed = true;
    this.#wakeAll();
  }

  #wakeAll(): void {
    const waiters = this.#waiters;
    this.#waiters = [];
    for (const w of waiters) w();
  }

  /** Adds a blob; ids must ascend. */
  enter(id: number): WindowEntry<T> {
    const last = this.#entries[this.#entries.length - 1];
    if ((last && id <= last.id) || id <= this.#mark) {
      throw new Error(`window: id ${id} entered out of order (last ${last?.id ?? this.#mark})`);
    }
    const entry: WindowEntry<T> = { id, done: false, value: undefined };
    this.#entries.push(entry);
    return entry;
  }

  /** Marks a blob finished and moves the mark over every finished blob at the front. */
  finish(entry: WindowEntry<T>, value: T): void {
    entry.done = true;
    entry.value = value;
    let moved = false;
    while (this.#head < this.#entries.length) {
      const front = this.#entries[this.#head];
      if (!front?.done) break;
      this.#entries[this.#head] = undefined;
      this.#head++;
      this.#mark = front.id;
      this.#onFinalize(front);
      moved = true;
    }
    if (this.#head > 1024 && this.#head * 2 > this.#entries.length) {
      this.#entries = this.#entries.slice(this.#head);
      this.#head = 0;
    }
    if (moved) this.#wakeAll();
  }

  /** Moves the mark forward over ids that had no blob in this walk (end of a chunk). */
  advanceEmpty(upTo: number): void {
    if (this.size === 0 && upTo > this.#mark) this.#mark = upTo;
  }
}

/** Bounds the bytes of blobs being copied at once, whatever their sizes. */
export class ByteBudget {
  readonly limit: number;
  #used = 0;
  #waiters: (() => void)[] = [];

  constructor(limit: number) {
    this.limit = limit;
  }

  get used(): number {
    return this.#used;
  }

  /** Waits until `n` bytes fit (a single blob larger than the limit runs alone). */
  async acquire(n: number): Promise<void> {
    while (this.#used > 0 && this.#used + n > this.limit) {
      await new Promise<void>((resolve) => this.#waiters.push(resolve));
    }
    this.#used += n;
  }

  release(n: number): void {
    this.#used -= n;
    const waiters = this.#waiters;
    this.#waiters = [];
    for (const w of waiters) w();
  }
}
