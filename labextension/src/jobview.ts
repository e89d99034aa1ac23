/**
 * The selected job, live: its log (the last MAX_LINES lines, kept scrolled to the newest), its
 * loss curve (and validation loss), its newest sample (or validation image), cancel / resume /
 * delete, the LoRA files it wrote, its folder's size once it has ended, and links into the file browser. Fed by the job's own WebSocket
 * (``jobs/ID/stream``), which resumes from the last event number and log offset it saw after a
 * drop, so nothing is missed and nothing comes twice.
 */
import { Notification } from '@jupyterlab/apputils';
import { CommandRegistry } from '@lumino/commands';
import { Widget } from '@lumino/widgets';

import {
  ACTIVE,
  getJson,
  IHealth,
  IJob,
  ILora,
  jobFileUrl,
  openSocket,
  postJson
} from './api';
import { LossChart } from './chart';
import { deletedText, deleteJob } from './deleteJob';
import { basename, browsePath, fileSize } from './format';
import { waiting, whereTitle } from './rows';
import { LiveSocket } from './socket';

const MAX_LINES = 1000;
const RESUMABLE = ['failed', 'cancelled', 'interrupted'];

export interface IJobViewOptions {
  commands: CommandRegistry;
  /** Called when the job socket drops: probes the server and sets the sidebar's notice. */
  probe: () => Promise<boolean>;
  /** A job view a cancel or resume answered with, or a fuller one read over REST. */
  changed: (job: IJob) => void;
  /** The job deleted from here. */
  removed: (id: string) => void;
  /** Where the Jupyter root and the workspace are: to show a LoRA file in the file browser. */
  contents: () => Promise<IHealth['contents'] | undefined>;
}

interface ISample {
  step: number;
  prompt?: string;
  path: string;
}

export class JobView extends Widget {
  constructor(private options: IJobViewOptions) {
    super();
    this.addClass('lora-lab-jobview');
    this.title.label = 'Job';
    this.header.className = 'lora-lab-jobview-header';
    this.message.className = 'lora-lab-jobview-message';
    this.where.className = 'lora-lab-jobview-where';
    const actions = document.createElement('div');
    actions.className = 'lora-lab-actions';
    actions.append(this.cancel, this.resume, this.remove, this.openDir, this.openLora);
    this.loras.className = 'lora-lab-jobview-loras';
    this.loras.hidden = true;
    this.sample.className = 'lora-lab-sample';
    this.sample.append(this.image, this.sampleCaption);
    this.sample.hidden = true;
    this.image.alt = 'newest sample';
    this.log.className = 'lora-lab-log';
    this.log.setAttribute('aria-live', 'off');
    this.node.append(
      this.header,
      this.where,
      actions,
      this.message,
      this.loras,
      this.chart.node,
      this.sample,
      this.log
    );
    this.cancel.onclick = () => void this.act('cancel');
    this.resume.onclick = () => void this.act('resume');
    this.remove.onclick = () => void this.delete();
    this.openDir.onclick = () => this.goTo(this.job?.browse?.dir);
    this.openLora.onclick = () => this.goTo(this.job?.browse?.output);
    this.hide();
  }

  get jobId(): string | null {
    return this.job?.id ?? null;
  }

  /** Show ``job`` (null: nothing selected), following it from its first event. */
  select(job: IJob | null): void {
    this.stop();
    this.job = job;
    this.after = 0;
    this.offset = 0;
    this.total = 0;
    this.lines = [];
    this.log.replaceChildren();
    this.chart.clear();
    this.clearSample();
    this.message.textContent = '';
    this.detailsRead = '';
    this.setHidden(!job);
    if (job) {
      this.follow();
      this.refresh(job);
    }
  }

  /** The feed's newer view of the shown job. */
  refresh(job: IJob): void {
    if (job.id !== this.job?.id) {
      return;
    }
    this.job = job;
    const active = ACTIVE.includes(job.state);
    const phase = job.phase && active ? ` · ${job.phase}` : '';
    const size = typeof job.bytes === 'number' && !active ? ` · ${fileSize(job.bytes)}` : '';
    this.header.textContent = `${job.kind} ${job.id} · ${job.state}${phase}${size}`;
    this.renderWhere(job);
    this.cancel.disabled = !active;
    this.resume.disabled = !RESUMABLE.includes(job.state);
    this.remove.title = active
      ? 'A job that is still running cannot be deleted: cancel it first'
      : 'Delete the job folder (checkpoints, samples, log); its LoRA file stays unless ticked';
    this.link(this.openDir, job.browse?.dir, 'the job folder is outside the Jupyter root');
    this.link(this.openLora, job.browse?.output, 'no LoRA file yet, or outside the Jupyter root');
    if (active && this.ended) {
      this.follow(); // resumed: its stream goes on from where it ended
    }
    const read = `${job.id} ${job.state}`;
    if (!active && job.bytes === undefined && this.detailsRead !== read) {
      this.detailsRead = read; // once per job and state
      void this.readDetails(job.id);
    }
    this.renderLoras(job.loras ?? []);
    this.scheduleRender();
  }

