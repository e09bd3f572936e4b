// One round of the console benchmark (crates/server/examples/console_bench.rs runs it
// beside kubectl + virtctl): the first load of the console page in a fresh browser
// profile (bytes over the wire, navigation start to the load event), then the time from
// clicking Start on a stopped VM to its row in the list saying Running; the VM is stopped
// again afterwards. Prints `name value` lines.
import { chromium } from 'playwright-core';

const need = (k) => {
  const v = process.env[k];
  if (!v) {
    console.error(`missing environment variable ${k}`);
    process.exit(2);
  }
  return v;
};
const base = need('CONSOLE_URL').replace(/\/+$/, '') + '/';
const token = need('ADMIN_TOKEN');
const vm = need('VM');
const ns = process.env.NAMESPACE || 'default';

const browser = await chromium.launch({
  executablePath: process.env.CHROMIUM || '/usr/bin/chromium',
  args: ['--no-sandbox'],
});
try {
  const context = await browser.newContext({ ignoreHTTPSErrors: true, viewport: { width: 1280, height: 800 } });
  const page = await context.newPage();
  await page.goto(base, { waitUntil: 'load' });
  await page.locator('#token').waitFor();
  const load = await page.evaluate(() => {
    const nav = performance.getEntriesByType('navigation')[0];
    const res = performance.getEntriesByType('resource');
    return {
      bytes: [nav, ...res].reduce((a, e) => a + (e.transferSize || 0), 0),
      ms: nav.loadEventEnd - nav.startTime,
    };
  });
  console.log(`console_first_load_bytes ${load.bytes}`);
  console.log(`console_first_load_ms ${Math.round(load.ms)}`);

  await page.locator('#token').fill(token);
  await page.getByRole('button', { name: 'Log in' }).click();
  // Navigate only once the login has been checked and the user is shown.
  await page.waitForFunction(() => {
    const t = document.querySelector('[data-testid="username"]')?.textContent?.trim() || '';
    return t !== '' && t !== '…';
  }, null, { timeout: 15000 });
  await page.goto(`${base}#/ns/${encodeURIComponent(ns)}/vms`);
  const status = page.locator(`tr[data-vm="${vm}"] [data-testid="status"]`);
  const enabled = (label) =>
    page.waitForFunction((l) => {
      const b = document.querySelector(`button[aria-label="${l}"]`);
      return !!b && b.getAttribute('aria-disabled') !== 'true';
    }, label, { timeout: 60000 });
  const showing = (want) =>
    page.waitForFunction(
      ([sel, w]) => document.querySelector(sel)?.textContent?.trim() === w,
      [`tr[data-vm="${vm}"] [data-testid="status"]`, want],
      { timeout: 180000, polling: 'raf' },
    );
  await status.waitFor();
  await showing('Stopped');
  await enabled(`Start ${vm}`);
  // Timed inside the page, from the click event to the DOM change that shows Running, so
  // Playwright's own round trips and actionability checks are not counted.
  const ms = await page.evaluate(
    ([sel, label]) =>
      new Promise((resolve) => {
        const t0 = performance.now();
        const seen = new MutationObserver(() => {
          if (document.querySelector(sel)?.textContent?.trim() === 'Running') {
            seen.disconnect();
            resolve(performance.now() - t0);
          }
        });
        seen.observe(document.body, { subtree: true, childList: true, characterData: true });
        document.querySelector(`button[aria-label="${label}"]`).click();
      }),
    [`tr[data-vm="${vm}"] [data-testid="status"]`, `Start ${vm}`],
  );
  console.log(`console_start_to_running_ms ${Math.round(ms)}`);
  await enabled(`Stop ${vm}`);
  await page.getByRole('button', { name: `Stop ${vm}`, exact: true }).click();
  await showing('Stopped');
} finally {
  await browser.close();
}
