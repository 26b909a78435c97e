// What every page gets: the session (scopes, trace link template), navigation, and the
// contract a page keeps (its element, and dispose() to stop its polling and watches).

import type { Session } from "./types";

export interface Page {
  element: HTMLElement;
  dispose(): void;
}

export interface AppContext {
  session: Session;
  navigate(url: string, replace?: boolean): void;
  // Set the document title (the page's subject first).
  title(text: string): void;
}

export const canWrite = (ctx: AppContext): boolean => ctx.session.scopes.includes("write");
export const canRead = (ctx: AppContext): boolean => ctx.session.scopes.includes("read");

/** A repeating refresh that pauses while the tab is hidden and stops on dispose. */
export function every(ms: number, tick: () => Promise<void> | void): () => void {
  let timer = 0;
  let stopped = false;
  let running = false;
  const run = async (): Promise<void> => {
    if (stopped) return;
    if (!document.hidden && !running) {
      running = true;
      try {
        await tick();
      } catch {
        /* shown by the page; the next tick tries again */
      } finally {
        running = false;
      }
    }
    if (!stopped) timer = window.setTimeout(run, ms);
  };
  timer = window.setTimeout(run, ms);
  return () => {
    stopped = true;
    window.clearTimeout(timer);
  };
}
