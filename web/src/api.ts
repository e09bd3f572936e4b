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

/** Called when a request made with the session's token answers 401. */
let onUnauthorized: () => void = () => {};
export function setUnauthorizedHandler(f: () => void) {
  onUnauthorized = f;
}

/**
 * The error for a failed response. A 401 for the session's own token logs
 * the user out; one for another token (a login attempt, or a flow that
 * started before the user logged in again) does not.
 */
async function failure(res: Response, token: string | null): Promise<ApiError> {
  const err = await errorFrom(res);
  if (res.status === 401 && token === getToken()) onUnauthorized();
  return err;
}

function authHeaders(token: string | null): Record<string, string> {
  return token ? { Authorization: `Bearer ${token}` } : {};
}

/**
 * One API request. `opts.token` replaces the session's token, so that a
 * multi-step flow keeps acting as the user who started it.
 */
export async function api<T = any>(
  method: string,
  path: string,
  body?: unknown,
  opts: { signal?: AbortSignal; token?: string; contentType?: string } = {},
): Promise<T> {
  const token = opts.token ?? getToken();
  const headers: Record<string, string> = { Accept: 'application/json', ...authHeaders(token) };
  if (body !== undefined) headers['Content-Type'] = opts.contentType ?? 'application/json';
  const res = await fetch(path, {
    method,
    headers,
    body: body === undefined ? undefined : JSON.stringify(body),
    signal: opts.signal,
  });
  if (!res.ok) throw await failure(res, token);
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

// ---- names ------------------------------------------------------------------

const DNS_LABEL = /^[a-z0-9]([-a-z0-9]*[a-z0-9])?$/;
const DNS_SUBDOMAIN = /^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$/;

/** A DNS-1123 label: namespaces, and names that also serve as label values. */
export function isDnsLabel(s: string): boolean {
  return s.length <= 63 && DNS_LABEL.test(s);
}

/** A DNS-1123 subdomain: most object names, such as a VM's. */
export function isDnsSubdomain(s: string): boolean {
  return s.length <= 253 && DNS_SUBDOMAIN.test(s);
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

export type WatchOptions = {
  /** The full set after a (re-)list, and again after every event. */
  onChange: (items: Map<string, Obj>) => void;
  /** A list or watch request failed; it is retried with backoff. */
  onError?: (e: Error) => void;
  /** Use this token instead of the session's. */
  token?: string;
};

/**
 * Lists `path` (with optional extra query), then watches from the list's
 * resourceVersion, applying ADDED/MODIFIED/DELETED events. Every event and
 * BOOKMARK moves the remembered resourceVersion on, so when a stream ends
 * the watch resumes from there without listing again. Only an ERROR event
 * (such as 410 Gone) or a failed request leads to a new list. Returns a
 * function that cancels everything.
 */
export function listWatch(path: string, query: string, h: WatchOptions): () => void {
  const ctl = new AbortController();
  let items = new Map<string, Obj>();
  let stopped = false;
  const sep = (q: string) => (q ? `?${q}&` : '?');
  const key = (o: Obj) => (o.metadata.namespace ? `${o.metadata.namespace}/${o.metadata.name}` : o.metadata.name);

  const sleep = (ms: number) =>
    new Promise<void>((r) => {
      const done = () => {
        clearTimeout(t);
        ctl.signal.removeEventListener('abort', done);
        r();
      };
      const t = setTimeout(done, ms);
      ctl.signal.addEventListener('abort', done, { once: true });
    });

  /** Reads one watch stream; returns false if it ended with an ERROR event. */
  async function follow(body: ReadableStream<Uint8Array>, onRv: (rv: string) => void): Promise<boolean> {
    const reader = body.getReader();
    const dec = new TextDecoder();
    let buf = '';
    try {
      while (!stopped) {
        const { value, done } = await reader.read();
        if (done) return true;
        buf += dec.decode(value, { stream: true });
        let nl: number;
        while (!stopped && (nl = buf.indexOf('\n')) >= 0) {
          const line = buf.slice(0, nl).trim();
          buf = buf.slice(nl + 1);
          if (!line) continue;
          let ev: { type: string; object: any };
          try {
            ev = JSON.parse(line);
          } catch {
            continue;
          }
          if (ev.type === 'ERROR') return false;
          const o = ev.object as Obj;
          if (o?.metadata?.resourceVersion) onRv(o.metadata.resourceVersion);
          if (ev.type === 'BOOKMARK') continue;
          if (ev.type === 'DELETED') items.delete(key(o));
          else items.set(key(o), o);
          h.onChange(new Map(items));
        }
      }
      return true;
    } catch (e: any) {
      // A stream cut off midway ends like a normal one: resume from the last
      // resourceVersion (the server answers 410 if that is too old).
      if (stopped || e?.name === 'AbortError') throw e;
      return true;
    } finally {
      reader.cancel().catch(() => {});
    }
  }

  async function loop() {
    let backoff = 500;
    let rv = ''; // empty: list before watching
    while (!stopped) {
      try {
        if (!rv) {
          const list = await api('GET', `${path}${query ? '?' + query : ''}`, undefined, {
            signal: ctl.signal,
            token: h.token,
          });
          items = new Map();
          for (const o of list.items || []) items.set(key(o), o);
          h.onChange(new Map(items));
          rv = list.metadata?.resourceVersion || '';
        }
        const token = h.token ?? getToken();
        const res = await fetch(
          `${path}${sep(query)}watch=1&allowWatchBookmarks=true${rv ? `&resourceVersion=${encodeURIComponent(rv)}` : ''}`,
          { headers: authHeaders(token), signal: ctl.signal },
        );
        if (!res.ok || !res.body) throw await failure(res, token);
        const started = Date.now();
        if (!(await follow(res.body, (v) => (rv = v)))) rv = ''; // ERROR event: list again
        // A watch that errors or ends at once must not turn into a busy loop.
        if (Date.now() - started < 1000) {
          await sleep(backoff);
          backoff = Math.min(backoff * 2, 10000);
        } else backoff = 500;
      } catch (e: any) {
        if (stopped || e?.name === 'AbortError') return;
        h.onError?.(e);
        rv = '';
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
