/**
 * One job's row in the sidebar's list: kind and time, a "ray" badge for a job on the Ray cluster,
 * state, phase, steps and loss, the size of an ended job's folder (when known), a progress bar,
 * and the error of a job that failed (or why a queued one waits).
 */
import { ACTIVE, IJob } from './api';
import { basename, fileSize } from './format';

export function jobRow(job: IJob): HTMLElement {
  const row = document.createElement('div');
  row.className = 'lora-lab-job';
  row.dataset.jobId = job.id;
  row.tabIndex = 0;
  row.setAttribute('role', 'option');
  row.title = job.id;
  row.innerHTML =
    '<div class="lora-lab-job-head"><span class="lora-lab-job-name"></span>' +
    '<span class="lora-lab-where"></span><span class="lora-lab-state"></span></div>' +
    '<div class="lora-lab-job-meta"><span class="lora-lab-phase"></span>' +
    '<span class="lora-lab-job-numbers"></span></div>' +
    '<div class="lora-lab-progress" role="progressbar" aria-valuemin="0" aria-valuemax="100">' +
    '<div class="lora-lab-progress-fill"></div></div>' +
    '<div class="lora-lab-error"></div><div class="lora-lab-waiting"></div>';
  updateJobRow(row, job);
  return row;
}

/** Refresh the row's text from ``job``, writing only what changed. */
export function updateJobRow(row: HTMLElement, job: IJob): void {
  row.dataset.state = job.state;
  const percent = job.state === 'succeeded' ? 100 : Math.round(100 * clamp(job.progress ?? 0));
  const name = job.output ? basename(job.output) : when(job);
  set(row, '.lora-lab-job-name', `${job.kind} · ${name}`);
  set(row, '.lora-lab-where', job.executor === 'ray' ? 'ray' : '');
  row.querySelector<HTMLElement>('.lora-lab-where')!.title = whereTitle(job);
  set(row, '.lora-lab-state', job.state);
  set(row, '.lora-lab-phase', job.phase && job.state === 'running' ? job.phase : '');
  set(row, '.lora-lab-job-numbers', numbers(job, percent));
  set(row, '.lora-lab-error', job.error ?? '');
  set(row, '.lora-lab-waiting', waiting(job));
  const bar = row.querySelector<HTMLElement>('.lora-lab-progress')!;
  if (bar.getAttribute('aria-valuenow') !== String(percent)) {
    bar.setAttribute('aria-valuenow', String(percent));
    bar.setAttribute('aria-label', `${job.kind} ${job.state}: ${percent}%`);
    (bar.firstElementChild as HTMLElement).style.width = `${percent}%`;
  }
}

/** Where a job runs, in words: the Ray cluster's address and submission id, or this box. */
export function whereTitle(job: IJob): string {
  if (job.executor !== 'ray') {
    return 'runs on this box';
  }
  const sid = job.handle?.submission_id ?? 'none yet (waiting in the queue)';
  return `runs on the Ray cluster ${job.handle?.address ?? ''}; Ray submission id: ${sid}`;
}

/** Why a queued job waits (a Ray job waiting for the cluster's GPUs); '' otherwise. */
export function waiting(job: IJob): string {
  return job.state === 'queued' && job.reason ? job.reason : '';
}

function set(row: HTMLElement, selector: string, text: string): void {
  const el = row.querySelector<HTMLElement>(selector)!;
  if (el.textContent !== text) {
    el.textContent = text;
  }
  el.hidden = !text;
}

function numbers(job: IJob, percent: number): string {
  const parts: string[] = [];
  if (job.state === 'running') {
    parts.push(`${percent}%`);
  } else if (job.steps) {
    parts.push(`${job.steps} steps`);
  }
  if (typeof job.loss === 'number') {
    parts.push(`loss ${job.loss.toPrecision(3)}`);
  }
  if (typeof job.bytes === 'number' && !ACTIVE.includes(job.state)) {
    parts.push(fileSize(job.bytes)); // an active job's folder grows: its size would be stale
  }
  return parts.join(' · ');
}

function when(job: IJob): string {
  if (!job.created) {
    return job.id;
  }
  return new Date(job.created * 1000).toLocaleString(undefined, {
    month: 'short',
    day: 'numeric',
    hour: '2-digit',
    minute: '2-digit',
    second: '2-digit'
  });
}

function clamp(x: number): number {
  return Math.min(1, Math.max(0, x));
}