  dispose(): void {
    this.stop();
    this.clearSample();
    super.dispose();
  }

  private follow(): void {
    const id = this.job!.id;
    this.stop();
    this.ended = false;
    this.stream = new LiveSocket({
      open: () =>
        openSocket(['jobs', id, 'stream'], { after: this.after, log_offset: this.offset }),
      onMessage: message => this.onStream(message),
      onDrop: async () => {
        await this.options.probe();
      },
      finished: () => this.ended
    });
  }

  private stop(): void {
    this.stream?.dispose();
    this.stream = null;
    this.ended = true;
  }

  private onStream(m: any): void {
    if (m.type === 'log_line') {
      if (m.offset > this.offset) {
        this.offset = m.offset;
        this.lines.push(m.line);
      }
    } else if (m.type === 'end') {
      this.ended = true; // the server closes the socket next: the end, not a drop
      this.after = Math.max(this.after, m.n ?? 0);
      this.offset = Math.max(this.offset, m.offset ?? 0);
    } else if (m.type === 'error') {
      this.ended = true;
      this.message.textContent = m.detail;
    } else if (typeof m.n === 'number' && m.n > this.after) {
      this.after = m.n;
      this.onEvent(m);
    }
    this.scheduleRender();
  }

  private onEvent(event: any): void {
    if (event.type === 'progress') {
      this.chart.add(event.step, event.loss);
      this.total = event.total ?? this.total;
    } else if (event.type === 'sample' && typeof event.path === 'string') {
      this.newestSample = event;
    } else if (event.type === 'validation') {
      this.chart.addValidation(event.step, event.loss, event.best);
      const path = event.samples?.[0];
      if (typeof path === 'string') {
        const prompt = event.prompts?.[0] ?? '';
        this.newestSample = { step: event.step, path, prompt: `validation: ${prompt}` };
      }
    }
  }

  /** Draw at most once a frame: a catch-up of thousands of messages is one redraw. */
  private scheduleRender(): void {
    if (!this.frame) {
      this.frame = requestAnimationFrame(() => {
        this.frame = 0;
        this.render();
      });
    }
  }

  private render(): void {
    if (this.lines.length) {
      const atEnd = this.log.scrollHeight - this.log.scrollTop - this.log.clientHeight < 24;
      const rows = this.lines.slice(-MAX_LINES).map(line => {
        const div = document.createElement('div');
        div.textContent = line;
        return div;
      });
      this.lines = [];
      this.log.append(...rows);
      for (let extra = this.log.childElementCount - MAX_LINES; extra > 0; extra--) {
        this.log.firstElementChild!.remove();
      }
      if (atEnd) {
        this.log.scrollTop = this.log.scrollHeight;
      }
    }
    this.chart.render(this.job?.total ?? this.total);
    const sample = this.newestSample;
    if (sample && sample.path !== this.shownSample) {
      this.shownSample = sample.path;
      void this.showSample(this.job!.id, sample);
    }
  }

  private async showSample(jobId: string, sample: ISample): Promise<void> {
    let src: string;
    try {
      src = await jobFileUrl(jobId, sample.path);
    } catch (e) {
      this.shownSample = null; // try again with the next event
      return;
    }
    if (jobId !== this.job?.id || sample.path !== this.shownSample) {
      URL.revokeObjectURL(src); // another job or a newer sample meanwhile
      return;
    }
    const old = this.objectUrl;
    this.objectUrl = src;
    this.image.src = src;
    if (old) {
      URL.revokeObjectURL(old);
    }
    this.sample.hidden = false;
    const prompt = sample.prompt ? `: ${sample.prompt}` : '';
    this.sampleCaption.textContent = `step ${sample.step}${prompt}`;
  }

  private clearSample(): void {
    if (this.objectUrl) {
      URL.revokeObjectURL(this.objectUrl);
    }
    this.objectUrl = null;
    this.newestSample = null;
    this.shownSample = null;
    this.image.removeAttribute('src');
    this.sample.hidden = true;
  }

  private async act(action: 'cancel' | 'resume'): Promise<void> {
    const job = this.job;
    if (!job) {
      return;
    }
    const button = action === 'cancel' ? this.cancel : this.resume;
    button.disabled = true;
    this.message.textContent = action === 'cancel' ? 'Cancelling…' : 'Resuming…';
    try {
      const reply = await postJson<any>(['jobs', job.id, action]);
      const view: IJob | undefined = reply.job ?? (reply.state ? reply : undefined);
      this.message.textContent = '';
      if (view?.id) {
        this.options.changed(view);
      }
    } catch (e) {
      this.message.textContent = `Could not ${action} job ${job.id}: ${(e as Error).message}`;
      if (this.job) {
        this.refresh(this.job);
      }
    }
  }

