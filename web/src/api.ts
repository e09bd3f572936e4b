// Talking to the Kubernetes-compatible API on the same origin, with the
// user's own bearer token (the console's server adds no credentials).

export type Obj = {
  apiVersion?: string;
  kind?: string;
  metadata: {
    name: string;
    namespace?: string;
    resourceVersion?: string;
    creationTimestamp?: string;
    uid?: string;
    labels?: Record<string, string>;
    [k: string]: unknown;
  };
  spec?: any;
  status?: any;
  [k: string]: any;
};

const TOKEN_KEY = 'kubevirt-rs.token';

export function getToken(): string | null {
  return sessionStorage.getItem(TOKEN_KEY);
}

export function setToken(token: string | null): void {
  if (token) sessionStorage.setItem(TOKEN_KEY, token);
  else sessionStorage.removeItem(TOKEN_KEY);
  accessCache.clear();
}

export type Cause = { field?: string; message?: string; reason?: string };

export class ApiError extends Error {
  code: number;
  reason: string;
  causes: Cause[];
  constructor(code: number, message: string, reason = '', causes: Cause[] = []) {
    super(message);
    this.code = code;
    this.reason = reason;
    this.causes = causes;
  }
}

async function errorFrom(res: Response): Promise<ApiError> {
  let text = '';
  try {
    text = await res.text();
  } catch {
    /* body unreadable */
  }
  try {
    const st = JSON.parse(text);
    if (st && st.kind === 'Status') {
      return new ApiError(res.status, st.message || res.statusText, st.reason || '', st.details?.causes || []);
    }
  } catch {
    /* not JSON */
  }
  const plain = text.trim();
  const msg = !plain || plain.startsWith('<') || plain.length > 500 ? `${res.status} ${res.statusText}` : plain;
  return new ApiError(res.status, msg);
}

/** Called when any request answers 401: the session's token is no good. */
let onUnauthorized: () => void = () => {};
export function setUnauthorizedHandler(f: () => void) {
  onUnauthorized = f;
}

export async function api<T = any>(
  method: string,
  path: string,
  body?: unknown,
  opts: { signal?: AbortSignal; token?: string } = {},
): Promise<T> {
  const token = opts.token ?? getToken();
  const headers: Record<string, string> = { Accept: 'application/json' };
  if (token) headers.Authorization = `Bearer ${token}`;
  if (body !== undefined) headers['Content-Type'] = 'application/json';
  const res = await fetch(path, {
    method,
    headers,
    body: body === undefined ? undefined : JSON.stringify(body),
    signal: opts.signal,
  });
  if (!res.ok) {
    const err = await errorFrom(res);
    if (res.status === 401 && !opts.token) onUnauthorized();
    throw err;
  }
  const text = await res.text();
  return (text ? JSON.parse(text) : {}) as T;
}

export async function whoAmI(token: string): Promise<string> {
  const r = await api(
    'POST',
    '/apis/authentication.k8s.io/v1/selfsubjectreviews',
    { apiVersion: 'authentication.k8s.io/v1', kind: 'SelfSubjectReview' },
    { token },
  );
  return r?.status?.userInfo?.username || '(unknown user)';
}

export type Access = {
  namespace?: string;
  verb: string;
  group: string;
  resource: string;
  subresource?: string;
  name?: string;
};

const accessCache = new Map<string, Promise<{ allowed: boolean; reason: string }>>();

export function canI(a: Access): Promise<{ allowed: boolean; reason: string }> {
  const key = JSON.stringify(a);
  let p = accessCache.get(key);
  if (!p) {
    p = api('POST', '/apis/authorization.k8s.io/v1/selfsubjectaccessreviews', {
      apiVersion: 'authorization.k8s.io/v1',
      kind: 'SelfSubjectAccessReview',
      spec: { resourceAttributes: a },
    }).then(
      (r) => ({ allowed: !!r?.status?.allowed, reason: r?.status?.reason || '' }),
      (e) => {
        accessCache.delete(key);
        return { allowed: false, reason: `access check failed: ${e.message}` };
      },
    );
    accessCache.set(key, p);
  }
  return p;
}

