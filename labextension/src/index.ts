/**
 * lora_lab in JupyterLab: launcher cards and palette entries (Quickstart, New dataset, New
 * training run), the "LoRA Lab" sidebar with the workspace's jobs, datasets and GPUs, and the
 * captioning panel's keys.
 */
import {
  ILayoutRestorer,
  JupyterFrontEnd,
  JupyterFrontEndPlugin
} from '@jupyterlab/application';
import { ICommandPalette } from '@jupyterlab/apputils';
import { IDefaultFileBrowser } from '@jupyterlab/filebrowser';
import { ILauncher } from '@jupyterlab/launcher';

import { addCaptionKeys } from './captionKeys';
import { addCommands, addToLauncher, addToPalette } from './commands';
import { loraLabIcon } from './icons';
import { LabModel } from './model';
import { Sidebar } from './sidebar';

const plugin: JupyterFrontEndPlugin<void> = {
  id: 'lora-lab:plugin',
  description: 'Launcher cards and a sidebar for lora_lab datasets and training jobs.',
  autoStart: true,
  optional: [ILauncher, ICommandPalette, ILayoutRestorer, IDefaultFileBrowser],
  activate: (
    app: JupyterFrontEnd,
    launcher: ILauncher | null,
    palette: ICommandPalette | null,
    restorer: ILayoutRestorer | null,
    browser: IDefaultFileBrowser | null
  ) => {
    const sidebar = new Sidebar(new LabModel(), app.commands);
    sidebar.title.icon = loraLabIcon;
    app.shell.add(sidebar, 'left', { rank: 850 });
    restorer?.add(sidebar, sidebar.id);
    addCommands(app, sidebar, browser);
    addCaptionKeys(app);
    if (launcher) {
      addToLauncher(launcher);
    }
    if (palette) {
      addToPalette(palette);
    }
  }
};

export default plugin;
