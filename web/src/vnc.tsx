// Graphical console over the VMI's vnc subresource, rendered by noVNC.
import { useEffect, useRef, useState } from 'preact/hooks';
import { paths, wsProtocols, wsUrl } from './api';
import { announce } from './ui';

export function VncConsole({ ns, name }: { ns: string; name: string }) {
  const box = useRef<HTMLDivElement>(null);
  const rfbRef = useRef<any>(null);
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
      </div>
      <div class="vnc" ref={box} aria-label={`Graphical console of ${name}`} role="region" />
    </div>
  );
}
