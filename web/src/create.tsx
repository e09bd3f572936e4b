// The Create VM form: size presets, a boot source, cloud-init.
import { useEffect, useRef, useState } from 'preact/hooks';
import { api, ApiError, getToken, isDnsLabel, listWatch, Obj, paths } from './api';
import { announce, ErrorBox, go } from './ui';

const SIZES = [
  { id: 'tiny', label: 'tiny: 1 vCPU, 256Mi', cores: 1, memory: '256Mi' },
  { id: 'u1.small', label: 'u1.small: 1 vCPU, 2Gi', cores: 1, memory: '2Gi' },
  { id: 'u1.medium', label: 'u1.medium: 1 vCPU, 4Gi', cores: 1, memory: '4Gi' },
  { id: 'u1.large', label: 'u1.large: 2 vCPU, 8Gi', cores: 2, memory: '8Gi' },
];

type Source = 'url' | 'container' | 'upload';

const DV_WAIT_MS = 10 * 60 * 1000;

/**
 * Waits until the DataVolume `name` reaches `phase`. Rejects if it fails, is
 * deleted, its watch fails, `signal` aborts, or 10 minutes pass.
 */
function waitForDvPhase(
  ns: string,
  name: string,
  phase: string,
  opts: { token: string; signal: AbortSignal; onPhase: (p: string) => void },
): Promise<void> {
  return new Promise((resolve, reject) => {
    let seen = false;
    let stop = () => {};
    const finish = (err?: Error) => {
      stop();
      clearTimeout(timer);
      opts.signal.removeEventListener('abort', onAbort);
      if (err) reject(err);
      else resolve();
    };
    const onAbort = () => finish(new DOMException('Leaving the page stopped the wait', 'AbortError'));
    const timer = setTimeout(
      () => finish(new Error(`DataVolume ${name} did not reach ${phase} within ${DV_WAIT_MS / 60000} minutes`)),
      DV_WAIT_MS,
    );
    if (opts.signal.aborted) return onAbort();
    opts.signal.addEventListener('abort', onAbort, { once: true });
    stop = listWatch(paths.dvs(ns), `fieldSelector=${encodeURIComponent(`metadata.name=${name}`)}`, {
      token: opts.token,
      onChange: (m) => {
        const dv = m.get(`${ns}/${name}`) || m.get(name);
        if (!dv) {
          if (seen) finish(new Error(`DataVolume ${name} was deleted`));
          return;
        }
        seen = true;
        const p = dv.status?.phase || '';
        opts.onPhase(p);
        if (p === phase) finish();
        else if (p === 'Failed') finish(new Error(`DataVolume ${name} failed`));
      },
      onError: (e) => finish(new Error(`Watching DataVolume ${name} failed: ${e.message}`)),
    });
  });
}

function uploadFile(
  token: string,
  file: File,
  signal: AbortSignal,
  onProgress: (sent: number, total: number) => void,
): Promise<void> {
  return new Promise((resolve, reject) => {
    const xhr = new XMLHttpRequest();
    xhr.open('POST', '/v1beta1/upload-async');
    xhr.setRequestHeader('Authorization', `Bearer ${token}`);
    xhr.setRequestHeader('Content-Type', 'application/octet-stream');
    xhr.upload.onprogress = (e) => onProgress(e.loaded, e.lengthComputable ? e.total : file.size);
    xhr.onload = () => {
      if (xhr.status >= 200 && xhr.status < 300) resolve();
      else reject(new Error(`upload failed: ${xhr.status} ${xhr.responseText || xhr.statusText}`));
    };
    xhr.onerror = () => reject(new Error('upload failed: network error'));
    xhr.onabort = () => reject(new DOMException('Leaving the page stopped the upload', 'AbortError'));
    const abort = () => xhr.abort();
    signal.addEventListener('abort', abort, { once: true });
    xhr.onloadend = () => signal.removeEventListener('abort', abort);
    xhr.send(file);
  });
}

