// One VM: actions and tabs.
import { useEffect, useRef, useState } from 'preact/hooks';
import { age, api, Obj, paths, vmCpus, vmMemory } from './api';
import { actionAccess, notNow, runVmAction, VmAction } from './actions';
import { SerialConsole } from './serial';
import { VncConsole } from './vnc';
import { ActionButton, announce, Dialog, ErrorBox, go, Perm, useCan, useStatusAnnouncements, useWatch } from './ui';
import { StatusBadge } from './vmlist';

const TABS = [
  ['overview', 'Overview'],
  ['events', 'Events'],
  ['conditions', 'Conditions'],
  ['disks', 'Disks'],
  ['network', 'Network'],
  ['snapshots', 'Snapshots'],
  ['migrations', 'Migrations'],
  ['console', 'Console'],
  ['vnc', 'VNC'],
  ['yaml', 'YAML'],
] as const;

export function VmDetail({ ns, name, tab }: { ns: string; name: string; tab: string }) {
  // Only this VM and its instance.
  const byName = `fieldSelector=${encodeURIComponent(`metadata.name=${name}`)}`;
  const vms = useWatch(paths.vms(ns), byName);
  const vmis = useWatch(paths.vmis(ns), byName);
  const vm = vms.items.find((v) => v.metadata.name === name);
  useStatusAnnouncements(vm ? [vm] : [], vms.loaded);
  const vmi = vmis.items.find((v) => v.metadata.name === name);
  const [error, setError] = useState<unknown>(null);
  const [confirmDelete, setConfirmDelete] = useState(false);

  const perms: Record<string, Perm> = {
    start: useCan(actionAccess(ns, 'start', name)),
    stop: useCan(actionAccess(ns, 'stop', name)),
    restart: useCan(actionAccess(ns, 'restart', name)),
    pause: useCan(actionAccess(ns, 'pause', name)),
    unpause: useCan(actionAccess(ns, 'unpause', name)),
    migrate: useCan(actionAccess(ns, 'migrate', name)),
    console: useCan(actionAccess(ns, 'console', name)),
    vnc: useCan(actionAccess(ns, 'vnc', name)),
    delete: useCan(actionAccess(ns, 'delete', name)),
    snapshot: useCan(actionAccess(ns, 'snapshot')),
    edit: useCan(actionAccess(ns, 'edit', name)),
  };
  const base = `#/ns/${encodeURIComponent(ns)}/vms/${encodeURIComponent(name)}`;
  const running = vmi?.status?.phase === 'Running';

  const tabDisabled = (id: string): string => {
    if (id === 'console' || id === 'vnc') {
      const p = perms[id];
      if (p.allowed !== true) return p.reason;
      if (!running) return 'The VM is not running';
    }
    return '';
  };
  const current = TABS.some(([id]) => id === tab) && !tabDisabled(tab) ? tab : tab === 'console' || tab === 'vnc' ? tab : 'overview';

  const act = (a: VmAction) => async () => {
    setError(null);
    try {
      await runVmAction(ns, name, a);
    } catch (e) {
      setError(e);
    }
  };

  // Arrow keys, Home and End move along the tabs. A disabled tab takes focus
  // (so its reason can be read) but is not opened.
  const tabRefs = useRef<(HTMLButtonElement | null)[]>([]);
  const onTabKey = (e: KeyboardEvent, i: number) => {
    const n = TABS.length;
    const j =
      e.key === 'Home' ? 0 : e.key === 'End' ? n - 1 : e.key === 'ArrowRight' ? (i + 1) % n : e.key === 'ArrowLeft' ? (i - 1 + n) % n : -1;
    if (j < 0) return;
    e.preventDefault();
    tabRefs.current[j]?.focus();
    if (!tabDisabled(TABS[j][0])) go(`${base}/${TABS[j][0]}`);
  };

  if (!vms.loaded)
    return (
      <section>
        <h1 tabIndex={-1}>{name}</h1>
        {vms.error ? <ErrorBox error={vms.error} /> : <p>Loading…</p>}
      </section>
    );
  if (!vm)
    return (
      <section>
        <h1 tabIndex={-1}>{name}</h1>
        <p>Virtual machine {name} was not found in namespace {ns}.</p>
        <a href={`#/ns/${encodeURIComponent(ns)}/vms`}>Back to the list</a>
      </section>
    );

  return (
    <section aria-labelledby="vm-h">
      <p class="crumbs">
        <a href={`#/ns/${encodeURIComponent(ns)}/vms`}>Virtual machines</a> / {name}
      </p>
      <div class="titlebar">
        <h1 id="vm-h" tabIndex={-1}>
          {name} <StatusBadge status={vm.status?.printableStatus || 'Unknown'} />
        </h1>
        <div class="actions" role="group" aria-label="VM actions">
          {(['start', 'stop', 'restart', 'pause', 'unpause', 'migrate'] as VmAction[]).map((a) => (
            <ActionButton
              key={a}
              perm={perms[a]}
              label={a[0].toUpperCase() + a.slice(1)}
              notNow={notNow(a, vm, vmi)}
              onClick={act(a)}
            />
          ))}
          <ActionButton perm={perms.delete} label="Delete" danger onClick={() => setConfirmDelete(true)} />
        </div>
      </div>
      <ErrorBox error={error} />
      <div role="tablist" aria-label="VM details" class="tabs">
        {TABS.map(([id, label], i) => {
          const why = tabDisabled(id);
          return (
            <button
              key={id}
              role="tab"
              type="button"
              id={`tab-${id}`}
              ref={(el) => { tabRefs.current[i] = el; }}
              aria-selected={current === id}
              aria-controls="tabpanel"
              tabIndex={(tabDisabled(current) ? 'overview' : current) === id ? 0 : -1}
              aria-disabled={why ? 'true' : undefined}
              title={why || undefined}
              aria-description={why || undefined}
              onClick={() => {
                if (!why) go(`${base}/${id}`);
              }}
              onKeyDown={(e) => onTabKey(e as unknown as KeyboardEvent, i)}
            >
              {label}
            </button>
          );
        })}
      </div>
      <div role="tabpanel" id="tabpanel" aria-labelledby={`tab-${current}`} class="tabpanel">
        {current === 'overview' && <Overview vm={vm} vmi={vmi} />}
        {current === 'events' && <Events ns={ns} name={name} />}
        {current === 'conditions' && <Conditions vm={vm} vmi={vmi} />}
        {current === 'disks' && <Disks vm={vm} vmi={vmi} />}
        {current === 'network' && <Network vm={vm} vmi={vmi} />}
        {current === 'snapshots' && <Snapshots ns={ns} name={name} perm={perms.snapshot} />}
        {current === 'migrations' && <Migrations ns={ns} name={name} />}
        {current === 'console' &&
          (tabDisabled('console') ? <p>{tabDisabled('console')}</p> : <SerialConsole ns={ns} name={name} />)}
        {current === 'vnc' && (tabDisabled('vnc') ? <p>{tabDisabled('vnc')}</p> : <VncConsole ns={ns} name={name} />)}
        {current === 'yaml' && <LazyYaml ns={ns} name={name} vm={vm} perm={perms.edit} />}
      </div>
      {confirmDelete && <DeleteDialog ns={ns} name={name} onClose={() => setConfirmDelete(false)} />}
    </section>
  );
}

