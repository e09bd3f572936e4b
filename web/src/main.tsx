// App shell: login, hash routing, namespace selection.
import '@xterm/xterm/css/xterm.css';
import './style.css';
import { render } from 'preact';
import { useEffect, useRef, useState } from 'preact/hooks';
import { api, ApiError, getToken, isDnsLabel, isDnsSubdomain, setToken, setUnauthorizedHandler, whoAmI } from './api';
import { CreateVm } from './create';
import { DataVolumes } from './datavolumes';
import { VmDetail } from './detail';
import { VmList } from './vmlist';
import { announce, focusHeading, go, LiveRegion } from './ui';

const NS_KEY = 'kubevirt-rs.namespace';

type Route =
  | { page: 'list'; ns: string }
  | { page: 'create'; ns: string }
  | { page: 'dvs'; ns: string }
  | { page: 'detail'; ns: string; name: string; tab: string };

function defaultNamespace(): string {
  const remembered = localStorage.getItem(NS_KEY) || '';
  return isDnsLabel(remembered) ? remembered : 'default';
}

/** The route in the hash; anything malformed falls back to the default list. */
function parseRoute(): Route {
  const fallback: Route = { page: 'list', ns: defaultNamespace() };
  let parts: string[];
  try {
    parts = location.hash.replace(/^#\/?/, '').split('/').map(decodeURIComponent);
  } catch {
    return fallback; // malformed %-escape
  }
  if (parts[0] !== 'ns' || !isDnsLabel(parts[1] || '')) return fallback;
  const ns = parts[1];
  if (parts[2] === 'create') return { page: 'create', ns };
  if (parts[2] === 'datavolumes') return { page: 'dvs', ns };
  if (parts[2] === 'vms' && parts[3]) {
    if (!isDnsSubdomain(parts[3])) return fallback;
    return { page: 'detail', ns, name: parts[3], tab: parts[4] || 'overview' };
  }
  return { page: 'list', ns };
}

function useRoute(): Route {
  const [r, setR] = useState(parseRoute);
  useEffect(() => {
    const f = () => setR(parseRoute());
    window.addEventListener('hashchange', f);
    return () => window.removeEventListener('hashchange', f);
  }, []);
  return r;
}

function Login({ onLogin, notice }: { onLogin: (token: string, user: string) => void; notice: string }) {
  const [token, setTok] = useState('');
  const [error, setError] = useState(notice);
  const [busy, setBusy] = useState(false);
  return (
    <main class="login" id="main">
      <h1 tabIndex={-1}>kubevirt-rs console</h1>
      <form
        onSubmit={async (e) => {
          e.preventDefault();
          const t = token.trim();
          if (!t) {
            setError('Enter a bearer token.');
            return;
          }
          setBusy(true);
          setError('');
          try {
            const user = await whoAmI(t);
            onLogin(t, user);
          } catch (err: any) {
            setError(err instanceof ApiError && err.code === 401 ? 'invalid token' : `Login failed: ${err.message}`);
          } finally {
            setBusy(false);
          }
        }}
      >
        <label for="token">Bearer token</label>
        <textarea
          id="token"
          name="token"
          rows={4}
          autocomplete="off"
          spellcheck={false}
          value={token}
          onInput={(e) => setTok((e.target as HTMLTextAreaElement).value)}
          aria-describedby="token-help"
          aria-invalid={error ? 'true' : undefined}
        />
        <p id="token-help" class="help">
          A ServiceAccount token (<code>kubectl create token NAME</code>) or the server's admin token (the{' '}
          <code>admin=</code> line of the data directory's <code>tokens</code> file). It is kept in this tab's session
          storage only.
        </p>
        {error && (
          <p class="error" role="alert">
            {error}
          </p>
        )}
        <button type="submit" disabled={busy}>
          {busy ? 'Checking…' : 'Log in'}
        </button>
      </form>
    </main>
  );
}

function NamespacePicker({ ns }: { ns: string }) {
  const [list, setList] = useState<string[] | null>(null);
  const [forbidden, setForbidden] = useState(false);
  const [value, setValue] = useState(ns);
  const [invalid, setInvalid] = useState(false);
  useEffect(() => {
    setValue(ns);
    setInvalid(false);
  }, [ns]);
  useEffect(() => {
    api('GET', '/api/v1/namespaces').then(
      (r) => setList((r.items || []).map((n: any) => n.metadata.name).sort()),
      (e) => {
        if (e instanceof ApiError && e.code === 403) setForbidden(true);
        setList([]);
      },
    );
  }, []);
  const choose = (v: string) => {
    v = v.trim();
    if (!isDnsLabel(v)) {
      setInvalid(true);
      return;
    }
    setInvalid(false);
    if (v === ns) return;
    localStorage.setItem(NS_KEY, v);
    go(`#/ns/${encodeURIComponent(v)}/vms`);
    announce(`Namespace ${v}`);
  };
  return (
    <form
      class="nspicker"
      onSubmit={(e) => {
        e.preventDefault();
        choose(value);
      }}
    >
      <label for="ns">Namespace</label>
      {list && list.length > 0 && !forbidden ? (
        <select id="ns" value={ns} onChange={(e) => choose((e.target as HTMLSelectElement).value)}>
          {(list.includes(ns) ? list : [ns, ...list]).map((n) => (
            <option key={n} value={n}>
              {n}
            </option>
          ))}
        </select>
      ) : (
        <>
          <input
            id="ns"
            value={value}
            size={14}
            title={forbidden ? 'You may not list namespaces; type one.' : undefined}
            onInput={(e) => setValue((e.target as HTMLInputElement).value)}
            aria-invalid={invalid ? 'true' : undefined}
            aria-describedby={[forbidden && 'ns-help', invalid && 'ns-error'].filter(Boolean).join(' ') || undefined}
          />
          <button type="submit">Go</button>
          {forbidden && (
            <span id="ns-help" class="sr-only">
              You may not list namespaces; type one.
            </span>
          )}
          {invalid && (
            <span id="ns-error" class="ns-error" role="alert">
              Not a namespace name: use at most 63 lower-case letters, digits and "-".
            </span>
          )}
        </>
      )}
    </form>
  );
}

function App() {
  const [token, setTok] = useState(getToken());
  const [user, setUser] = useState<string>('');
  const [notice, setNotice] = useState('');
  // whoAmI failed for a reason other than a bad token; the token is kept.
  const [checkError, setCheckError] = useState('');
  const [checks, setChecks] = useState(0);
  const route = useRoute();

  const logOut = (why: string) => {
    setToken(null);
    setTok(null);
    setUser('');
    setCheckError('');
    setNotice(why);
  };

  useEffect(() => {
    setUnauthorizedHandler(() => logOut('invalid token'));
  }, []);
  useEffect(() => {
    if (!token || user) return;
    let live = true;
    setCheckError('');
    whoAmI(token).then(
      (u) => live && setUser(u),
      (e) => {
        if (!live) return;
        if (e instanceof ApiError && e.code === 401) logOut('invalid token');
        else setCheckError(e.message);
      },
    );
    return () => {
      live = false;
    };
  }, [token, checks]);
  useEffect(() => {
    localStorage.setItem(NS_KEY, route.ns);
  }, [route.ns]);

  // A new page (not a new tab of the same VM), logging in or out: move focus
  // to the heading, so it is not left on <body> when the old page goes away.
  const pageKey = `${!!token}/${!!checkError}/${route.page}/${route.ns}/${route.page === 'detail' ? route.name : ''}`;
  const firstPage = useRef(true);
  useEffect(() => {
    if (firstPage.current) firstPage.current = false;
    else focusHeading();
  }, [pageKey]);

  if (!token) {
    return (
      <>
        <Login
          notice={notice}
          onLogin={(t, u) => {
            setToken(t);
            setUser(u);
            setTok(t);
            setNotice('');
            announce(`Logged in as ${u}`);
          }}
        />
        <LiveRegion />
      </>
    );
  }
  if (checkError) {
    return (
      <>
        <main class="login" id="main">
          <h1 tabIndex={-1}>kubevirt-rs console</h1>
          <p class="error" role="alert">
            Could not check your login: {checkError}
          </p>
          <div class="buttons">
            <button type="button" onClick={() => setChecks(checks + 1)}>
              Retry
            </button>
            <button type="button" class="secondary" onClick={() => logOut('')}>
              Log out
            </button>
          </div>
        </main>
        <LiveRegion />
      </>
    );
  }
  const ns = route.ns;
  const nsHash = `#/ns/${encodeURIComponent(ns)}`;
  return (
    <>
      <a class="skip" href="#main" onClick={(e) => { e.preventDefault(); document.getElementById('main')?.focus(); }}>
        Skip to content
      </a>
      <header class="top">
        <span class="brand">kubevirt-rs</span>
        <nav aria-label="Main">
          <a href={`${nsHash}/vms`} aria-current={route.page === 'list' || route.page === 'detail' ? 'page' : undefined}>
            Virtual machines
          </a>
          <a href={`${nsHash}/datavolumes`} aria-current={route.page === 'dvs' ? 'page' : undefined}>
            DataVolumes
          </a>
          <a href={`${nsHash}/create`} aria-current={route.page === 'create' ? 'page' : undefined}>
            Create VM
          </a>
        </nav>
        <NamespacePicker ns={ns} />
        <span class="user" data-testid="username" title={user ? `Logged in as ${user}` : undefined}>
          {user || '…'}
        </span>
        <button
          type="button"
          onClick={() => {
            logOut('');
            go('#/');
            announce('Logged out');
          }}
        >
          Log out
        </button>
      </header>
      <main id="main" tabIndex={-1}>
        {route.page === 'list' && <VmList key={ns} ns={ns} />}
        {route.page === 'dvs' && <DataVolumes key={ns} ns={ns} />}
        {route.page === 'create' && <CreateVm key={ns} ns={ns} />}
        {route.page === 'detail' && <VmDetail key={`${ns}/${route.name}`} ns={ns} name={route.name} tab={route.tab} />}
      </main>
      <LiveRegion />
    </>
  );
}

render(<App />, document.getElementById('app')!);
