// Serial console over the VMI's console subresource, rendered by xterm.js.
import type { Terminal as XTerm } from '@xterm/xterm';
import { useEffect, useRef, useState } from 'preact/hooks';
import { paths, wsProtocols, wsUrl } from './api';
import { announce, CONSOLE_ESCAPE, isConsoleEscape } from './ui';

/** Opens an http(s) link the guest wrote (OSC 8); ignores any other scheme. */
function openLink(_e: MouseEvent, uri: string) {
  let url: URL;
  try {
    url = new URL(uri);
  } catch {
    return;
  }
  if (url.protocol === 'http:' || url.protocol === 'https:') window.open(url.href, '_blank', 'noopener,noreferrer');
}

export function SerialConsole({ ns, name }: { ns: string; name: string }) {
  const box = useRef<HTMLDivElement>(null);
  const reconnect = useRef<HTMLButtonElement>(null);
  const termRef = useRef<XTerm | null>(null);
  const [state, setState] = useState('Connecting…');
  const [gen, setGen] = useState(0);
  const [screenReader, setScreenReader] = useState(false);
  const screenReaderRef = useRef(screenReader);
  screenReaderRef.current = screenReader;
  useEffect(() => {
    let closed = false;
    let cleanup = () => {};
    (async () => {
      // xterm.js ships as UMD; the class may sit on the namespace or under default.
      const mod: any = await import('@xterm/xterm');
      const Terminal: typeof import('@xterm/xterm').Terminal = mod.Terminal ?? mod.default?.Terminal;
      if (closed || !box.current) return;
      const term = new Terminal({
        convertEol: false,
        cursorBlink: true,
        fontFamily: 'ui-monospace, "DejaVu Sans Mono", Menlo, Consolas, monospace',
        fontSize: 14,
        rows: 30,
        cols: 100,
        screenReaderMode: screenReaderRef.current,
        linkHandler: { activate: openLink },
      });
      // Ctrl+] leaves the terminal (it would otherwise keep Tab and every
      // other key) and is not sent to the guest.
      term.attachCustomKeyEventHandler((e) => {
        if (!isConsoleEscape(e)) return true;
        if (e.type === 'keydown') {
          e.preventDefault();
          reconnect.current?.focus();
        }
        return false;
      });
      term.open(box.current);
      term.textarea?.setAttribute('aria-describedby', 'serial-keys');
      termRef.current = term;
      const ws = new WebSocket(wsUrl(paths.vmiSub(ns, name, 'console')), wsProtocols());
      ws.binaryType = 'arraybuffer';
      const enc = new TextEncoder();
      ws.onopen = () => {
        setState('Connected');
        announce('Serial console connected');
        term.focus();
      };
      ws.onmessage = (ev) => {
        if (ev.data instanceof ArrayBuffer) term.write(new Uint8Array(ev.data));
        else term.write(String(ev.data));
      };
      ws.onclose = (ev) => {
        if (closed) return;
        const msg = `Disconnected${ev.reason ? `: ${ev.reason}` : ev.code !== 1000 ? ` (code ${ev.code})` : ''}`;
        setState(msg);
        announce(`Serial console ${msg.toLowerCase()}`);
      };
      ws.onerror = () => setState('Connection failed');
      const sub = term.onData((d) => {
        if (ws.readyState === WebSocket.OPEN) ws.send(enc.encode(d));
      });
      const subBin = term.onBinary((d) => {
        if (ws.readyState !== WebSocket.OPEN) return;
        const b = new Uint8Array(d.length);
        for (let i = 0; i < d.length; i++) b[i] = d.charCodeAt(i) & 0xff;
        ws.send(b);
      });
      cleanup = () => {
        sub.dispose();
        subBin.dispose();
        ws.close();
        termRef.current = null;
        term.dispose();
      };
    })().catch((e) => setState(`Could not start the terminal: ${e.message}`));
    return () => {
      closed = true;
      cleanup();
    };
  }, [ns, name, gen]);
  return (
    <div class="console">
      <div class="console-bar">
        <span data-testid="console-state">{state}</span>
        <button type="button" ref={reconnect} onClick={() => { setState('Connecting…'); setGen(gen + 1); }}>
          Reconnect
        </button>
        <label>
          <input
            type="checkbox"
            checked={screenReader}
            onChange={(e) => {
              const on = (e.target as HTMLInputElement).checked;
              setScreenReader(on);
              if (termRef.current) termRef.current.options.screenReaderMode = on;
            }}
          />{' '}
          Screen reader mode
        </label>
        <span class="help" id="serial-keys">
          {CONSOLE_ESCAPE} leaves the console
        </span>
      </div>
      <div class="terminal" ref={box} aria-label={`Serial console of ${name}`} role="region" />
    </div>
  );
}
