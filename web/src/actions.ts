// KubeVirt's VM actions and the access checks that gate them.
import { Access, api, Obj, paths } from './api';
import { announce } from './ui';

export type VmAction = 'start' | 'stop' | 'restart' | 'migrate' | 'pause' | 'unpause';

export function actionAccess(ns: string, action: VmAction | 'console' | 'vnc' | 'delete' | 'snapshot' | 'edit', name?: string): Access {
  switch (action) {
    case 'start':
    case 'stop':
    case 'restart':
    case 'migrate':
      return { namespace: ns, verb: 'update', group: 'subresources.kubevirt.io', resource: 'virtualmachines', subresource: action, name };
    case 'pause':
    case 'unpause':
      return { namespace: ns, verb: 'update', group: 'subresources.kubevirt.io', resource: 'virtualmachineinstances', subresource: action, name };
    case 'console':
    case 'vnc':
      return { namespace: ns, verb: 'get', group: 'subresources.kubevirt.io', resource: 'virtualmachineinstances', subresource: action, name };
    case 'delete':
      return { namespace: ns, verb: 'delete', group: 'kubevirt.io', resource: 'virtualmachines', name };
    case 'edit':
      return { namespace: ns, verb: 'update', group: 'kubevirt.io', resource: 'virtualmachines', name };
    case 'snapshot':
      return { namespace: ns, verb: 'create', group: 'snapshot.kubevirt.io', resource: 'virtualmachinesnapshots' };
  }
}

export async function runVmAction(ns: string, name: string, action: VmAction): Promise<void> {
  const path =
    action === 'pause' || action === 'unpause' ? paths.vmiSub(ns, name, action) : paths.vmSub(ns, name, action);
  await api('PUT', path, {});
  announce(`${action} requested for ${name}`);
}

/** Why an action does not apply to the VM in its current state, or ''. */
export function notNow(action: VmAction, vm: Obj | undefined, vmi: Obj | undefined): string {
  const st: string = vm?.status?.printableStatus || '';
  const running = !!vmi && vmi.status?.phase === 'Running';
  const paused = (vmi?.status?.conditions || []).some((c: any) => c.type === 'Paused' && c.status === 'True');
  switch (action) {
    case 'start':
      return running || st === 'Running' || st === 'Starting' ? 'The VM is already running' : '';
    case 'stop':
      return !vmi && (st === 'Stopped' || st === 'Halted' || st === '') ? 'The VM is not running' : '';
    case 'restart':
    case 'migrate':
      return running ? '' : 'The VM is not running';
    case 'pause':
      return !running ? 'The VM is not running' : paused ? 'The VM is already paused' : '';
    case 'unpause':
      return paused ? '' : 'The VM is not paused';
  }
}
