/** How paths and sizes read in the sidebar. */

export function basename(path: string): string {
  return path.split(/[\\/]/).pop() || path;
}

/** Bytes as people read them, as `lora-lab jobs list` writes them: 812 B, 3.4 MB. */
export function fileSize(bytes: number): string {
  const units = ['B', 'KB', 'MB', 'GB', 'TB'];
  let n = bytes;
  while (n >= 1000 && units.length > 1) {
    n /= 1000;
    units.shift();
  }
  return units[0] === 'B' ? `${n.toFixed(0)} B` : `${n.toFixed(1)} ${units[0]}`;
}

/**
 * ``path`` on the server's disk (absolute, or relative to the workspace) as the file browser
 * names it, from the Jupyter root and the workspace in it; null when it lies outside the root.
 */
export function browsePath(
  path: string,
  contents: { root: string; workspace: string | null } | undefined
): string | null {
  const posix = (p: string) => p.replace(/\\/g, '/').replace(/\/+$/, '');
  const file = posix(path);
  if (!contents) {
    return null;
  }
  if (!/^(\/|[A-Za-z]:\/)/.test(file)) {
    const ws = contents.workspace;
    return ws === null ? null : [ws, file].filter(Boolean).join('/');
  }
  const root = posix(contents.root);
  return file.startsWith(`${root}/`) ? file.slice(root.length + 1) : null;
}
