/**
 * The "LoRA Lab" sidebar: a notice line (empty while all is well), the GPU strip, the datasets,
 * the jobs (newest first, paged), and the selected job below them. It opens the feed the
 * first time it is shown, so a JupyterLab that never opens it pays nothing.
 */
import { CommandRegistry } from '@lumino/commands';
import { Message } from '@lumino/messaging';
import { Panel, Widget } from '@lumino/widgets';

import { IDataset, IGpus, IJob } from './api';
import { JobView } from './jobview';
import { Change, LabModel } from './model';
import { jobRow, updateJobRow } from './rows';

export const SIDEBAR_ID = 'lora-lab-sidebar';

export class Sidebar extends Panel {
  constructor(
    readonly model: LabModel,
    private commands: CommandRegistry
  ) {
    super();
    this.id = SIDEBAR_ID;
    this.addClass('lora-lab-sidebar');
    this.title.caption = 'LoRA Lab';
    this.jobView = new JobView({
      commands,
      probe: () => model.probe(),
      changed: job => model.upsert(job),
      removed: id => model.remove(id),
      contents: () => model.contents()
    });
    const top = new Widget();
    top.addClass('lora-lab-overview');
    this.notice.className = 'lora-lab-notice';
    this.notice.setAttribute('role', 'status');
    this.notice.hidden = true;
    this.gpus.className = 'lora-lab-gpus';
    this.gpus.textContent = 'GPUs: …';
    this.datasets.className = 'lora-lab-datasets';
    this.jobs.className = 'lora-lab-joblist'; // not lora-lab-jobs: the JobsPanel widget's class
    this.jobs.setAttribute('role', 'listbox');
    this.jobs.setAttribute('aria-label', 'jobs, newest first');
    this.more.className = 'jp-Button lora-lab-more';
    this.more.type = 'button';
    this.more.hidden = true;
    this.more.onclick = () => void this.loadMore();
    top.node.append(
      this.notice,
      this.toolbar(),
      this.gpus,
      heading('Datasets'),
      this.datasets,
      this.jobsHeading,
      this.jobs,
      this.more
    );
    this.addWidget(top);
    this.addWidget(this.jobView);
    this.jobs.addEventListener('click', event => this.onRowClick(event));
    this.jobs.addEventListener('keydown', event => {
      if (event.key === 'Enter' || event.key === ' ') {
        this.onRowClick(event);
      }
    });
    model.changed.connect((_, change) => this.onChange(change), this);
  }

  /** Select job ``id`` (known to the model) and show it live below the list. */
  select(id: string | null): void {
    const job = id ? this.model.job(id) ?? null : null;
    if ((job?.id ?? null) === this.jobView.jobId) {
      return;
    }
    this.selected = job?.id ?? null;
    for (const [rowId, row] of this.rows) {
      row.classList.toggle('lora-lab-selected', rowId === this.selected);
      row.setAttribute('aria-selected', String(rowId === this.selected));
    }
    this.jobView.select(job);
    this.rows.get(this.selected ?? '')?.scrollIntoView({ block: 'nearest' });
  }

  protected onAfterShow(msg: Message): void {
    super.onAfterShow(msg);
    this.model.start();
  }

  protected onAfterAttach(msg: Message): void {
    super.onAfterAttach(msg);
    if (this.isVisible) {
      this.model.start();
    }
  }

  private onChange(change: Change): void {
    if (change === 'notice') {
      this.renderNotice(this.model.notice);
    } else if (change === 'gpus' && this.model.gpus) {
      this.renderGpus(this.model.gpus);
    } else if (change === 'datasets' && this.model.datasets) {
      this.renderDatasets(this.model.datasets);
    } else if (change === 'jobs') {
      this.renderJobs(this.model.jobs);
    }
  }

  private toolbar(): HTMLElement {
    const bar = document.createElement('div');
    bar.className = 'lora-lab-toolbar';
    for (const [id, label] of [
      ['lora-lab:new-dataset', 'New dataset'],
      ['lora-lab:new-training-run', 'New training run']
    ]) {
      const b = document.createElement('button');
      b.type = 'button';
      b.className = 'jp-Button lora-lab-link';
      b.textContent = label;
      b.onclick = () => void this.commands.execute(id);
      bar.appendChild(b);
    }
    return bar;
  }

  /** Text, with `backquoted` commands shown as code. */
  private renderNotice(text: string): void {
    this.notice.hidden = !text;
    this.notice.replaceChildren(
      ...text.split('`').map((part, i) => {
        if (i % 2 === 0) {
          return document.createTextNode(part);
        }
        const code = document.createElement('code');
        code.textContent = part;
        return code;
      })
    );
  }

