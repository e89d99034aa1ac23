/**
 * lora_lab's REST API and WebSocket URLs, through JupyterLab's ServerConnection only: its
 * settings carry the base URL, the token and the XSRF cookie, so the same code works under
 * JupyterHub, behind a pod's proxy and with token-only auth. Settings are made per request,
 * as JupyterLab's own services do, so a changed page config is picked up.
 */
import { URLExt } from '@jupyterlab/coreutils';
import { ServerConnection } from '@jupyterlab/services';

const API = 'lora-lab/api';

/** The states of a job that has not ended (it cannot be resumed or deleted yet). */
export const ACTIVE = ['queued', 'running'];

/** One job as the server shows it (status.json plus its id, kind and file-browser paths). */
export interface IJob {
  id: string;
  kind: string;
  state: string;
  phase?: string | null;
  progress?: number | null;
  total?: number | null;
  steps?: number | null;
  loss?: number | null;
  error?: string | null;
  output?: string | null;
  created?: number;
  browse?: { dir: string | null; output: string | null };
  /** The job folder's size: in REST views, not in the feed's (a walk of the folder). */
  bytes?: number;
  /** The LoRA files a training job wrote: intermediate saves and the final one (step null). */
  loras?: ILora[];
  /** Where it runs: 'local' (this box) or 'ray' (the Ray cluster). */
  executor?: string;
  /** A Ray job's cluster and submission id (null until lora_lab's queue submits it). */
  handle?: { address?: string; submission_id?: string | null } | null;
  /** Why it failed, or why a queued job waits (a Ray job waiting for the cluster's GPUs). */
  reason?: string | null;
}

export interface ILora {
  path: string;
  step: number | null;
  /** null, and ``missing`` true, for a file deleted since the job wrote it. */
  bytes: number | null;
  missing?: boolean;
}

/** What ``DELETE jobs/ID`` did: the bytes freed, and what became of the job's LoRA file. */
export interface IJobDeleted {
  id: string;
  bytes: number;
  lora: string | null;
  lora_removed: boolean;
  lora_kept: string | null;
  /** Its intermediate LoRA files removed (those it wrote itself). */
  step_loras_removed?: number;
}

export interface IDataset {
  name: string;
  images: number;
  captioned: number;
}

export interface IGpu {
  index: number;
  name: string;
  utilization: number | null;
  memory_used_mb: number | null;
  memory_total_mb: number | null;
}

export interface IGpus {
  gpus: IGpu[];
  source: string;
}

/** TrainConfig data: {model: {...}, dataset: {...}, network, train, save, sample}. */
export type TrainConfigData = Record<string, Record<string, unknown>>;

export interface IPreset {
  name: string;
  label?: string;
  description: string;
  family: string;
  config: TrainConfigData;
}

export interface IHealth {
  ok: boolean;
  version?: string;
  /** Where a job runs when its request names none (the server's LoraLabApp.executor). */
  executor?: string;
  contents?: { root: string; workspace: string | null };
}

export interface IJobsPage {
  jobs: IJob[];
  total: number;
}

/** A failed request: ``status`` 0 when the server could not be reached at all. */
export class ApiError extends Error {
  constructor(
    readonly status: number,
    message: string
  ) {
    super(message);
  }
}

/** ``parts`` are path segments (each URL-encoded); ``query`` becomes the query string. */
function url(
  base: string,
  parts: string[],
  query: Record<string, string | number> = {}
): string {
  const path = URLExt.join(base, API, ...parts.map(encodeURIComponent));
  const q = Object.entries(query)
    .map(([k, v]) => `${encodeURIComponent(k)}=${encodeURIComponent(String(v))}`)
    .join('&');
  return q ? `${path}?${q}` : path;
}

/** A raw response; throws ApiError with the server's ``detail`` when it is not OK. */
export async function request(
  parts: string[],
  init: RequestInit = {},
  query: Record<string, string | number> = {}
): Promise<Response> {
  const settings = ServerConnection.makeSettings();
  let response: Response;
  try {
    response = await ServerConnection.makeRequest(
      url(settings.baseUrl, parts, query),
      init,
      settings
    );
  } catch (e) {
    throw new ApiError(0, 'cannot reach the Jupyter server');
  }
  if (!response.ok) {
    let detail = response.statusText || `HTTP ${response.status}`;
    try {
      const body = await response.json();
      detail = body.detail || body.message || body.error || detail;
    } catch {
      // not JSON (a proxy's page): the status line says enough
    }
    throw new ApiError(response.status, detail);
  }
  return response;
}

export async function getJson<T>(
  parts: string[],
  query: Record<string, string | number> = {}
): Promise<T> {
  return (await request(parts, {}, query)).json();
}

export async function postJson<T>(parts: string[], body: unknown = {}): Promise<T> {
  const init = {
    method: 'POST',
    body: JSON.stringify(body),
    headers: { 'Content-Type': 'application/json' }
  };
  return (await request(parts, init)).json();
}

export async function deleteJson<T>(
  parts: string[],
  query: Record<string, string | number> = {}
): Promise<T> {
  return (await request(parts, { method: 'DELETE' }, query)).json();
}

/** A zip sent as the request body: the server streams it to disk, no form encoding. */
export async function uploadZip(name: string, file: Blob): Promise<unknown> {
  const init = {
    method: 'POST',
    body: file,
    headers: { 'Content-Type': 'application/zip' }
  };
  return (await request(['datasets'], init, { name })).json();
}

/**
 * A job's file as an object URL (an <img src> to the API would carry no token header); the
 * caller revokes it when it is replaced.
 */
export async function jobFileUrl(jobId: string, path: string): Promise<string> {
  const response = await request(['jobs', jobId, 'files', ...path.split('/')]);
  return URL.createObjectURL(await response.blob());
}

/** A WebSocket on the API, with the token as a query parameter when the page has one. */
export function openSocket(
  parts: string[],
  query: Record<string, string | number> = {}
): WebSocket {
  const settings = ServerConnection.makeSettings();
  const auth: Record<string, string> = settings.token ? { token: settings.token } : {};
  return new settings.WebSocket(url(settings.wsUrl, parts, { ...query, ...auth }));
}

/** What the sidebar says about a failed request or probe; '' when the server answers. */
export function failureNotice(status: number): string {
  if (status === 404) {
    return (
      'The lora_lab server extension is not running in this Jupyter server. Enable it with ' +
      '`jupyter server extension enable lora_lab.server_ext`, restart JupyterLab, and check ' +
      'that `jupyter server extension list` shows lora_lab.server_ext enabled and OK.'
    );
  }
  if (status === 401 || status === 403) {
    return 'Your login or token has expired: reload the page and log in again.';
  }
  return 'Connection to the Jupyter server lost; reconnecting…';
}
