/**
 * What the sidebar shows, fed by one WebSocket (``stream``): the jobs, newest first and paged,
 * the datasets, the GPUs, and a notice when something is wrong. Nothing is polled while the
 * socket is open; while it is down, every retry probes ``GET health`` (to tell a missing
 * server extension or an expired login from a lost connection) and refreshes over REST.
 */
import { ISignal, Signal } from '@lumino/signaling';

import {
  ApiError,
  failureNotice,
  getJson,
  IDataset,
  IGpus,
  IHealth,
  IJob,
  IJobsPage,
  openSocket
} from './api';
import { LiveSocket } from './socket';

export const PAGE = 50;

export type Change = 'jobs' | 'datasets' | 'gpus' | 'notice';

/** Newest first: by creation time, then by id (ids sort in creation order). */
function newestFirst(a: IJob, b: IJob): number {
  return (b.created ?? 0) - (a.created ?? 0) || (a.id < b.id ? 1 : a.id > b.id ? -1 : 0);
}

export class LabModel {
  get changed(): ISignal<this, Change> {
    return this._changed;
  }

  /** The loaded jobs, newest first. */
  get jobs(): IJob[] {
    if (!this.sorted) {
      this.sorted = [...this.byId.values()].sort(newestFirst);
    }
    return this.sorted;
  }

  job(id: string): IJob | undefined {
    return this.byId.get(id);
  }

  /** How many jobs the workspace has (more than are loaded while older pages are not). */
  total = 0;
  datasets: IDataset[] | null = null;
  gpus: IGpus | null = null;
  notice = '';
  health: IHealth | null = null;

  /** Open the feed (once; the sidebar calls this when first shown). */
  start(): void {
    if (this.socket) {
      return;
    }
    this.socket = new LiveSocket({
      open: () => openSocket(['stream'], { limit: PAGE }),
      onOpen: () => this.setNotice(''),
      onMessage: message => this.onMessage(message),
      onDrop: () => this.onDrop()
    });
  }

  /** Whether the feed is live (nothing needs polling). */
  get live(): boolean {
    return this.socket?.connected ?? false;
  }

  /** Load the next page of older jobs. */
  async loadMore(): Promise<void> {
    const page = await this.guard(
      getJson<IJobsPage>(['jobs'], { offset: this.byId.size, limit: PAGE })
    );
    if (page) {
      this.total = page.total;
      page.jobs.forEach(job => this.put(job));
      this.jobsChanged();
    }
  }

  /** A job the client knows of before the feed does (it just submitted it). */
  upsert(job: IJob): void {
    this.put(job);
    this.total = Math.max(this.total, this.byId.size);
    this.jobsChanged();
  }

  /** A job the client deleted, gone before the feed says so. */
  remove(id: string): void {
    if (this.byId.delete(id)) {
      this.total = Math.max(0, this.total - 1);
      this.jobsChanged();
    }
  }

  /**
   * Ask ``GET health`` whether the server and its lora_lab extension answer, and say what is
   * wrong in the notice; true when all is well. Also what a job socket calls when it drops.
   */
  async probe(): Promise<boolean> {
    const status = await this.readHealth();
    this.setNotice(status === 200 && this.live ? '' : failureNotice(status));
    return status === 200;
  }

  /** The contents root and workspace (health is read if it never was). */
  async contents(): Promise<IHealth['contents'] | undefined> {
    if (!this.health) {
      await this.readHealth();
    }
    return this.health?.contents;
  }

  dispose(): void {
    this.socket?.dispose();
    Signal.clearData(this);
  }

  private onMessage(message: any): void {
    switch (message.type) {
      case 'jobs': // the newest page, at (re)connect: older pages loaded since stay
        this.total = message.total;
        this.mergeNewest(message.jobs);
        break;
      case 'job':
        this.total = message.total;
        this.put(message.job);
        this.jobsChanged();
        break;
      case 'removed':
        this.total = message.total;
        this.byId.delete(message.id);
        this.jobsChanged();
        break;
      case 'datasets':
        this.datasets = message.datasets;
        this._changed.emit('datasets');
        break;
      case 'gpus':
        this.gpus = { gpus: message.gpus, source: message.source };
        this._changed.emit('gpus');
        break;
    }
  }

  /** The newest page replaces the jobs it covers: any loaded job newer than its oldest that
   * it lacks was removed meanwhile. */
  private mergeNewest(jobs: IJob[]): void {
    const fresh = new Set(jobs.map(job => job.id));
    const oldest = jobs.length ? [...jobs].sort(newestFirst)[jobs.length - 1] : null;
    for (const job of [...this.byId.values()]) {
      if (!fresh.has(job.id) && (!oldest || newestFirst(job, oldest) < 0)) {
        this.byId.delete(job.id);
      }
    }
    jobs.forEach(job => this.put(job));
    this.jobsChanged();
  }

  /** Keep ``job``; a folder size known from REST stays while the feed's views (which leave it
   * out) find the job in the same state. */
  private put(job: IJob): void {
    const old = this.byId.get(job.id);
    const keep = job.bytes === undefined && old?.bytes !== undefined && old.state === job.state;
    this.byId.set(job.id, keep ? { ...job, bytes: old!.bytes } : job);
  }

  /** The feed dropped: say why, and keep the panel current over REST until it is back. */
  private async onDrop(): Promise<void> {
    if (!(await this.probe())) {
      return;
    }
    const [page, datasets, gpus] = await Promise.all([
      this.guard(getJson<IJobsPage>(['jobs'], { offset: 0, limit: PAGE })),
      this.guard(getJson<{ datasets: IDataset[] }>(['datasets'])),
      this.guard(getJson<IGpus>(['gpus']))
    ]);
    if (page) {
      this.total = page.total;
      this.mergeNewest(page.jobs);
    }
    if (datasets) {
      this.onMessage({ type: 'datasets', ...datasets });
    }
    if (gpus) {
      this.onMessage({ type: 'gpus', ...gpus });
    }
  }

  /** A request's result, or null with the failure in the notice. */
  private async guard<T>(promise: Promise<T>): Promise<T | null> {
    try {
      return await promise;
    } catch (e) {
      const status = e instanceof ApiError ? e.status : 0;
      const known = [0, 401, 403].includes(status);
      this.setNotice(known ? failureNotice(status) : `lora_lab: ${(e as Error).message}`);
      return null;
    }
  }

  /** GET health, kept; its status (0: no answer). */
  private async readHealth(): Promise<number> {
    try {
      this.health = await getJson<IHealth>(['health']);
      return 200;
    } catch (e) {
      return e instanceof ApiError ? e.status : 0;
    }
  }

  private setNotice(text: string): void {
    if (text !== this.notice) {
      this.notice = text;
      this._changed.emit('notice');
    }
  }

  private jobsChanged(): void {
    this.sorted = null;
    this._changed.emit('jobs');
  }

  private byId = new Map<string, IJob>();
  private sorted: IJob[] | null = null;
  private socket: LiveSocket | null = null;
  private _changed = new Signal<this, Change>(this);
}