  private renderGpus({ gpus }: IGpus): void {
    if (!gpus.length) {
      this.gpus.textContent = 'CPU only';
      return;
    }
    this.gpus.replaceChildren(
      ...gpus.map(gpu => {
        const row = document.createElement('div');
        row.className = 'lora-lab-gpu';
        const total = gpu.memory_total_mb ?? 0;
        const used = gpu.memory_used_mb ?? 0;
        const name = document.createElement('span');
        name.textContent = `${gpu.index}: ${gpu.name}`;
        const stats = document.createElement('span');
        stats.textContent = [
          gpu.utilization === null ? '' : `${gpu.utilization}%`,
          total ? `${gb(used)}/${gb(total)} GB` : ''
        ]
          .filter(Boolean)
          .join(' · ');
        const bar = document.createElement('div'); // memory in use
        bar.className = 'lora-lab-gpu-memory';
        bar.title = 'memory in use';
        const fill = document.createElement('div');
        fill.style.width = `${total ? Math.round((100 * used) / total) : 0}%`;
        bar.appendChild(fill);
        row.append(name, stats, bar);
        return row;
      })
    );
  }

  private renderDatasets(datasets: IDataset[]): void {
    if (!datasets.length) {
      this.datasets.textContent = 'No datasets yet: New dataset makes one from a zip or a folder.';
      return;
    }
    this.datasets.replaceChildren(
      ...datasets.map(ds => {
        const row = document.createElement('div');
        row.className = 'lora-lab-dataset';
        row.dataset.name = ds.name;
        const name = document.createElement('span');
        name.className = 'lora-lab-dataset-name';
        name.textContent = ds.name;
        const counts = document.createElement('span');
        counts.className = 'lora-lab-dataset-counts';
        counts.textContent = `${ds.images} images · ${ds.captioned} captioned`;
        row.append(name, counts);
        return row;
      })
    );
  }

  /** Rows are kept per job and updated in place; only moved when the order changed. */
  private renderJobs(jobs: IJob[]): void {
    const seen = new Set<string>();
    let previous: Element | null = null;
    for (const job of jobs) {
      seen.add(job.id);
      let row = this.rows.get(job.id);
      if (!row) {
        row = jobRow(job);
        this.rows.set(job.id, row);
      } else {
        updateJobRow(row, job);
      }
      const selected = job.id === this.selected;
      row.classList.toggle('lora-lab-selected', selected);
      row.setAttribute('aria-selected', String(selected));
      const expected: Element | null = previous
        ? previous.nextElementSibling
        : this.jobs.firstElementChild;
      if (expected !== row) {
        this.jobs.insertBefore(row, expected);
      }
      previous = row;
    }
    for (const [id, row] of this.rows) {
      if (!seen.has(id)) {
        row.remove();
        this.rows.delete(id);
      }
    }
    const total = this.model.total;
    this.jobsHeading.textContent = `Jobs (${total})`;
    if (!jobs.length) {
      this.jobs.textContent = 'No jobs yet: New training run starts one.';
    } else if (this.jobs.firstChild?.nodeType === Node.TEXT_NODE) {
      this.jobs.firstChild.remove();
    }
    this.more.hidden = jobs.length >= total;
    this.more.textContent = `Show older jobs (${total - jobs.length} more)`;
    if (this.selected && !this.model.job(this.selected)) {
      this.select(null); // removed
    } else if (this.selected) {
      this.jobView.refresh(this.model.job(this.selected)!);
    }
  }

  private onRowClick(event: Event): void {
    const row = (event.target as HTMLElement).closest<HTMLElement>('.lora-lab-job');
    if (row?.dataset.jobId) {
      event.preventDefault();
      this.select(row.dataset.jobId);
    }
  }

  private async loadMore(): Promise<void> {
    this.more.disabled = true;
    try {
      await this.model.loadMore();
    } finally {
      this.more.disabled = false;
    }
  }

  private jobView: JobView;
  private selected: string | null = null;
  private rows = new Map<string, HTMLElement>();
  private notice = document.createElement('div');
  private gpus = document.createElement('div');
  private datasets = document.createElement('div');
  private jobsHeading = heading('Jobs');
  private jobs = document.createElement('div');
  private more = document.createElement('button');
}

function heading(text: string): HTMLElement {
  const h = document.createElement('h3');
  h.className = 'lora-lab-heading';
  h.textContent = text;
  return h;
}

function gb(mb: number): string {
  return (mb / 1024).toFixed(mb < 10240 ? 1 : 0);
}