export function base64url(s: string): string {
  const bytes = new TextEncoder().encode(s);
  let bin = '';
  for (const b of bytes) bin += String.fromCharCode(b);
  return btoa(bin).replace(/\+/g, '-').replace(/\//g, '_').replace(/=+$/, '');
}

export function wsProtocols(): string[] {
  return ['plain.kubevirt.io', 'base64url.bearer.authorization.k8s.io.' + base64url(getToken() || '')];
}

export function wsUrl(path: string): string {
  const proto = location.protocol === 'https:' ? 'wss:' : 'ws:';
  return `${proto}//${location.host}${path}`;
}

// ---- resource paths -------------------------------------------------------

export const paths = {
  vms: (ns: string) => `/apis/kubevirt.io/v1/namespaces/${enc(ns)}/virtualmachines`,
  vm: (ns: string, n: string) => `/apis/kubevirt.io/v1/namespaces/${enc(ns)}/virtualmachines/${enc(n)}`,
  vmis: (ns: string) => `/apis/kubevirt.io/v1/namespaces/${enc(ns)}/virtualmachineinstances`,
  vmims: (ns: string) => `/apis/kubevirt.io/v1/namespaces/${enc(ns)}/virtualmachineinstancemigrations`,
  vmSub: (ns: string, n: string, sub: string) =>
    `/apis/subresources.kubevirt.io/v1/namespaces/${enc(ns)}/virtualmachines/${enc(n)}/${sub}`,
  vmiSub: (ns: string, n: string, sub: string) =>
    `/apis/subresources.kubevirt.io/v1/namespaces/${enc(ns)}/virtualmachineinstances/${enc(n)}/${sub}`,
  snapshots: (ns: string) => `/apis/snapshot.kubevirt.io/v1beta1/namespaces/${enc(ns)}/virtualmachinesnapshots`,
  dvs: (ns: string) => `/apis/cdi.kubevirt.io/v1beta1/namespaces/${enc(ns)}/datavolumes`,
  dv: (ns: string, n: string) => `/apis/cdi.kubevirt.io/v1beta1/namespaces/${enc(ns)}/datavolumes/${enc(n)}`,
  uploadTokens: (ns: string) => `/apis/upload.cdi.kubevirt.io/v1beta1/namespaces/${enc(ns)}/uploadtokenrequests`,
  events: (ns: string) => `/api/v1/namespaces/${enc(ns)}/events`,
};

function enc(s: string) {
  return encodeURIComponent(s);
}

// ---- list + watch ----------------------------------------------------------

export type WatchHandlers = {
  /** The full set after a (re-)list, and again after every event. */
  onChange: (items: Map<string, Obj>) => void;
  onError?: (e: Error) => void;
};

/**
 * Lists `path` (with optional extra query), then watches from the list's
 * resourceVersion, applying ADDED/MODIFIED/DELETED events. When the stream
 * ends or the server reports 410 Gone, it lists and watches again. Returns a
 * function that cancels everything.
 */
export function listWatch(path: string, query: string, h: WatchHandlers): () => void {
  const ctl = new AbortController();
  let items = new Map<string, Obj>();
  let stopped = false;
  const sep = (q: string) => (q ? `?${q}&` : '?');
  const key = (o: Obj) => (o.metadata.namespace ? `${o.metadata.namespace}/${o.metadata.name}` : o.metadata.name);

  const sleep = (ms: number) =>
    new Promise<void>((r) => {
      const t = setTimeout(r, ms);
      ctl.signal.addEventListener('abort', () => {
        clearTimeout(t);
        r();
      });
    });

  async function loop() {
    let backoff = 500;
    while (!stopped) {
      try {
        const list = await api('GET', `${path}${query ? '?' + query : ''}`, undefined, { signal: ctl.signal });
        items = new Map();
        for (const o of list.items || []) items.set(key(o), o);
        h.onChange(new Map(items));
        const rv: string = list.metadata?.resourceVersion || '';
        const token = getToken();
        const res = await fetch(
          `${path}${sep(query)}watch=1&allowWatchBookmarks=true${rv ? `&resourceVersion=${encodeURIComponent(rv)}` : ''}`,
          { headers: token ? { Authorization: `Bearer ${token}` } : {}, signal: ctl.signal },
        );
        if (!res.ok || !res.body) throw await errorFrom(res);
        const started = Date.now();
        const reader = res.body.getReader();
        const dec = new TextDecoder();
        let buf = '';
        let gone = false;
        while (!stopped && !gone) {
          const { value, done } = await reader.read();
          if (done) break;
          buf += dec.decode(value, { stream: true });
          let nl: number;
          while ((nl = buf.indexOf('\n')) >= 0) {
            const line = buf.slice(0, nl).trim();
            buf = buf.slice(nl + 1);
            if (!line) continue;
            let ev: { type: string; object: any };
            try {
              ev = JSON.parse(line);
            } catch {
              continue;
            }
            if (ev.type === 'ERROR') {
              gone = true; // 410 Gone or another error: start over with a fresh list
              break;
            }
            const o = ev.object as Obj;
            if (ev.type === 'BOOKMARK') continue;
            if (ev.type === 'DELETED') items.delete(key(o));
            else items.set(key(o), o);
            h.onChange(new Map(items));
          }
        }
        reader.cancel().catch(() => {});
        // A watch that errors or ends at once must not turn into a busy loop.
        if (Date.now() - started < 1000) {
          await sleep(backoff);
          backoff = Math.min(backoff * 2, 10000);
        } else backoff = 500;
      } catch (e: any) {
        if (stopped || e?.name === 'AbortError') return;
        h.onError?.(e);
        await sleep(backoff);
        backoff = Math.min(backoff * 2, 10000);
      }
    }
  }
  loop();
  return () => {
    stopped = true;
    ctl.abort();
  };
}

// ---- formatting helpers ---------------------------------------------------

export function age(ts?: string): string {
  if (!ts) return '';
  const s = Math.max(0, (Date.now() - Date.parse(ts)) / 1000);
  if (s < 120) return `${Math.floor(s)}s`;
  if (s < 7200) return `${Math.floor(s / 60)}m`;
  if (s < 172800) return `${Math.floor(s / 3600)}h`;
  return `${Math.floor(s / 86400)}d`;
}

export function vmCpus(vm: Obj): number {
  const cpu = vm.spec?.template?.spec?.domain?.cpu || {};
  return (cpu.cores || 1) * (cpu.sockets || 1) * (cpu.threads || 1);
}

export function vmMemory(vm: Obj): string {
  const d = vm.spec?.template?.spec?.domain || {};
  return d.memory?.guest || d.resources?.requests?.memory || '';
}