// The YAML editor (and the yaml library) load on first use.
function LazyYaml(props: { ns: string; name: string; vm: Obj; perm: Perm }) {
  const [mod, setMod] = useState<typeof import('./yamltab') | null>(null);
  const [err, setErr] = useState<unknown>(null);
  useEffect(() => {
    import('./yamltab').then(setMod, setErr);
  }, []);
  if (err) return <ErrorBox error={err} />;
  if (!mod) return <p>Loading editor…</p>;
  return <mod.YamlEditor {...props} />;
}

function DeleteDialog({ ns, name, onClose }: { ns: string; name: string; onClose: () => void }) {
  const [typed, setTyped] = useState('');
  const [error, setError] = useState<unknown>(null);
  return (
    <Dialog title={`Delete ${name}?`} onClose={onClose}>
      <form
        onSubmit={async (e) => {
          e.preventDefault();
          try {
            await api('DELETE', paths.vm(ns, name));
            announce(`Virtual machine ${name} deleted`);
            onClose();
            go(`#/ns/${encodeURIComponent(ns)}/vms`);
          } catch (err) {
            setError(err);
          }
        }}
      >
        <p>This deletes the virtual machine and the disks it owns. It cannot be undone.</p>
        <label for="confirm-name">
          Type <strong>{name}</strong> to confirm
        </label>
        <input id="confirm-name" value={typed} autocomplete="off" onInput={(e) => setTyped((e.target as HTMLInputElement).value)} />
        <ErrorBox error={error} />
        <div class="buttons">
          <button type="submit" class="danger" disabled={typed !== name}>
            Delete
          </button>
          <button type="button" class="secondary" onClick={onClose}>
            Cancel
          </button>
        </div>
      </form>
    </Dialog>
  );
}

