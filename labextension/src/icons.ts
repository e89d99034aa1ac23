/** lora_lab's icon: a picture with a small adapter block on its corner (themed by jp-icon3). */
import { LabIcon } from '@jupyterlab/ui-components';

const svg = `<svg xmlns="http://www.w3.org/2000/svg" width="16" height="16" viewBox="0 0 24 24">
  <g class="jp-icon3" fill="#616161">
    <path d="M3 4h13a1 1 0 0 1 1 1v6h-2V6H4v10.6l4.3-4.8a1 1 0 0 1 1.5 0L12 14.3V19H3
      a1 1 0 0 1-1-1V5a1 1 0 0 1 1-1z"/>
    <circle cx="12" cy="9" r="1.8"/>
    <path d="M14 13h8v8h-8zm2 2v4h4v-4z"/>
  </g>
</svg>`;

export const loraLabIcon = new LabIcon({ name: 'lora-lab:icon', svgstr: svg });
