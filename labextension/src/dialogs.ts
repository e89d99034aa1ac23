/**
 * Form dialogs that stay open until the server accepts them: a refused request (400, 409 ...)
 * shows the server's message in ``.lora-lab-dialog-error`` and the user fixes the form. And
 * the "New dataset" dialog: a zip upload, or a folder under the Jupyter root.
 */
import { Dialog, Notification } from '@jupyterlab/apputils';
import { Widget } from '@lumino/widgets';

import { IHealth, postJson, uploadZip } from './api';

/** A dialog whose accept button runs ``submit``; it closes only when that succeeds. */
export class FormDialog extends Dialog<void> {
  constructor(
    title: string,
    readonly form: Form,
    accept: string,
    private submit: () => Promise<void>
  ) {
    super({
      title,
      body: form,
      buttons: [Dialog.cancelButton(), Dialog.okButton({ label: accept })],
      focusNodeSelector: 'input, select'
    });
    this.addClass('lora-lab-dialog');
  }

  resolve(index?: number): void {
    if (index === 0) {
      super.resolve(index); // cancel
      return;
    }
    if (this.busy) {
      return;
    }
    this.busy = true;
    this.form.error('');
    this.form.status('Working…');
    this.submit()
      .then(() => super.resolve(index))
      .catch(e => {
        this.form.status('');
        this.form.error((e as Error).message);
      })
      .finally(() => {
        this.busy = false;
      });
  }

  private busy = false;
}

/** A dialog's body: labelled fields by name, a status line and the error line. */
export class Form extends Widget {
  constructor() {
    super({ node: document.createElement('form') });
    this.addClass('lora-lab-form');
    this.node.addEventListener('submit', e => e.preventDefault());
    this.statusLine.className = 'lora-lab-dialog-status';
    this.errorLine.className = 'lora-lab-dialog-error';
    this.errorLine.setAttribute('role', 'alert');
    this.node.append(this.fields, this.statusLine, this.errorLine);
    this.error('');
  }

  /** Add an input (or a select, for ``options``) named ``name``; returns it. */
  add<T extends HTMLInputElement | HTMLSelectElement>(
    name: string,
    label: string,
    attrs: Record<string, string> = {},
    options?: [string, string][]
  ): T {
    const input = document.createElement(options ? 'select' : 'input');
    input.name = name;
    for (const [key, value] of Object.entries(attrs)) {
      input.setAttribute(key, value);
    }
    for (const [value, text] of options ?? []) {
      const option = document.createElement('option');
      option.value = value;
      option.textContent = text;
      input.appendChild(option);
    }
    const row = document.createElement('label');
    row.className = 'lora-lab-field';
    const text = document.createElement('span');
    text.textContent = label;
    row.append(text, input);
    this.fields.appendChild(row);
    return input as T;
  }

  /** A line of help under the fields added so far. */
  note(text: string): void {
    const p = document.createElement('p');
    p.className = 'lora-lab-note';
    p.textContent = text;
    this.fields.appendChild(p);
  }

  status(text: string): void {
    this.statusLine.textContent = text;
  }

  error(text: string): void {
    this.errorLine.textContent = text;
    this.errorLine.hidden = !text;
  }

  private fields = document.createElement('div');
  private statusLine = document.createElement('div');
  private errorLine = document.createElement('div');
}

interface IIngestReport {
  dataset: string;
  added: unknown[];
  skipped: unknown[];
  duplicates: unknown[];
}

/**
 * Ask for a name and a zip or a folder, and create the dataset. ``folder`` is the file
 * browser's folder (contents-relative); ``contents`` says where the Jupyter root is on disk.
 */
export async function newDataset(
  folder: string,
  contents: () => Promise<IHealth['contents'] | undefined>
): Promise<void> {
  const form = new Form();
  const name = form.add<HTMLInputElement>('name', 'Name', {
    placeholder: 'letters, digits, - and _'
  });
  const zip = form.add<HTMLInputElement>('zip', 'Zip file', {
    type: 'file',
    accept: '.zip,application/zip'
  });
  const source = form.add<HTMLInputElement>('folder', 'or a folder', { value: folder });
  form.note(
    'Upload a zip of images (with .txt captions beside them, if you have them), or name a ' +
      'folder in the file browser (a path from the Jupyter root).'
  );
  zip.onchange = () => {
    const file = zip.files?.[0];
    if (file && !name.value) {
      name.value = file.name.replace(/\.zip$/i, '').replace(/[^A-Za-z0-9_-]+/g, '-');
    }
  };
  const submit = async () => {
    const dataset = name.value.trim();
    if (!dataset) {
      throw new Error('Give the dataset a name.');
    }
    const file = zip.files?.[0];
    let report: IIngestReport;
    if (file) {
      form.status(`Uploading ${file.name} (${(file.size / 2 ** 20).toFixed(1)} MiB)…`);
      report = (await uploadZip(dataset, file)) as IIngestReport;
    } else {
      const root = (await contents())?.root;
      const path = source.value.trim().replace(/^\/+|\/+$/g, '');
      if (!path) {
        throw new Error('Choose a zip file, or name a folder.');
      }
      if (!root) {
        throw new Error('The server did not say where the Jupyter root is; update lora_lab.');
      }
      report = await postJson<IIngestReport>(['datasets'], {
        name: dataset,
        source: `${root.replace(/[\\/]+$/, '')}/${path}`
      });
    }
    Notification.success(
      `Dataset ${report.dataset}: ${report.added.length} images added` +
        (report.skipped.length ? `, ${report.skipped.length} skipped` : '') +
        (report.duplicates.length ? `, ${report.duplicates.length} duplicates` : ''),
      { autoClose: 5000 }
    );
  };
  await new FormDialog('New dataset', form, 'Create', submit).launch();
}
