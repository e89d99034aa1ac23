/**
 * The loss curve: one SVG polyline over the steps, and a dashed one of the validation loss
 * (held-out images) when the run validates, colored by JupyterLab's theme variables
 * (style/base.css), so it reads in the light and the dark theme alike.
 */
const SVG = 'http://www.w3.org/2000/svg';
const WIDTH = 300;
const HEIGHT = 100;
const MAX_POINTS = 600; // more than the pixels across: average neighbours

export class LossChart {
  readonly node = document.createElement('div');

  constructor() {
    this.node.className = 'lora-lab-loss';
    this.svg.setAttribute('viewBox', `0 0 ${WIDTH} ${HEIGHT}`);
    this.svg.setAttribute('preserveAspectRatio', 'none');
    this.svg.setAttribute('role', 'img');
    for (const y of [0.25, 0.5, 0.75]) {
      const line = document.createElementNS(SVG, 'line');
      line.setAttribute('class', 'lora-lab-grid');
      line.setAttribute('x1', '0');
      line.setAttribute('x2', String(WIDTH));
      line.setAttribute('y1', String(y * HEIGHT));
      line.setAttribute('y2', String(y * HEIGHT));
      this.svg.appendChild(line);
    }
    this.line.setAttribute('vector-effect', 'non-scaling-stroke');
    this.valLine.setAttribute('vector-effect', 'non-scaling-stroke');
    this.valLine.setAttribute('class', 'lora-lab-val');
    this.svg.append(this.line, this.valLine);
    this.caption.className = 'lora-lab-loss-caption';
    this.valCaption.className = 'lora-lab-loss-caption lora-lab-val-caption';
    this.valCaption.hidden = true;
    this.node.append(this.svg, this.caption, this.valCaption);
    this.node.hidden = true;
  }

  /** One progress event's loss at its step. */
  add(step: number, loss: number): void {
    if (Number.isFinite(step) && Number.isFinite(loss)) {
      this.points.push([step, loss]);
    }
  }

  /** One validation event's loss at its step; ``best``: the lowest so far. */
  addValidation(step: number, loss: number, best: boolean): void {
    if (Number.isFinite(step) && Number.isFinite(loss)) {
      this.valPoints.push([step, loss]);
      if (best) {
        this.best = [step, loss];
      }
    }
  }

  clear(): void {
    this.points = [];
    this.valPoints = [];
    this.best = null;
    this.render(0);
  }

  /** Redraw; ``total`` steps set the x axis (the run's length, when known). */
  render(total: number): void {
    const points = decimate(this.points);
    this.node.hidden = points.length === 0;
    if (!points.length) {
      this.line.setAttribute('points', '');
      return;
    }
    const losses = [...points, ...this.valPoints].map(p => p[1]);
    const lo = Math.min(...losses);
    const hi = Math.max(...losses);
    const last = this.points[this.points.length - 1];
    const xMax = Math.max(total, last[0], 1);
    const span = hi - lo || 1;
    const coords = (pts: [number, number][]) =>
      pts
        .map(([step, loss]) => {
          const x = (step / xMax) * WIDTH;
          const y = HEIGHT - 4 - ((loss - lo) / span) * (HEIGHT - 8);
          return `${x.toFixed(1)},${y.toFixed(1)}`;
        })
        .join(' ');
    this.line.setAttribute('points', coords(points));
    this.valLine.setAttribute('points', coords(this.valPoints));
    this.svg.setAttribute(
      'aria-label',
      `loss from ${fmt(this.points[0][1])} to ${fmt(last[1])} over ${last[0]} steps`
    );
    this.caption.textContent =
      `loss ${fmt(last[1])} at step ${last[0]}` + ` · min ${fmt(lo)} · max ${fmt(hi)}`;
    const val = this.valPoints[this.valPoints.length - 1];
    this.valCaption.hidden = !val;
    if (val) {
      const best = this.best ? ` · best ${fmt(this.best[1])} at step ${this.best[0]}` : '';
      this.valCaption.textContent = `validation loss ${fmt(val[1])} at step ${val[0]}${best}`;
    }
  }

  private points: [number, number][] = [];
  private valPoints: [number, number][] = []; // one a validation: few, drawn as they are
  private best: [number, number] | null = null;
  private svg = document.createElementNS(SVG, 'svg');
  private line = document.createElementNS(SVG, 'polyline');
  private valLine = document.createElementNS(SVG, 'polyline');
  private caption = document.createElement('div');
  private valCaption = document.createElement('div');
}

function fmt(loss: number): string {
  return loss.toPrecision(3);
}

/** At most MAX_POINTS points: each the mean of a run of neighbours. */
function decimate(points: [number, number][]): [number, number][] {
  if (points.length <= MAX_POINTS) {
    return points;
  }
  const size = Math.ceil(points.length / MAX_POINTS);
  const out: [number, number][] = [];
  for (let i = 0; i < points.length; i += size) {
    const run = points.slice(i, i + size);
    const mean = run.reduce((sum, p) => sum + p[1], 0) / run.length;
    out.push([run[run.length - 1][0], mean]);
  }
  return out;
}