function Overview({ vm, vmi }: { vm: Obj; vmi?: Obj }) {
  const rows: [string, string][] = [
    ['Status', vm.status?.printableStatus || ''],
    ['Run strategy', vm.spec?.runStrategy || (vm.spec?.running ? 'Always (running: true)' : '')],
    ['CPU', String(vmCpus(vm))],
    ['Memory', vmMemory(vm)],
    ['Node', vmi?.status?.nodeName || ''],
    ['IP address', vmi?.status?.interfaces?.[0]?.ipAddress || ''],
    ['VMI phase', vmi?.status?.phase || '(no instance)'],
    ['Guest OS', vmi?.status?.guestOSInfo?.prettyName || ''],
    ['Created', `${vm.metadata.creationTimestamp || ''} (${age(vm.metadata.creationTimestamp)} ago)`],
  ];
  return (
    <dl class="props">
      {rows.map(([k, v]) => (
        <div key={k}>
          <dt>{k}</dt>
          <dd>{v || '—'}</dd>
        </div>
      ))}
    </dl>
  );
}

function Events({ ns, name }: { ns: string; name: string }) {
  const ev = useWatch(paths.events(ns), `fieldSelector=${encodeURIComponent(`involvedObject.name=${name}`)}`);
  const items = ev.items
    .filter((e) => e.involvedObject?.name === name)
    .sort((a, b) => (b.lastTimestamp || b.eventTime || '').localeCompare(a.lastTimestamp || a.eventTime || ''));
  if (ev.error && !ev.loaded) return <ErrorBox error={ev.error} />;
  if (!ev.loaded) return <p>Loading…</p>;
  if (items.length === 0) return <p>No events.</p>;
  return (
    <table class="list" aria-label="Events">
      <thead>
        <tr>
          <th scope="col">Type</th>
          <th scope="col">Reason</th>
          <th scope="col">Object</th>
          <th scope="col">Message</th>
          <th scope="col">Count</th>
          <th scope="col">Last seen</th>
        </tr>
      </thead>
      <tbody>
        {items.map((e) => (
          <tr key={e.metadata.name}>
            <td>{e.type}</td>
            <td>{e.reason}</td>
            <td>{e.involvedObject?.kind}</td>
            <td>{e.message}</td>
            <td>{e.count || 1}</td>
            <td>{age(e.lastTimestamp || e.eventTime || e.metadata.creationTimestamp)}</td>
          </tr>
        ))}
      </tbody>
    </table>
  );
}

