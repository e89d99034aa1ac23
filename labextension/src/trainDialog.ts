/**
 * The "New training run" dialog: a preset's full config (``GET presets``) with the fields a
 * first run changes, and where it runs (this box or the Ray cluster, at first the server's
 * default), POSTed as a training job. The server validates the config and the executor; its
 * message (the field and the allowed range, or the missing Ray cluster) shows in the dialog,
 * which stays open.
 */
import { getJson, IDataset, IHealth, IJob, IPreset, postJson, TrainConfigData } from './api';
import { Form, FormDialog } from './dialogs';

const LAST_BASE = 'lora-lab:last-base';
const DEFAULT_PRESET = 'sd15';
/** Where a job runs, as the notebook panels name it (REST's ``executor``). */
const RUN_ON: [string, string][] = [
  ['local', 'This box'],
  ['ray', 'Ray cluster']
];

interface IFields {
  dataset: HTMLSelectElement;
  base: HTMLInputElement;
  preset: HTMLSelectElement;
  resolution: HTMLInputElement;
  max_steps: HTMLInputElement;
  rank: HTMLInputElement;
  lr: HTMLInputElement;
  trigger: HTMLInputElement;
  name: HTMLInputElement;
  prompt: HTMLInputElement;
  executor: HTMLSelectElement;
}

/** Ask, submit, and return the new job (null when cancelled). */
export async function newTrainingRun(): Promise<IJob | null> {
  const [{ presets }, { datasets }, health] = await Promise.all([
    getJson<{ presets: IPreset[] }>(['presets']),
    getJson<{ datasets: IDataset[] }>(['datasets']),
    getJson<IHealth>(['health'])
  ]);
  const form = new Form();
  const f = fields(form, presets, datasets);
  f.executor.value = health.executor ?? 'local'; // a server from before executors: this box
  const byName = new Map(presets.map(p => [p.name, p]));
  f.preset.value = byName.has(DEFAULT_PRESET) ? DEFAULT_PRESET : presets[0]?.name ?? '';
  const fill = () => {
    const preset = byName.get(f.preset.value);
    f.preset.title = preset?.description ?? '';
    const config = preset?.config;
    if (config) {
      f.resolution.value = String(config.dataset.resolution ?? 0);
      f.max_steps.value = String(config.train.max_steps ?? 0);
      f.rank.value = String(config.network.rank ?? 16);
      f.lr.value = String(config.train.lr ?? 1e-4);
    }
  };
  f.preset.onchange = fill;
  fill();
  let job: IJob | null = null;
  const submit = async () => {
    const preset = byName.get(f.preset.value);
    if (!preset) {
      throw new Error('Choose a preset.');
    }
    const config = trainConfig(preset, f);
    const reply = await postJson<{ id: string; job: IJob }>(['jobs'], {
      kind: 'train',
      params: { config, gpus: 1 },
      executor: f.executor.value
    });
    window.localStorage.setItem(LAST_BASE, f.base.value.trim());
    job = reply.job ?? { id: reply.id, kind: 'train', state: 'queued' };
  };
  await new FormDialog('New training run', form, 'Start training', submit).launch();
  return job;
}

function fields(form: Form, presets: IPreset[], datasets: IDataset[]): IFields {
  const options = datasets.map(
    (d): [string, string] => [d.name, `${d.name} (${d.images} images, ${d.captioned} captioned)`]
  );
  // no min/max here: JupyterLab's dialog would just disable its button, where the server's
  // message names the field and the allowed range
  const number = (attrs: Record<string, string>) => ({ type: 'number', ...attrs });
  const f: IFields = {
    dataset: form.add('dataset', 'Dataset', {}, options),
    base: form.add('base', 'Base model', {
      value: window.localStorage.getItem(LAST_BASE) ?? '',
      placeholder: 'a diffusers folder, a .safetensors file or a Hub id'
    }),
    preset: form.add(
      'preset',
      'Preset',
      {},
      presets.map((p): [string, string] => [p.name, p.label ?? p.name])
    ),
    resolution: form.add('resolution', 'Resolution (px)', number({})),
    max_steps: form.add('max_steps', 'Steps (0: from epochs)', number({})),
    rank: form.add('rank', 'LoRA rank', number({})),
    lr: form.add('lr', 'Learning rate', number({ step: 'any' })),
    trigger: form.add('trigger', 'Trigger word', { placeholder: 'put in front of every caption' }),
    name: form.add('name', 'LoRA name', { placeholder: "empty: the dataset's name and the date" }),
    prompt: form.add('prompt', 'Sample prompt', {
      placeholder: 'optional: renders samples while it trains'
    }),
    executor: form.add(
      'executor',
      'Run on',
      { title: 'a process on this box, or a Ray job on the cluster `lora-lab cluster start` made' },
      RUN_ON
    )
  };
  if (!datasets.length) {
    form.note('No datasets yet: create one with New dataset first.');
  }
  return f;
}

/** The preset's config with the form's values over it. */
function trainConfig(preset: IPreset, f: IFields): TrainConfigData {
  const config: TrainConfigData = JSON.parse(JSON.stringify(preset.config));
  const { model, dataset, network, train, save, sample } = config;
  if (!f.dataset.value) {
    throw new Error('Choose a dataset (New dataset makes one).');
  }
  model.base = f.base.value.trim();
  dataset.source = f.dataset.value;
  const resolution = num(f.resolution, 'Resolution');
  dataset.resolution = resolution;
  clampBuckets(dataset, resolution);
  const steps = num(f.max_steps, 'Steps');
  train.max_steps = steps;
  const rank = num(f.rank, 'LoRA rank');
  const [presetRank, alpha] = [Number(network.rank), Number(network.alpha)];
  if (alpha > 0 && presetRank > 0) {
    network.alpha = (alpha * rank) / presetRank; // the preset's alpha/rank scale stays
  }
  network.rank = rank;
  train.lr = num(f.lr, 'Learning rate');
  dataset.trigger = f.trigger.value.trim();
  save.name = f.name.value.trim();
  const prompt = f.prompt.value.trim();
  if (prompt) {
    sample.prompts = [prompt];
    sample.every_n_steps =
      Number(sample.every_n_steps) || (steps > 0 ? Math.max(1, Math.round(steps / 4)) : 250);
  }
  return config;
}

/**
 * Buckets the preset set for its own resolution must still hold a smaller or larger one
 * (TrainConfig refuses min_bucket > resolution and max_bucket < resolution).
 */
function clampBuckets(dataset: Record<string, unknown>, resolution: number): void {
  if (!resolution) {
    return;
  }
  if (Number(dataset.min_bucket) > resolution) {
    dataset.min_bucket = resolution;
  }
  if (Number(dataset.max_bucket) && Number(dataset.max_bucket) < resolution) {
    dataset.max_bucket = resolution;
  }
}

function num(input: HTMLInputElement, label: string): number {
  const value = Number(input.value.trim() || '0');
  if (input.validity.badInput || !Number.isFinite(value)) {
    throw new Error(`${label} must be a number.`);
  }
  return value;
}
