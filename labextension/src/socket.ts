/**
 * A WebSocket that comes back: when it drops it reconnects with backoff (0.5 s doubling to
 * 15 s), asking ``open`` for a fresh socket each time so the URL carries where to resume.
 */
import { IDisposable } from '@lumino/disposable';

const FIRST_DELAY_MS = 500;
const MAX_DELAY_MS = 15_000;

export interface ILiveSocketOptions {
  /** A new socket, its URL saying where to resume. */
  open: () => WebSocket;
  /** One parsed message. */
  onMessage: (message: any) => void;
  /** The socket opened (again). */
  onOpen?: () => void;
  /** The socket dropped; awaited before the next try is scheduled (to probe the server). */
  onDrop?: () => Promise<void>;
  /** The stream is complete (it said so): a close is then the end, not a drop. */
  finished?: () => boolean;
}

export class LiveSocket implements IDisposable {
  constructor(private options: ILiveSocketOptions) {
    this.connect();
  }

  get isDisposed(): boolean {
    return this._disposed;
  }

  /** Whether the socket is open now. */
  get connected(): boolean {
    return this.socket?.readyState === WebSocket.OPEN;
  }

  /** Try again now (after a resume, say), dropping any scheduled try. */
  reconnect(): void {
    if (this._disposed || this.connected) {
      return;
    }
    window.clearTimeout(this.timer);
    this.delay = FIRST_DELAY_MS;
    this.connect();
  }

  dispose(): void {
    if (this._disposed) {
      return;
    }
    this._disposed = true;
    window.clearTimeout(this.timer);
    const socket = this.socket;
    this.socket = null;
    socket?.close();
  }

  private connect(): void {
    let socket: WebSocket;
    try {
      socket = this.options.open();
    } catch {
      void this.dropped();
      return;
    }
    this.socket = socket;
    socket.onopen = () => this.options.onOpen?.();
    socket.onmessage = event => {
      this.delay = FIRST_DELAY_MS; // it works: the next drop retries quickly again
      let message: any;
      try {
        message = JSON.parse(event.data);
      } catch {
        return; // not ours to read
      }
      this.options.onMessage(message);
    };
    socket.onclose = () => {
      if (this.socket !== socket) {
        return; // disposed, or replaced
      }
      this.socket = null;
      if (!this.options.finished?.()) {
        void this.dropped();
      }
    };
  }

  private async dropped(): Promise<void> {
    if (this._disposed) {
      return;
    }
    try {
      await this.options.onDrop?.();
    } catch {
      // the probe failing is what onDrop reports; the retry goes ahead
    }
    if (this._disposed || this.socket) {
      return;
    }
    window.clearTimeout(this.timer);
    this.timer = window.setTimeout(() => this.connect(), this.delay);
    this.delay = Math.min(this.delay * 2, MAX_DELAY_MS);
  }

  private socket: WebSocket | null = null;
  private timer = 0;
  private delay = FIRST_DELAY_MS;
  private _disposed = false;
}