function CondTable({ label, conds }: { label: string; conds: any[] }) {
  return (
    <>
      <h2>{label}</h2>
      {conds.length === 0 ? (
        <p>None.</p>
      ) : (
        <table class="list" aria-label={label}>
          <thead>
            <tr>
              <th scope="col">Type</th>
              <th scope="col">Status</th>
              <th scope="col">Reason</th>
              <th scope="col">Message</th>
              <th scope="col">Last transition</th>
            </tr>
          </thead>
          <tbody>
            {conds.map((c, i) => (
              <tr key={i}>
                <td>{c.type}</td>
                <td>{c.status}</td>
                <td>{c.reason || ''}</td>
                <td>{c.message || ''}</td>
                <td>{c.lastTransitionTime ? `${age(c.lastTransitionTime)} ago` : ''}</td>
              </tr>
            ))}
          </tbody>
        </table>
      )}
    </>
  );
}

function Conditions({ vm, vmi }: { vm: Obj; vmi?: Obj }) {
  return (
    <>
      <CondTable label="VirtualMachine conditions" conds={vm.status?.conditions || []} />
      <CondTable label="VirtualMachineInstance conditions" conds={vmi?.status?.conditions || []} />
    </>
  );
}

function Disks({ vm, vmi }: { vm: Obj; vmi?: Obj }) {
  const spec = vm.spec?.template?.spec || {};
  const disks: any[] = spec.domain?.devices?.disks || [];
  const volumes: any[] = spec.volumes || [];
  const vs: any[] = vmi?.status?.volumeStatus || [];
  const names = Array.from(new Set([...disks.map((d) => d.name), ...volumes.map((v) => v.name)]));
  return (
    <table class="list" aria-label="Disks">
      <thead>
        <tr>
          <th scope="col">Name</th>
          <th scope="col">Type</th>
          <th scope="col">Bus</th>
          <th scope="col">Source</th>
          <th scope="col">Target</th>
          <th scope="col">Phase</th>
        </tr>
      </thead>
      <tbody>
        {names.map((n) => {
          const d = disks.find((x) => x.name === n) || {};
          const v = volumes.find((x) => x.name === n) || {};
          const s = vs.find((x) => x.name === n) || {};
          const type = ['disk', 'cdrom', 'lun'].find((t) => d[t]) || '';
          const vkind = Object.keys(v).find((k) => k !== 'name') || '';
          const vval = v[vkind] || {};
          const src = vval.name || vval.claimName || vval.image || (vkind === 'cloudInitNoCloud' ? 'user data' : '');
          return (
            <tr key={n}>
              <th scope="row">{n}</th>
              <td>{type}</td>
              <td>{d[type]?.bus || ''}</td>
              <td>
                {vkind || (type === 'cdrom' ? 'empty tray' : '')}
                {src ? `: ${src}` : ''}
              </td>
              <td>{s.target || ''}</td>
              <td>{s.phase || ''}</td>
            </tr>
          );
        })}
      </tbody>
    </table>
  );
}

function Network({ vm, vmi }: { vm: Obj; vmi?: Obj }) {
  const spec = vm.spec?.template?.spec || {};
  const ifaces: any[] = spec.domain?.devices?.interfaces || [];
  const nets: any[] = spec.networks || [];
  const st: any[] = vmi?.status?.interfaces || [];
  const names = Array.from(new Set([...ifaces.map((i) => i.name), ...st.map((s) => s.name).filter(Boolean)]));
  return (
    <table class="list" aria-label="Network interfaces">
      <thead>
        <tr>
          <th scope="col">Name</th>
          <th scope="col">Binding</th>
          <th scope="col">Network</th>
          <th scope="col">MAC</th>
          <th scope="col">IP addresses</th>
          <th scope="col">Guest interface</th>
        </tr>
      </thead>
      <tbody>
        {names.map((n) => {
          const i = ifaces.find((x) => x.name === n) || {};
          const net = nets.find((x) => x.name === n) || {};
          const s = st.find((x) => x.name === n) || {};
          return (
            <tr key={n}>
              <th scope="row">{n}</th>
              <td>{['masquerade', 'bridge', 'sriov', 'passt', 'slirp'].find((b) => i[b]) || ''}</td>
              <td>{net.pod ? 'pod' : net.multus?.networkName || ''}</td>
              <td>{s.mac || i.macAddress || ''}</td>
              <td>{(s.ipAddresses || (s.ipAddress ? [s.ipAddress] : [])).join(', ')}</td>
              <td>{s.interfaceName || ''}</td>
            </tr>
          );
        })}
      </tbody>
    </table>
  );
}

