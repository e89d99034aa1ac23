/**
 * The selected job, live: its log (the last MAX_LINES lines, kept scrolled to the newest), its
 * loss curve, its newest sample, cancel / resume, and links into the file browser. Fed by the
 * job's own WebSocket (``jobs/ID/stream``), which resumes from the last event number and log
 * offset it saw after a drop, so nothing is missed and nothing comes twice.
 */
import { Notification } from '@jupyterlab/apputils';
import { CommandRegistry } from '@lumino/commands';
import { Widget } from '@lumino/widgets';

import { IJob, jobFileUrl, openSocket, postJson } from './api';
import { LossChart } from './chart';
import { LiveSocket } from './socket';

const MAX_LINES = 1000;
const ACTIVE = ['queued', 'running'];
const RESUMABLE = ['failed', 'cancelled', 'interrupted'];

export interface IJobViewOptions {
  commands: CommandRegistry;
  /** Called when the job socket drops: probes the server and sets the sidebar's notice. */
  probe: () => Promise<boolean>;
  /** A job view a cancel or resume answered with. */
  changed: (job: IJob) => void;
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
    const actions = document.createElement('div');
    actions.className = 'lora-lab-actions';
    actions.append(this.cancel, this.resume, this.openDir, this.openLora);
    this.sample.className = 'lora-lab-sample';
    this.sample.append(this.image, this.sampleCaption);
    this.sample.hidden = true;
    this.image.alt = 'newest sample';
    this.log.className = 'lora-lab-log';
    this.log.setAttribute('aria-live', 'off');
    this.node.append(this.header, actions, this.message, this.chart.node, this.sample, this.log);
    this.cancel.onclick = () => void this.act('cancel');
    this.resume.onclick = () => void this.act('resume');
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
    const phase = job.phase && ACTIVE.includes(job.state) ? ` · ${job.phase}` : '';
    this.header.textContent = `${job.kind} ${job.id} · ${job.state}${phase}`;
    this.cancel.disabled = !ACTIVE.includes(job.state);
    this.resume.disabled = !RESUMABLE.includes(job.state);
    this.link(this.openDir, job.browse?.dir, 'the job folder is outside the Jupyter root');
    this.link(this.openLora, job.browse?.output, 'no LoRA file yet, or outside the Jupyter root');
    if (ACTIVE.includes(job.state) && this.ended) {
      this.follow(); // resumed: its stream goes on from where it ended
    }
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
  private chart = new LossChart();
  private header = document.createElement('div');
  private message = document.createElement('div');
  private sample = document.createElement('figure');
  private image = document.createElement('img');
  private sampleCaption = document.createElement('figcaption');
  private log = document.createElement('div');
  private cancel = button(
    'Cancel',
    'lora-lab-cancel',
    'Stop the job (a training run saves a checkpoint first)'
  );
  private resume = button('Resume', 'lora-lab-resume', 'Continue the job from its last checkpoint');
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