export function CreateVm({ ns }: { ns: string }) {
  const [name, setName] = useState('');
  const [size, setSize] = useState('tiny');
  const [source, setSource] = useState<Source>('url');
  const [url, setUrl] = useState('');
  const [diskSize, setDiskSize] = useState('1Gi');
  const [image, setImage] = useState('');
  const [file, setFile] = useState<File | null>(null);
  const [startNow, setStartNow] = useState(true);
  const [userData, setUserData] = useState('');
  const [error, setError] = useState<unknown>(null);
  const [busy, setBusy] = useState(false);
  const [step, setStep] = useState('');
  const [upload, setUpload] = useState<{ sent: number; total: number } | null>(null);
  // Aborted when the form goes away: stops waiting and uploading.
  const unmounted = useRef(new AbortController());
  useEffect(() => () => unmounted.current.abort(), []);

  const preset = SIZES.find((s) => s.id === size)!;
  // Progress steps are shown and also read out by screen readers.
  const say = (msg: string) => {
    setStep(msg);
    announce(msg);
  };

  function buildVm(rootVolume: any, rootDisk: any, dvTemplates?: any[]): Obj {
    const disks: any[] = [rootDisk];
    const volumes: any[] = [rootVolume];
    if (userData.trim()) {
      disks.push({ name: 'cloudinitdisk', disk: { bus: 'virtio' } });
      volumes.push({ name: 'cloudinitdisk', cloudInitNoCloud: { userData } });
    }
    const vm: Obj = {
      apiVersion: 'kubevirt.io/v1',
      kind: 'VirtualMachine',
      metadata: { name, namespace: ns },
      spec: {
        runStrategy: startNow ? 'Always' : 'Halted',
        template: {
          metadata: { labels: { 'kubevirt.io/vm': name } },
          spec: {
            terminationGracePeriodSeconds: 30,
            domain: {
              cpu: { cores: preset.cores },
              memory: { guest: preset.memory },
              devices: { disks, interfaces: [{ name: 'default', masquerade: {} }] },
            },
            networks: [{ name: 'default', pod: {} }],
            volumes,
          },
        },
      },
    };
    if (dvTemplates) vm.spec.dataVolumeTemplates = dvTemplates;
    return vm;
  }

  async function submit(e: Event) {
    e.preventDefault();
    setError(null);
    if (!isDnsLabel(name)) {
      setError(
        new Error('Name must be at most 63 lower-case letters, digits and "-", starting and ending with a letter or digit.'),
      );
      document.getElementById('vm-name')?.focus();
      return;
    }
    // The whole flow acts as the user who started it, even if the session
    // logs out or in meanwhile.
    const token = getToken();
    if (!token) return;
    const signal = unmounted.current.signal;
    setBusy(true);
    try {
      const dvName = `${name}-root`;
      let vm: Obj;
      if (source === 'url') {
        if (!url) throw new Error('Enter an image URL.');
        vm = buildVm(
          { name: 'root', dataVolume: { name: dvName } },
          { name: 'root', disk: { bus: 'virtio' } },
          [{ metadata: { name: dvName }, spec: { source: { http: { url } }, storage: { resources: { requests: { storage: diskSize } } } } }],
        );
      } else if (source === 'container') {
        if (!image) throw new Error('Enter a containerDisk image.');
        vm = buildVm({ name: 'root', containerDisk: { image } }, { name: 'root', disk: { bus: 'virtio' } });
      } else {
        if (!file) throw new Error('Choose a file to upload.');
        await uploadDisk(token, signal, dvName, file);
        const iso = /\.iso$/i.test(file.name);
        vm = buildVm(
          { name: 'root', dataVolume: { name: dvName } },
          iso ? { name: 'root', cdrom: { bus: 'sata' } } : { name: 'root', disk: { bus: 'virtio' } },
        );
      }
      say('Creating VM…');
      const created: Obj = await api('POST', paths.vms(ns), vm, { token });
      if (source === 'upload') await adoptDisk(token, dvName, created);
      announce(`Virtual machine ${name} created`);
      if (!signal.aborted) go(`#/ns/${encodeURIComponent(ns)}/vms`);
    } catch (err) {
      if (signal.aborted) return; // the page is gone
      setError(err);
      setStep('');
      announce(`Create failed: ${(err as Error).message}`);
    } finally {
      setBusy(false);
    }
  }

  /**
   * Creates the DataVolume `dvName` with an upload source and uploads `file`
   * into it. A retry reuses the DataVolume of an earlier attempt: it uploads
   * again if that one still waits for data, and skips the upload if it
   * already succeeded.
   */
  async function uploadDisk(token: string, signal: AbortSignal, dvName: string, file: File) {
    say('Creating DataVolume…');
    try {
      await api(
        'POST',
        paths.dvs(ns),
        {
          apiVersion: 'cdi.kubevirt.io/v1beta1',
          kind: 'DataVolume',
          metadata: { name: dvName },
          spec: { source: { upload: {} }, storage: { resources: { requests: { storage: diskSize } } } },
        },
        { token },
      );
    } catch (err) {
      if (!(err instanceof ApiError && err.code === 409)) throw err;
      const dv = await api('GET', paths.dv(ns, dvName), undefined, { token });
      const phase = dv?.status?.phase || '';
      if (!dv?.spec?.source?.upload) throw err;
      if (phase === 'Succeeded') {
        announce(`DataVolume ${dvName} already holds the uploaded disk`);
        return;
      }
      if (!['UploadReady', 'UploadScheduled', 'Pending', ''].includes(phase)) throw err;
    }
    await waitForDvPhase(ns, dvName, 'UploadReady', {
      token,
      signal,
      onPhase: (p) => setStep(`Waiting for the DataVolume to be ready for upload (${p || 'Pending'})…`),
    });
    say('Requesting an upload token…');
    const tr = await api(
      'POST',
      paths.uploadTokens(ns),
      {
        apiVersion: 'upload.cdi.kubevirt.io/v1beta1',
        kind: 'UploadTokenRequest',
        metadata: { name: dvName },
        spec: { pvcName: dvName },
      },
      { token },
    );
    const uploadToken = tr?.status?.token;
    if (!uploadToken) throw new Error('The server returned no upload token.');
    say(`Uploading ${file.name}…`);
    setUpload({ sent: 0, total: file.size });
    // The upload server can drop the first connection right after the
    // DataVolume turns UploadReady; retry while it still waits for data.
    for (let attempt = 1; ; attempt++) {
      try {
        await uploadFile(uploadToken, file, signal, (sent, total) => {
          setUpload({ sent, total });
          if (sent >= total) setStep('Upload sent; the server is writing the disk…');
        });
        break;
      } catch (err) {
        if (signal.aborted) throw err;
        const dv = await api('GET', paths.dv(ns, dvName), undefined, { token }).catch(() => null);
        const phase = dv?.status?.phase || '';
        if (phase === 'Succeeded' || phase === 'UploadSucceeded') break;
        if (attempt >= 3 || phase !== 'UploadReady') throw err;
        say(`${(err as Error).message}; retrying (attempt ${attempt + 1} of 3)…`);
        await new Promise((r) => setTimeout(r, 2000));
      }
    }
    announce('Upload finished');
  }

  /** Makes the VM own its uploaded DataVolume, so deleting the VM deletes it too. */
  async function adoptDisk(token: string, dvName: string, vm: Obj) {
    const owner = {
      apiVersion: 'kubevirt.io/v1',
      kind: 'VirtualMachine',
      name: vm.metadata.name,
      uid: vm.metadata.uid,
      controller: false,
      blockOwnerDeletion: false,
    };
    try {
      await api('PATCH', paths.dv(ns, dvName), { metadata: { ownerReferences: [owner] } }, {
        token,
        contentType: 'application/merge-patch+json',
      });
    } catch (err) {
      throw new Error(
        `Virtual machine ${name} was created, but its disk ${dvName} could not be made part of it ` +
          `(${(err as Error).message}); delete that DataVolume yourself when you delete the VM.`,
      );
    }
  }

  const val = (f: (v: string) => void) => (e: Event) => f((e.target as HTMLInputElement).value);

  return (
    <section aria-labelledby="create-h">
      <h1 id="create-h" tabIndex={-1}>Create a virtual machine in {ns}</h1>
      <form class="create" onSubmit={submit}>
        <div class="field">
          <label for="vm-name">Name</label>
          <input id="vm-name" required value={name} onInput={val(setName)} autocomplete="off" spellcheck={false} />
        </div>
        <div class="field">
          <label for="vm-size">Size</label>
          <select id="vm-size" value={size} onChange={val(setSize)}>
            {SIZES.map((s) => (
              <option key={s.id} value={s.id}>
                {s.label}
              </option>
            ))}
          </select>
        </div>
        <fieldset>
          <legend>Boot source</legend>
          <label>
            <input type="radio" name="source" value="url" checked={source === 'url'} onChange={() => setSource('url')} /> Image URL
            (imported into a DataVolume)
          </label>
          <label>
            <input type="radio" name="source" value="container" checked={source === 'container'} onChange={() => setSource('container')} />{' '}
            containerDisk image
          </label>
          <label>
            <input type="radio" name="source" value="upload" checked={source === 'upload'} onChange={() => setSource('upload')} /> Upload
            an ISO or disk image
          </label>
        </fieldset>
        {source === 'url' && (
          <div class="field">
            <label for="vm-url">Image URL</label>
            <input id="vm-url" type="url" value={url} onInput={val(setUrl)} placeholder="https://…/disk.qcow2" spellcheck={false} />
          </div>
        )}
        {source === 'container' && (
          <div class="field">
            <label for="vm-image">containerDisk image</label>
            <input id="vm-image" value={image} onInput={val(setImage)} placeholder="quay.io/containerdisks/fedora:latest" spellcheck={false} />
          </div>
        )}
        {source === 'upload' && (
          <div class="field">
            <label for="vm-file">File</label>
            <input id="vm-file" type="file" onChange={(e) => setFile((e.target as HTMLInputElement).files?.[0] || null)} />
          </div>
        )}
        {source !== 'container' && (
          <div class="field">
            <label for="vm-disk">Disk size</label>
            <input id="vm-disk" value={diskSize} onInput={val(setDiskSize)} size={8} spellcheck={false} />
          </div>
        )}
        <div class="field">
          <label for="vm-userdata">Cloud-init user data (optional)</label>
          <textarea id="vm-userdata" rows={5} class="mono" value={userData} onInput={val(setUserData)} spellcheck={false} placeholder={'#cloud-config\npassword: …'} />
        </div>
        <div class="field check">
          <input id="vm-start" type="checkbox" checked={startNow} onChange={(e) => setStartNow((e.target as HTMLInputElement).checked)} />
          <label for="vm-start">Start after creation</label>
        </div>
        {upload && (
          <div class="field">
            <label for="upload-progress">Upload progress</label>
            <progress id="upload-progress" max={upload.total || 1} value={upload.sent} />
            <span>
              {(upload.sent / 1048576).toFixed(1)} / {(upload.total / 1048576).toFixed(1)} MiB
            </span>
          </div>
        )}
        {step && <p class="step">{step}</p>}
        <ErrorBox error={error instanceof ApiError || error instanceof Error ? error : error ? String(error) : null} />
        <div class="buttons">
          <button type="submit" disabled={busy}>
            {busy ? 'Creating…' : 'Create'}
          </button>
          <a class="button secondary" href={`#/ns/${encodeURIComponent(ns)}/vms`}>
            Cancel
          </a>
        </div>
      </form>
    </section>
  );
}