function Snapshots({ ns, name, perm }: { ns: string; name: string; perm: Perm }) {
  const snaps = useWatch(paths.snapshots(ns));
  const [error, setError] = useState<unknown>(null);
  const items = snaps.items.filter((s) => s.spec?.source?.name === name);
  const take = async () => {
    setError(null);
    const stamp = new Date().toISOString().replace(/[-:T]/g, '').slice(0, 14);
    const snapName = `${name}-snap-${stamp}`;
    try {
      await api('POST', paths.snapshots(ns), {
        apiVersion: 'snapshot.kubevirt.io/v1beta1',
        kind: 'VirtualMachineSnapshot',
        metadata: { name: snapName },
        spec: { source: { apiGroup: 'kubevirt.io', kind: 'VirtualMachine', name } },
      });
      announce(`Snapshot ${snapName} requested`);
    } catch (e) {
      setError(e);
    }
  };
  return (
    <>
      <div class="buttons">
        <ActionButton perm={perm} label="Take snapshot" onClick={take} />
      </div>
      <ErrorBox error={error || (!snaps.loaded && snaps.error)} />
      {snaps.loaded && items.length === 0 && <p>No snapshots of this VM.</p>}
      {items.length > 0 && (
        <table class="list" aria-label="Snapshots">
          <thead>
            <tr>
              <th scope="col">Name</th>
              <th scope="col">Phase</th>
              <th scope="col">Ready to use</th>
              <th scope="col">Indications</th>
              <th scope="col">Age</th>
            </tr>
          </thead>
          <tbody>
            {items.map((s) => (
              <tr key={s.metadata.name}>
                <th scope="row">{s.metadata.name}</th>
                <td>{s.status?.phase || ''}</td>
                <td>{s.status?.readyToUse ? 'yes' : 'no'}</td>
                <td>{(s.status?.indications || []).join(', ')}</td>
                <td>{age(s.metadata.creationTimestamp)}</td>
              </tr>
            ))}
          </tbody>
        </table>
      )}
    </>
  );
}

function Migrations({ ns, name }: { ns: string; name: string }) {
  const m = useWatch(paths.vmims(ns));
  const items = m.items.filter((x) => x.spec?.vmiName === name);
  if (!m.loaded) return m.error ? <ErrorBox error={m.error} /> : <p>Loading…</p>;
  if (items.length === 0) return <p>No migrations of this VM.</p>;
  return (
    <table class="list" aria-label="Migrations">
      <thead>
        <tr>
          <th scope="col">Name</th>
          <th scope="col">Phase</th>
          <th scope="col">Source node</th>
          <th scope="col">Target node</th>
          <th scope="col">Age</th>
        </tr>
      </thead>
      <tbody>
        {items.map((x) => (
          <tr key={x.metadata.name}>
            <th scope="row">{x.metadata.name}</th>
            <td>{x.status?.phase || ''}</td>
            <td>{x.status?.migrationState?.sourceNode || ''}</td>
            <td>{x.status?.migrationState?.targetNode || ''}</td>
            <td>{age(x.metadata.creationTimestamp)}</td>
          </tr>
        ))}
      </tbody>
    </table>
  );
}
