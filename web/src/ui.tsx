// Shared widgets: live announcements, error display, permission-aware
// buttons, a focus-trapping dialog, and a list+watch hook.
import type { ComponentChildren } from 'preact';
import { useEffect, useRef, useState } from 'preact/hooks';
import { Access, ApiError, canI, listWatch, Obj } from './api';

export function go(hash: string) {
  location.hash = hash;
}

// ---- aria-live announcements ------------------------------------------------

let announcer: (msg: string) => void = () => {};
export function announce(msg: string) {
  announcer(msg);
}

export function LiveRegion() {
  const [msg, setMsg] = useState('');
  useEffect(() => {
    announcer = (m: string) => {
      // Clear first so repeating the same message is read again.
      setMsg('');
      setTimeout(() => setMsg(m), 30);
    };
  }, []);
  return (
    <div class="live" role="status" aria-live="polite" aria-atomic="true">
      {msg}
    </div>
  );
}

// ---- errors -----------------------------------------------------------------

export function ErrorBox({ error, onField }: { error: unknown; onField?: (field: string) => void }) {
  if (!error) return null;
  const e = error as ApiError;
  const causes = e instanceof ApiError ? e.causes : [];
  return (
    <div class="error" role="alert">
      <p>
        <strong>Error{e instanceof ApiError && e.code ? ` ${e.code}` : ''}:</strong> {String(e.message || e)}
      </p>
      {causes.length > 0 && (
        <ul class="causes">
          {causes.map((c, i) => (
            <li key={i}>
              {c.field ? (
                onField ? (
                  <button type="button" class="link field" onClick={() => onField(c.field!)}>
                    {c.field}
                  </button>
                ) : (
                  <code class="field">{c.field}</code>
                )
              ) : null}
              {c.field ? ': ' : ''}
              {c.message || c.reason}
            </li>
          ))}
        </ul>
      )}
    </div>
  );
}

// ---- permissions ------------------------------------------------------------

export type Perm = { allowed: boolean | undefined; reason: string };

export function useCan(a: Access | null): Perm {
  const [p, setP] = useState<Perm>({ allowed: undefined, reason: 'checking permission…' });
  const key = a ? JSON.stringify(a) : '';
  useEffect(() => {
    if (!a) return;
    let live = true;
    setP({ allowed: undefined, reason: 'checking permission…' });
    canI(a).then((r) => {
      if (live) setP({ allowed: r.allowed, reason: r.allowed ? '' : describeDenied(a, r.reason) });
    });
    return () => {
      live = false;
    };
  }, [key]);
  return p;
}

function describeDenied(a: Access, reason: string): string {
  const what = `${a.resource}${a.subresource ? '/' + a.subresource : ''}`;
  return `You may not ${a.verb} ${what} in namespace ${a.namespace}${reason ? ` (${reason})` : ''}`;
}

/**
 * A button for an action the user may lack permission for, or that does not
 * apply in the current state. It is then marked aria-disabled rather than
 * disabled, so that it stays focusable and its reason (in title and
 * aria-description) can be read; clicks are ignored.
 */
export function ActionButton(props: {
  perm: Perm;
  label: string;
  ariaLabel?: string;
  onClick: () => void | Promise<void>;
  notNow?: string; // reason it cannot be done in the current state
  danger?: boolean;
  testid?: string;
}) {
  const [busy, setBusy] = useState(false);
  const why = props.perm.allowed === false || props.perm.allowed === undefined ? props.perm.reason : props.notNow || '';
  const disabled = !!why || busy;
  return (
    <button
      type="button"
      class={props.danger ? 'danger' : ''}
      aria-disabled={disabled ? 'true' : undefined}
      title={why || undefined}
      aria-description={why || undefined}
      aria-label={props.ariaLabel}
      data-testid={props.testid}
      onClick={async () => {
        if (disabled) return;
        setBusy(true);
        try {
          await props.onClick();
        } finally {
          setBusy(false);
        }
      }}
    >
      {props.label}
    </button>
  );
}

// ---- keyboard ---------------------------------------------------------------

