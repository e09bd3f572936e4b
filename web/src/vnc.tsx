// Graphical console over the VMI's vnc subresource, rendered by noVNC.
import { useEffect, useRef, useState } from 'preact/hooks';
import { paths, wsProtocols, wsUrl } from './api';
import { announce, CONSOLE_ESCAPE, isConsoleEscape } from './ui';

export function VncConsole({ ns, name }: { ns: string; name: string }) {
  const box = useRef<HTMLDivElement>(null);
  const rfbRef = useRef<any>(null);
  const release = useRef<HTMLButtonElement>(null);
  const [state, setState] = useState('Connecting…');
  const [gen, setGen] = useState(0);
  useEffect(() => {
    let closed = false;
    (async () => {
      const mod: any = await import('@novnc/novnc');
      const RFB: typeof import('@novnc/novnc').default = typeof mod.default === 'function' ? mod.default : mod.default?.default;
      if (closed || !box.current) return;
      const rfb = new RFB(box.current, wsUrl(paths.vmiSub(ns, name, 'vnc')), { wsProtocols: wsProtocols() });
      rfb.scaleViewport = true;
      rfb.background = '#111';
      rfbRef.current = rfb;
      rfb.addEventListener('connect', () => {
        setState('Connected');
        announce('VNC connected');
      });
      rfb.addEventListener('disconnect', (e: any) => {
        if (closed) return;
        const msg = e?.detail?.clean ? 'Disconnected' : 'Connection lost';
        setState(msg);
        announce(`VNC ${msg.toLowerCase()}`);
      });
      rfb.addEventListener('securityfailure', (e: any) => setState(`Security failure: ${e?.detail?.reason || ''}`));
    })().catch((e) => setState(`Could not start VNC: ${e.message}`));
    return () => {
      closed = true;
      try {
        rfbRef.current?.disconnect();
      } catch {
        /* already closed */
      }
      rfbRef.current = null;
    };
  }, [ns, name, gen]);

  const releaseKeyboard = () => {
    rfbRef.current?.blur();
    release.current?.focus();
  };

  // noVNC sends every key, Tab included, to the guest while its canvas has
  // focus. Ctrl+] (seen before noVNC, in the capture phase) hands focus back
  // to the page instead of reaching the guest.
  useEffect(() => {
    const el = box.current;
    if (!el) return;
    const onKey = (e: KeyboardEvent) => {
      if (!isConsoleEscape(e)) return;
      e.preventDefault();
      e.stopPropagation();
      // noVNC already sent Ctrl down and will not see its release once focus
      // has moved: release it in the guest now.
      for (const code of ['ControlLeft', 'ControlRight'])
        e.target?.dispatchEvent(new KeyboardEvent('keyup', { code, key: 'Control' }));
      releaseKeyboard();
    };
    el.addEventListener('keydown', onKey, true);
    return () => el.removeEventListener('keydown', onKey, true);
  }, []);

  return (
    <div class="console">
      <div class="console-bar">
        <span data-testid="vnc-state">{state}</span>
        <button type="button" onClick={() => rfbRef.current?.sendCtrlAltDel()}>
          Send Ctrl+Alt+Del
        </button>
        <button type="button" onClick={() => { setState('Connecting…'); setGen(gen + 1); }}>
          Reconnect
        </button>
        <button type="button" ref={release} onClick={releaseKeyboard} aria-describedby="vnc-keys">
          Release keyboard
        </button>
        <span class="help" id="vnc-keys">
          {CONSOLE_ESCAPE} leaves the console
        </span>
      </div>
      <div class="vnc" ref={box} aria-label={`Graphical console of ${name}`} role="region" />
    </div>
  );
}