  /** The job's REST view, with its folder's size (the feed leaves that out: a walk). */
  private async readDetails(id: string): Promise<void> {
    try {
      const view = await getJson<IJob>(['jobs', id]);
      if (view.id === this.job?.id) {
        this.options.changed(view);
      }
    } catch {
      // deleted meanwhile, or the server is away: the feed and the notice say so
    }
  }

  private async delete(): Promise<void> {
    const job = this.job;
    if (!job) {
      return;
    }
    this.remove.disabled = true;
    this.message.textContent = '';
    try {
      const done = await deleteJob(job);
      if (done) {
        this.options.removed(job.id);
        Notification.success(deletedText(done), { autoClose: 5000 });
      }
    } catch (e) {
      if (job.id === this.job?.id) {
        this.message.textContent = `Could not delete job ${job.id}: ${(e as Error).message}`;
      }
    } finally {
      this.remove.disabled = false;
    }
  }

  /** Where the job runs: the executor, a Ray job's submission id, and why a queued one waits. */
  private renderWhere(job: IJob): void {
    const ray = job.executor === 'ray';
    const lines = [ray ? 'Runs on: Ray cluster' : 'Runs on: this box'];
    if (ray) {
      lines.push(`Ray submission id: ${job.handle?.submission_id ?? 'none yet'}`);
    }
    const why = waiting(job);
    if (why) {
      lines.push(`Reason: ${why}`);
    }
    const text = lines.join('\n');
    if (this.where.textContent !== text) {
      this.where.textContent = text;
    }
    this.where.title = whereTitle(job);
    this.where.dataset.executor = ray ? 'ray' : 'local';
  }

  /** The LoRA files the job wrote (intermediate saves, then the final one), each a link into
   * the file browser; redrawn only when they changed. */
  private renderLoras(loras: ILora[]): void {
    const shown = JSON.stringify(loras);
    if (shown === this.lorasShown) {
      return;
    }
    this.lorasShown = shown;
    this.loras.hidden = !loras.length;
    this.loras.replaceChildren(
      ...loras.map(lora => {
        const row = document.createElement('div');
        row.className = 'lora-lab-jobview-lora';
        const there = typeof lora.bytes === 'number';
        const link = button(
          basename(lora.path),
          'lora-lab-open-lora-file lora-lab-link',
          there ? `Show ${lora.path} in the file browser` : `${lora.path} no longer exists`
        );
        link.onclick = () => void this.goToFile(lora.path);
        link.disabled = !there;
        const info = document.createElement('span');
        const step = lora.step === null ? 'final' : `step ${lora.step}`;
        const size = there ? fileSize(lora.bytes!) : 'deleted';
        info.textContent = `${step} · ${size}`;
        row.append(link, info);
        return row;
      })
    );
  }

  /** Show a file named by its path on the server's disk, when it is under the Jupyter root. */
  private async goToFile(path: string): Promise<void> {
    const rel = browsePath(path, await this.options.contents());
    if (rel === null) {
      this.message.textContent =
        `${path} is outside the Jupyter root: the file browser cannot show it`;
    } else {
      this.goTo(rel);
    }
  }

  private goTo(path: string | null | undefined): void {
    if (path) {
      this.options.commands.execute('filebrowser:go-to-path', { path }).catch(e => {
        Notification.error(`Could not open ${path}: ${(e as Error).message}`);
      });
    }
  }

  private link(button: HTMLButtonElement, path: string | null | undefined, why: string): void {
    button.disabled = !path;
    button.title = path ? `Show ${path} in the file browser` : why;
  }

  private job: IJob | null = null;
  private stream: LiveSocket | null = null;
  private ended = true;
  private after = 0;
  private offset = 0;
  private total = 0;
  private lines: string[] = [];
  private frame = 0;
  private newestSample: ISample | null = null;
  private shownSample: string | null = null;
  private objectUrl: string | null = null;
  private detailsRead = '';
  private lorasShown = '';
  private chart = new LossChart();
  private header = document.createElement('div');
  private message = document.createElement('div');
  private where = document.createElement('div');
  private sample = document.createElement('figure');
  private image = document.createElement('img');
  private sampleCaption = document.createElement('figcaption');
  private log = document.createElement('div');
  private loras = document.createElement('div');
  private cancel = button(
    'Cancel',
    'lora-lab-cancel',
    'Stop the job (a training run saves a checkpoint first)'
  );
  private resume = button('Resume', 'lora-lab-resume', 'Continue the job from its last checkpoint');
  private remove = button('Delete', 'lora-lab-delete', '');
  private openDir = button('Job folder', 'lora-lab-open-dir lora-lab-link', '');
  private openLora = button('LoRA file', 'lora-lab-open-lora lora-lab-link', '');
}

function button(label: string, className: string, title: string): HTMLButtonElement {
  const b = document.createElement('button');
  b.type = 'button';
  b.className = `jp-Button ${className}`;
  b.textContent = label;
  b.title = title;
  return b;
}