/** The chord that leaves a console (as in virtctl): Ctrl+]. */
export const CONSOLE_ESCAPE = 'Ctrl+]';

export function isConsoleEscape(e: KeyboardEvent): boolean {
  return e.ctrlKey && !e.altKey && !e.metaKey && (e.key === ']' || e.code === 'BracketRight');
}

/** Moves focus to the page's heading (after navigation, so it is never lost). */
export function focusHeading() {
  document.querySelector<HTMLElement>('main h1')?.focus();
}

// ---- dialog -----------------------------------------------------------------

const FOCUSABLE = 'button, [href], input, select, textarea, [tabindex]:not([tabindex="-1"])';

export function Dialog(props: { title: string; onClose: () => void; children: ComponentChildren }) {
  const ref = useRef<HTMLDivElement>(null);
  useEffect(() => {
    const opener = document.activeElement as HTMLElement | null;
    const el = ref.current!;
    const first = el.querySelector<HTMLElement>('input, textarea, select') || el.querySelector<HTMLElement>(FOCUSABLE);
    first?.focus();
    const onKey = (e: KeyboardEvent) => {
      if (e.key === 'Escape') {
        e.preventDefault();
        props.onClose();
        return;
      }
      if (e.key !== 'Tab') return;
      const items = Array.from(el.querySelectorAll<HTMLElement>(FOCUSABLE)).filter(
        (x) => !(x as HTMLButtonElement).disabled,
      );
      if (items.length === 0) return;
      const f = items[0];
      const l = items[items.length - 1];
      if (e.shiftKey && document.activeElement === f) {
        e.preventDefault();
        l.focus();
      } else if (!e.shiftKey && document.activeElement === l) {
        e.preventDefault();
        f.focus();
      }
    };
    el.addEventListener('keydown', onKey);
    return () => {
      el.removeEventListener('keydown', onKey);
      if (opener && document.contains(opener)) opener.focus();
    };
  }, []);
  return (
    <div class="backdrop">
      <div class="dialog" role="dialog" aria-modal="true" aria-labelledby="dialog-title" ref={ref}>
        <h2 id="dialog-title">{props.title}</h2>
        {props.children}
      </div>
    </div>
  );
}

// ---- list + watch hook ------------------------------------------------------

export function useWatch(path: string | null, query = ''): { items: Obj[]; loaded: boolean; error: Error | null } {
  const [state, setState] = useState<{ items: Obj[]; loaded: boolean; error: Error | null }>({
    items: [],
    loaded: false,
    error: null,
  });
  useEffect(() => {
    setState({ items: [], loaded: false, error: null });
    if (!path) return;
    return listWatch(path, query, {
      onChange: (m) => {
        const items = Array.from(m.values()).sort((a, b) => a.metadata.name.localeCompare(b.metadata.name));
        setState({ items, loaded: true, error: null });
      },
      onError: (e) => setState((s) => ({ ...s, error: e })),
    });
  }, [path, query]);
  return state;
}

export function Progress({ value, label }: { value: string | undefined; label: string }) {
  const n = value ? parseFloat(value) : NaN;
  if (isNaN(n)) return <span>{value || ''}</span>;
  return (
    <span class="progress">
      <progress max={100} value={n} aria-label={label} />
      <span>{value}</span>
    </span>
  );
}

/** Announces VM status changes (after the first list) in the live region. */
export function useStatusAnnouncements(items: Obj[], loaded: boolean) {
  const prev = useRef<Map<string, string> | null>(null);
  useEffect(() => {
    if (!loaded) return;
    const now = new Map(items.map((v) => [v.metadata.name, v.status?.printableStatus || 'Unknown']));
    const before = prev.current;
    prev.current = now;
    if (!before) return;
    const changes: string[] = [];
    for (const [n, st] of now) if (before.get(n) !== st) changes.push(`${n} is ${st}`);
    for (const n of before.keys()) if (!now.has(n)) changes.push(`${n} was deleted`);
    if (changes.length) announce(changes.join('; '));
  }, [items, loaded]);
}
