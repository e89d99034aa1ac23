/**
 * The captioning panel's keys and tile clicks. The panel (lora_lab.widgets.CaptionPanel) is
 * ipywidgets in a notebook's output: each key is a command that clicks the panel's own button,
 * so the kernel does the work as for a mouse click; a click on a tile's picture clicks its
 * open button (an ipywidgets Image has no click event).
 *
 * A click waits until the kernel has taken what was typed before it: ipywidgets holds a text
 * box's newest value back while its previous update is unanswered, and a click sent meanwhile
 * would overtake it (the caption saved would lack its last keys, and the next image get them).
 */
import { JupyterFrontEnd } from '@jupyterlab/application';
import { ISessionContext } from '@jupyterlab/apputils';
import { Kernel } from '@jupyterlab/services';
import { CommandRegistry } from '@lumino/commands';

const PANEL = '.lora-lab-caption-panel';
const TEXT = '.lora-lab-caption-text textarea';
/** What a click on a tile leaves alone: its checkbox (all of ipywidgets' box) and buttons. */
const CONTROLS = 'button, input, select, textarea, label, a, .widget-checkbox';

/**
 * Lumino runs the binding whose selector matches nearest the focused element. The panel's
 * class wins over the notebook's Ctrl+Enter (run the cell, bound on the notebook, farther up)
 * while a text box has the focus; with a button focused, the notebook's command-mode binding
 * matches the button itself, so a second selector matches it too and is more specific.
 */
const SELECTORS = [
  PANEL,
  `.jp-Notebook.jp-mod-commandMode:not(.jp-mod-readWrite) ${PANEL} :focus`
];

/** Each command: its keys (alternatives) and the button it clicks. */
const KEYS = [
  {
    id: 'lora-lab:caption-prev',
    label: 'Previous Image',
    keys: ['Alt ArrowLeft'],
    button: '.lora-lab-prev'
  },
  {
    id: 'lora-lab:caption-next',
    label: 'Next Image',
    keys: ['Alt ArrowRight'],
    button: '.lora-lab-next'
  },
  {
    id: 'lora-lab:caption-save-next',
    label: 'Save Caption and Next Image',
    keys: ['Ctrl Enter', 'Accel Enter'], // Cmd+Enter on a Mac too, where it would run the cell
    button: '.lora-lab-save-next'
  },
  {
    id: 'lora-lab:caption-ai',
    label: 'Caption This Image with AI',
    keys: ['Alt C'],
    button: '.lora-lab-caption-ai'
  }
];

/** The panel's commands and keys, and the tile click listener; once, at activation. */
export function addCaptionKeys(app: JupyterFrontEnd): void {
  const { commands, shell } = app;
  for (const { id, keys, button, label } of KEYS) {
    commands.addCommand(id, {
      label,
      caption: 'In the captioning panel that has the focus',
      execute: () => clickInFocusedPanel(shell, button)
    });
    const unique = new Set(keys.map(key => CommandRegistry.normalizeKeystroke(key)));
    for (const key of unique) {
      for (const selector of SELECTORS) {
        commands.addKeyBinding({ command: id, keys: [key], selector });
      }
    }
  }
  // JupyterLab hears keys as they bubble up to the document, and ipywidgets' text boxes stop
  // them on the way (so typing there never runs a shortcut): the panel's own keys are handed
  // to the command registry on the way down instead, and only those
  document.addEventListener(
    'keydown',
    event => {
      const inPanel = (event.target as Element).closest?.(PANEL);
      if (inPanel && panelKeys(commands).has(CommandRegistry.keystrokeForKeydownEvent(event))) {
        commands.processKeydownEvent(event);
      }
    },
    true
  );
  document.addEventListener('click', event => void openClickedTile(shell, event));
}

/** The keystrokes bound to the panel's commands now (the user may have changed them). */
function panelKeys(commands: CommandRegistry): Set<string> {
  const ids = new Set(KEYS.map(key => key.id));
  const bound = commands.keyBindings.filter(b => ids.has(b.command) && b.keys.length === 1);
  return new Set(bound.map(b => b.keys[0]));
}

async function clickInFocusedPanel(shell: JupyterFrontEnd.IShell, selector: string) {
  const focused = document.activeElement;
  const panel = focused?.closest(PANEL);
  if (!panel) {
    return;
  }
  if (focused!.matches('textarea, input[type="text"]')) {
    // ipywidgets sends a text box's value on change (when it loses the focus) unless it updates
    // continuously: send it now, as the blur of a mouse click would
    focused!.dispatchEvent(new Event('change', { bubbles: true }));
  }
  await settled(kernelOf(shell, panel));
  press(panel.querySelector(selector));
}

/** A click on a caption panel's tile, except on its own checkbox or buttons, opens it. */
async function openClickedTile(shell: JupyterFrontEnd.IShell, event: MouseEvent) {
  const target = event.target as Element;
  const tile = event.button === 0 ? target.closest?.(`${PANEL} .lora-lab-tile`) : null;
  const control = tile && target.closest(CONTROLS);
  if (!tile || (control && tile.contains(control))) {
    return;
  }
  const panel = tile.closest(PANEL)!;
  // typing goes to the caption and the keys work: both want the focus inside the panel
  panel.querySelector<HTMLElement>(TEXT)?.focus({ preventScroll: true });
  await settled(kernelOf(shell, panel));
  press(tile.querySelector('.lora-lab-open'));
}

/** The kernel of the notebook (or other main-area widget with a session) showing ``panel``. */
function kernelOf(shell: JupyterFrontEnd.IShell, panel: Element): Kernel.IKernelConnection | null {
  for (const widget of shell.widgets('main')) {
    if (widget.node.contains(panel)) {
      const context = (widget as { sessionContext?: ISessionContext }).sessionContext;
      return context?.session?.kernel ?? null;
    }
  }
  return null;
}

/**
 * Resolves once ``kernel`` has answered a request sent now, so every message sent before it
 * has been taken. A value ipywidgets held back is sent when the update before it is answered,
 * which comes before this answer (both on the kernel's ordered IOPub channel).
 */
async function settled(kernel: Kernel.IKernelConnection | null): Promise<void> {
  try {
    await kernel?.requestKernelInfo();
  } catch {
    // no kernel to ask (gone, restarting): the click goes as a mouse click would
  }
}

/** Click the button ``el`` is (or holds) unless it is disabled; whether it was clicked. */
function press(el: Element | null): boolean {
  const button = el?.matches('button') ? el : el?.querySelector('button');
  if (!(button instanceof HTMLButtonElement) || button.disabled) {
    return false;
  }
  button.click();
  return true;
}
