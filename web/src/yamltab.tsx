// YAML editor for the VM object: PUTs the edited object and points at the
// fields the server rejects.
import { useEffect, useRef, useState } from 'preact/hooks';
import { isMap, isSeq, parseDocument, stringify } from 'yaml';
import { api, ApiError, Obj, paths } from './api';
import { announce, ErrorBox, Perm } from './ui';

function toYaml(vm: Obj): string {
  const copy = JSON.parse(JSON.stringify(vm));
  if (copy.metadata) delete copy.metadata.managedFields;
  return stringify(copy, { lineWidth: 0 });
}

/** "spec.template.spec.domain.devices.disks[0].name" -> path segments. */
export function fieldPath(field: string): (string | number)[] {
  const out: (string | number)[] = [];
  for (const part of field.split('.')) {
    const m = part.match(/^([^[\]]*)((?:\[[^\]]*\])*)$/);
    if (!m) {
      out.push(part);
      continue;
    }
    if (m[1]) out.push(m[1]);
    for (const idx of m[2].matchAll(/\[([^\]]*)\]/g)) {
      out.push(/^\d+$/.test(idx[1]) ? Number(idx[1]) : idx[1]);
    }
  }
  return out;
}

/** Character offset of the deepest node of `field` found in the YAML text. */
export function locateField(text: string, field: string): number | null {
  let doc;
  try {
    doc = parseDocument(text);
  } catch {
    return null;
  }
  const segs = fieldPath(field);
  let node: any = doc.contents;
  let best: number | null = null;
  for (const seg of segs) {
    if (isMap(node)) {
      const pair: any = node.items.find((p: any) => String(p.key?.value ?? p.key) === String(seg));
      if (!pair) break;
      best = pair.key?.range?.[0] ?? best;
      node = pair.value;
    } else if (isSeq(node)) {
      let item: any = typeof seg === 'number' ? node.items[seg] : undefined;
      // A list addressed by name, e.g. volumes[root].
      if (item === undefined && typeof seg === 'string')
        item = node.items.find((it: any) => isMap(it) && String(it.get('name')) === seg);
      if (!item) break;
      best = item.range?.[0] ?? best;
      node = item;
    } else break;
  }
  return best;
}

function lineOf(text: string, offset: number): number {
  let n = 1;
  for (let i = 0; i < offset && i < text.length; i++) if (text.charCodeAt(i) === 10) n++;
  return n;
}

export function YamlEditor({ ns, name, vm, perm }: { ns: string; name: string; vm: Obj; perm: Perm }) {
  const [text, setText] = useState(() => toYaml(vm));
  const [dirty, setDirty] = useState(false);
  const [error, setError] = useState<unknown>(null);
  const [badLines, setBadLines] = useState<Map<number, string>>(new Map());
  const [saving, setSaving] = useState(false);
  const [stale, setStale] = useState(false);
  const area = useRef<HTMLTextAreaElement>(null);
  const gutter = useRef<HTMLDivElement>(null);
  const loadedRv = useRef(vm.metadata.resourceVersion);

  useEffect(() => {
    if (vm.metadata.resourceVersion === loadedRv.current) return;
    if (!dirty) {
      setText(toYaml(vm));
      loadedRv.current = vm.metadata.resourceVersion;
    } else setStale(true);
  }, [vm.metadata.resourceVersion]);

  const goToField = (field: string) => {
    const ta = area.current;
    if (!ta) return;
    const off = locateField(ta.value, field);
    if (off === null) {
      announce(`${field} is not in the YAML`);
      ta.focus();
      return;
    }
    const lineStart = ta.value.lastIndexOf('\n', off - 1) + 1;
    let lineEnd = ta.value.indexOf('\n', off);
    if (lineEnd < 0) lineEnd = ta.value.length;
    ta.focus();
    ta.setSelectionRange(lineStart, lineEnd);
    const line = lineOf(ta.value, off);
    const lh = parseFloat(getComputedStyle(ta).lineHeight) || 18;
    ta.scrollTop = Math.max(0, (line - 3) * lh);
    announce(`${field}, line ${line}`);
  };

  const save = async () => {
    setError(null);
    setBadLines(new Map());
    let obj: any;
    try {
      const doc = parseDocument(text);
      if (doc.errors.length) throw new Error(`YAML syntax: ${doc.errors[0].message}`);
      obj = doc.toJS();
    } catch (e) {
      setError(e);
      return;
    }
    setSaving(true);
    try {
      const updated = await api('PUT', paths.vm(ns, name), obj);
      setText(toYaml(updated));
      loadedRv.current = updated.metadata?.resourceVersion;
      setDirty(false);
      setStale(false);
      announce('Saved');
    } catch (e) {
      setError(e);
      const marks = new Map<number, string>();
      if (e instanceof ApiError) {
        for (const c of e.causes) {
          if (!c.field) continue;
          const off = locateField(text, c.field);
          if (off !== null) marks.set(lineOf(text, off), `${c.field}: ${c.message || ''}`);
        }
        setBadLines(marks);
        announce(`Save failed: ${e.message}`);
        const first = e.causes.find((c) => c.field);
        if (first?.field) setTimeout(() => goToField(first.field!), 0);
      }
    } finally {
      setSaving(false);
    }
  };

  const lines = text.split('\n').length;
  const why = perm.allowed === true ? '' : perm.reason;
  return (
    <div class="yaml">
      <div class="buttons">
        <button
          type="button"
          onClick={() => {
            if (!saving && !why) save();
          }}
          aria-disabled={saving || why ? 'true' : undefined}
          title={why || undefined}
          aria-description={why || undefined}
        >
          {saving ? 'Saving…' : 'Save'}
        </button>
        <button
          type="button"
          class="secondary"
          onClick={() => {
            setText(toYaml(vm));
            loadedRv.current = vm.metadata.resourceVersion;
            setDirty(false);
            setStale(false);
            setError(null);
            setBadLines(new Map());
          }}
        >
          Reload
        </button>
        {stale && <span class="help">The VM changed on the server since you started editing.</span>}
      </div>
      <ErrorBox error={error} onField={goToField} />
      <label for="yaml-text">YAML of {name}</label>
      <div class="editor">
        <div class="gutter" ref={gutter} aria-hidden="true">
          {Array.from({ length: lines }, (_, i) => (
            <div key={i} class={badLines.has(i + 1) ? 'bad' : ''} title={badLines.get(i + 1)}>
              {i + 1}
            </div>
          ))}
        </div>
        <textarea
          id="yaml-text"
          ref={area}
          class="mono"
          spellcheck={false}
          wrap="off"
          value={text}
          aria-invalid={badLines.size > 0 ? 'true' : undefined}
          onInput={(e) => {
            setText((e.target as HTMLTextAreaElement).value);
            setDirty(true);
          }}
          onScroll={(e) => {
            if (gutter.current) gutter.current.scrollTop = (e.target as HTMLTextAreaElement).scrollTop;
          }}
        />
      </div>
    </div>
  );
}
