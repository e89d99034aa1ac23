/**
 * The commands (palette, launcher cards, the sidebar's buttons): Quickstart, New dataset,
 * New training run, and showing the sidebar.
 */
import { JupyterFrontEnd } from '@jupyterlab/application';
import { ICommandPalette, Notification } from '@jupyterlab/apputils';
import { IDefaultFileBrowser } from '@jupyterlab/filebrowser';
import { ILauncher } from '@jupyterlab/launcher';
import { imageIcon, runIcon } from '@jupyterlab/ui-components';

import { postJson } from './api';
import { newDataset } from './dialogs';
import { loraLabIcon } from './icons';
import { Sidebar } from './sidebar';
import { newTrainingRun } from './trainDialog';

export const CATEGORY = 'LoRA Lab';

export const CommandIds = {
  quickstart: 'lora-lab:quickstart',
  newDataset: 'lora-lab:new-dataset',
  newTrainingRun: 'lora-lab:new-training-run',
  openSidebar: 'lora-lab:open-sidebar'
};

interface IKitReport {
  dest: string;
  open: string | null;
}

export function addCommands(
  app: JupyterFrontEnd,
  sidebar: Sidebar,
  browser: IDefaultFileBrowser | null
): void {
  const { commands, shell } = app;
  const failed = (what: string) => (e: unknown) => {
    Notification.error(`${what}: ${(e as Error).message}`, { autoClose: false });
  };
  commands.addCommand(CommandIds.quickstart, {
    label: 'Quickstart',
    caption: 'Copy the notebook kit into the workspace (edited ones are kept), open the quickstart',
    icon: args => (args.isPalette ? undefined : loraLabIcon),
    execute: async () => {
      try {
        const kit = await postJson<IKitReport>(['kit']);
        if (kit.open) {
          await commands.execute('docmanager:open', { path: kit.open });
        } else {
          Notification.info(`The notebooks are in ${kit.dest}, outside the Jupyter root.`);
        }
      } catch (e) {
        failed('Quickstart')(e);
      }
    }
  });
  commands.addCommand(CommandIds.newDataset, {
    label: 'New Dataset',
    caption: 'A lora_lab dataset from a zip upload or a folder',
    icon: args => (args.isPalette ? undefined : imageIcon),
    execute: async () => {
      const contents = browser?.model.manager.services.contents;
      const folder = browser ? contents!.localPath(browser.model.path) : '';
      await newDataset(folder, () => sidebar.model.contents()).catch(failed('New dataset'));
    }
  });
  commands.addCommand(CommandIds.newTrainingRun, {
    label: 'New Training Run',
    caption: 'Train a LoRA on a lora_lab dataset, as a background job',
    icon: args => (args.isPalette ? undefined : runIcon),
    execute: async () => {
      try {
        const job = await newTrainingRun();
        if (job) {
          sidebar.model.upsert(job);
          shell.activateById(sidebar.id);
          sidebar.select(job.id);
        }
      } catch (e) {
        failed('New training run')(e);
      }
    }
  });
  commands.addCommand(CommandIds.openSidebar, {
    label: 'Show the LoRA Lab Sidebar',
    execute: () => shell.activateById(sidebar.id)
  });
}

export function addToLauncher(launcher: ILauncher): void {
  const cards = [CommandIds.quickstart, CommandIds.newDataset, CommandIds.newTrainingRun];
  cards.forEach((command, rank) => launcher.add({ command, category: CATEGORY, rank }));
}

export function addToPalette(palette: ICommandPalette): void {
  for (const command of Object.values(CommandIds)) {
    palette.addItem({ command, category: CATEGORY });
  }
}
