/**
 * Deleting a job from the sidebar: a dialog that asks, and whether the LoRA files the job wrote
 * go too (kept unless ticked), then ``DELETE jobs/ID``. The server refuses a job that is still
 * queued or running (409, saying what to do); the caller shows that message.
 */
import { Dialog, showDialog } from '@jupyterlab/apputils';
import { Widget } from '@lumino/widgets';

import { deleteJson, IJob, IJobDeleted } from './api';
import { basename, fileSize } from './format';

/** Ask, then delete ``job``; null when the user cancelled. Throws ApiError when refused. */
export async function deleteJob(job: IJob): Promise<IJobDeleted | null> {
  const body = new Widget();
  body.addClass('lora-lab-delete-dialog');
  const size = typeof job.bytes === 'number' ? ` (${fileSize(job.bytes)})` : '';
  const text = document.createElement('p');
  text.textContent =
    `Delete job ${job.id}: its folder${size}, with its checkpoints, samples and log?`;
  body.node.appendChild(text);
  const removeLora = document.createElement('input');
  removeLora.type = 'checkbox';
  removeLora.name = 'remove-lora';
  const loras = job.loras?.map(lora => lora.path) ?? (job.output ? [job.output] : []);
  if (loras.length) {
    const label = document.createElement('label');
    label.title = loras.join('\n');
    const one = loras.length === 1;
    const what = one ? `its LoRA file, ${basename(loras[0])}` : `its ${loras.length} LoRA files`;
    label.append(removeLora, `Also remove ${what}`);
    body.node.appendChild(label);
  }
  const result = await showDialog({
    title: 'Delete job',
    body,
    buttons: [Dialog.cancelButton(), Dialog.warnButton({ label: 'Delete' })]
  });
  if (!result.button.accept) {
    return null;
  }
  const lora = removeLora.checked ? 'remove' : 'keep';
  return deleteJson<IJobDeleted>(['jobs', job.id], { lora });
}

/** What a deletion did, in a sentence. */
export function deletedText(done: IJobDeleted): string {
  let lora = '';
  if (done.lora_removed) {
    lora = ' and its LoRA file';
  } else if (done.lora) {
    const why = done.lora_kept ? `: ${done.lora_kept}` : '';
    lora = ` (its LoRA file ${basename(done.lora)} is kept${why})`;
  }
  const steps = done.step_loras_removed ? `, ${done.step_loras_removed} intermediate LoRAs` : '';
  return `Deleted job ${done.id}${lora}${steps}; ${fileSize(done.bytes)} freed.`;
}
