// The namespace's virtual machines, live from watches on VMs and VMIs.
import { useState } from 'preact/hooks';
import { Obj, paths, vmCpus, vmMemory } from './api';
import { actionAccess, notNow, runVmAction, VmAction } from './actions';
import { DvTable } from './datavolumes';
import { ActionButton, ErrorBox, useCan, useStatusAnnouncements, useWatch } from './ui';

export function VmList({ ns }: { ns: string }) {
  const vms = useWatch(paths.vms(ns));
  const vmis = useWatch(paths.vmis(ns));
  const dvs = useWatch(paths.dvs(ns));
  const [error, setError] = useState<unknown>(null);
  const start = useCan(actionAccess(ns, 'start'));
  const stop = useCan(actionAccess(ns, 'stop'));
  const restart = useCan(actionAccess(ns, 'restart'));
  useStatusAnnouncements(vms.items, vms.loaded);
  const vmiByName = new Map(vmis.items.map((v) => [v.metadata.name, v]));
  const nsHash = `#/ns/${encodeURIComponent(ns)}`;

  const act = (name: string, a: VmAction) => async () => {
    setError(null);
    try {
      await runVmAction(ns, name, a);
    } catch (e) {
      setError(e);
    }
  };

  return (
    <section aria-labelledby="vms-h">
      <div class="titlebar">
        <h1 id="vms-h" tabIndex={-1}>Virtual machines in {ns}</h1>
        <a class="button" href={`${nsHash}/create`}>
          Create VM
        </a>
      </div>
      <ErrorBox error={error} />
      {vms.error && !vms.loaded && <ErrorBox error={vms.error} />}
      {!vms.loaded && !vms.error && <p>Loading…</p>}
      {vms.loaded && vms.items.length === 0 && <p>No virtual machines in this namespace.</p>}
      {vms.items.length > 0 && (
        <table class="list" aria-label="Virtual machines">
          <thead>
            <tr>
              <th scope="col">Name</th>
              <th scope="col">Status</th>
              <th scope="col">IP</th>
              <th scope="col">Node</th>
              <th scope="col">CPU</th>
              <th scope="col">Memory</th>
              <th scope="col">Actions</th>
            </tr>
          </thead>
          <tbody>
            {vms.items.map((vm) => {
              const n = vm.metadata.name;
              const vmi = vmiByName.get(n);
              return (
                <tr key={n} data-vm={n}>
                  <th scope="row">
                    <a href={`${nsHash}/vms/${encodeURIComponent(n)}`}>{n}</a>
                  </th>
                  <td class="status" data-testid="status">
                    <StatusBadge status={vm.status?.printableStatus || 'Unknown'} />
                  </td>
                  <td>{vmi?.status?.interfaces?.[0]?.ipAddress || ''}</td>
                  <td>{vmi?.status?.nodeName || ''}</td>
                  <td>{vmCpus(vm)}</td>
                  <td>{vmMemory(vm)}</td>
                  <td>
                    <div class="actions">
                    <ActionButton perm={start} label="Start" ariaLabel={`Start ${n}`} notNow={notNow('start', vm, vmi)} onClick={act(n, 'start')} />
                    <ActionButton perm={stop} label="Stop" ariaLabel={`Stop ${n}`} notNow={notNow('stop', vm, vmi)} onClick={act(n, 'stop')} />
                    <ActionButton perm={restart} label="Restart" ariaLabel={`Restart ${n}`} notNow={notNow('restart', vm, vmi)} onClick={act(n, 'restart')} />
                    </div>
                  </td>
                </tr>
              );
            })}
          </tbody>
        </table>
      )}
      {dvs.items.length > 0 && (
        <>
          <h2>DataVolumes</h2>
          <DvTable items={dvs.items} />
        </>
      )}
    </section>
  );
}

export function StatusBadge({ status }: { status: string }) {
  const cls =
    status === 'Running' ? 'ok' : /Error|Fail|CrashLoop|Unschedulable/.test(status) ? 'bad' : status === 'Stopped' ? 'off' : 'busy';
  return <span class={`badge ${cls}`}>{status}</span>;
}

export type { Obj };
