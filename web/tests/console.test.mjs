// End-to-end test of the web console in a real Chromium, against a running
// kubevirt-rs server. See README.md for the environment it needs.
import { chromium } from 'playwright-core';
import { mkdirSync } from 'node:fs';
import path from 'node:path';

const env = (k, d) => {
  const v = process.env[k] ?? d;
  if (v === undefined || v === '') {
    console.error(`missing environment variable ${k}`);
    process.exit(2);
  }
  return v;
};
const CONSOLE_URL = env('CONSOLE_URL');
const ADMIN_TOKEN = env('ADMIN_TOKEN');
const VIEW_TOKEN = env('VIEW_TOKEN');
const NAMESPACE = env('NAMESPACE', 'default');
const IMAGE_URL = env('IMAGE_URL');
const SCREENSHOT_DIR = env('SCREENSHOT_DIR', '.');
const CHROMIUM = env('CHROMIUM', '/usr/bin/chromium');
const VM = 'web-vm';
mkdirSync(SCREENSHOT_DIR, { recursive: true });

const base = CONSOLE_URL.replace(/\/+$/, '') + '/';
const nsHash = `#/ns/${encodeURIComponent(NAMESPACE)}`;

const browser = await chromium.launch({ executablePath: CHROMIUM, args: ['--no-sandbox'] });
const context = await browser.newContext({ ignoreHTTPSErrors: true, viewport: { width: 1280, height: 800 } });
const page = await context.newPage();
// Uncaught errors in the page fail the test at the end.
const pageErrors = [];
page.on('pageerror', (e) => {
  console.log(`page error: ${e.message}`);
  pageErrors.push(e.message);
});

const shot = (name) => page.screenshot({ path: path.join(SCREENSHOT_DIR, name) });
let current = '';
async function step(name, fn) {
  current = name;
  const t0 = Date.now();
  console.log(`step: ${name}`);
  await fn();
  console.log(`  ok (${((Date.now() - t0) / 1000).toFixed(1)} s)`);
}
const row = () => page.locator(`tr[data-vm="${VM}"]`);
const rowStatus = () => row().locator('[data-testid="status"]');

async function waitStatus(want, timeoutMs, onTick) {
  const end = Date.now() + timeoutMs;
  let last = '';
  while (Date.now() < end) {
    const n = await rowStatus().count();
    const s = n ? (await rowStatus().innerText()).trim() : '(no row)';
    if (s !== last) {
      console.log(`  status: ${s}`);
      last = s;
    }
    if (s === want) return;
    if (onTick) await onTick();
    await page.waitForTimeout(250);
  }
  throw new Error(`${VM} did not reach ${want} within ${timeoutMs / 1000} s (last status: ${last})`);
}

async function login(token) {
  await page.locator('#token').fill(token);
  await page.getByRole('button', { name: 'Log in' }).click();
  const user = page.locator('[data-testid="username"]');
  await user.waitFor({ timeout: 15000 });
  await page.waitForFunction(() => {
    const t = document.querySelector('[data-testid="username"]')?.textContent || '';
    return t && t !== '…';
  }, null, { timeout: 15000 });
  return (await user.innerText()).trim();
}

// A VM (or its disk) left over from an earlier run would make step 2 fail:
// remove them first, and wait until the VM, its instance and its DataVolume
// are all gone.
async function removeLeftovers() {
  const headers = { Authorization: `Bearer ${ADMIN_TOKEN}` };
  const vmUrl = `${base}apis/kubevirt.io/v1/namespaces/${NAMESPACE}/virtualmachines/${VM}`;
  const vmiUrl = `${base}apis/kubevirt.io/v1/namespaces/${NAMESPACE}/virtualmachineinstances/${VM}`;
  const dvUrl = `${base}apis/cdi.kubevirt.io/v1beta1/namespaces/${NAMESPACE}/datavolumes/${VM}-root`;
  const vm = await context.request.delete(vmUrl, { headers });
  const dv = await context.request.delete(dvUrl, { headers });
  if (vm.status() !== 404 || dv.status() !== 404) console.log(`removing the ${VM} left from an earlier run`);
  const end = Date.now() + 120000;
  while (Date.now() < end) {
    const codes = await Promise.all([vmUrl, vmiUrl, dvUrl].map(async (u) => (await context.request.get(u, { headers })).status()));
    if (codes.every((c) => c === 404)) return;
    await new Promise((r) => setTimeout(r, 1000));
  }
  throw new Error(`the old ${VM} was not deleted`);
}

/** True once the element matched by `sel` exists and is not aria-disabled. */
const enabled = (sel) =>
  page.waitForFunction(
    (s) => {
      const el = document.querySelector(s);
      return !!el && el.getAttribute('aria-disabled') !== 'true';
    },
    sel,
    { timeout: 30000 },
  );

try {
  await step('0 clean up', removeLeftovers);
  await step('1 log in as admin', async () => {
    await page.goto(base, { waitUntil: 'load' });
    await page.locator('#token').waitFor();
    const user = await login(ADMIN_TOKEN);
    if (user !== 'admin') throw new Error(`shown user is "${user}", want "admin"`);
    console.log(`  logged in as ${user}`);
  });

  await step('2 create web-vm from IMAGE_URL', async () => {
    await page.goto(`${base}${nsHash}/create`);
    await page.getByLabel('Name', { exact: true }).fill(VM);
    await page.getByLabel('Size', { exact: true }).selectOption('tiny');
    await page.getByRole('radio', { name: /Image URL/ }).check();
    await page.locator('#vm-url').fill(IMAGE_URL);
    await page.getByLabel('Disk size').fill('64Mi');
    await page.getByLabel('Start after creation').check();
    await shot('create.png');
    await page.getByRole('button', { name: 'Create', exact: true }).click();
    await row().waitFor({ timeout: 30000 });
  });

  await step('3 web-vm reaches Running', async () => {
    const seen = new Set();
    const watchDv = async () => {
      const dv = page.locator(`tr[data-dv="${VM}-root"]`);
      if (await dv.count()) {
        const cells = await dv.locator('td').allInnerTexts();
        const key = cells.slice(0, 2).join(' ').trim();
        if (!seen.has(key)) {
          seen.add(key);
          console.log(`  datavolume: ${key}`);
        }
      }
    };
    await waitStatus('Running', 240000, watchDv);
    await watchDv(); // the DataVolume stays listed after the import
    if (seen.size === 0) throw new Error(`the DataVolume ${VM}-root was never shown`);
    await shot('list.png');
  });

  await step('4 serial console answers', async () => {
    await row().getByRole('link', { name: VM }).click();
    await page.getByRole('tab', { name: 'Overview' }).waitFor();
    await shot('detail.png');
    const tab = page.getByRole('tab', { name: 'Console' });
    await enabled('#tab-console');
    await tab.click();
    const rows = page.locator('.xterm-rows');
    await rows.waitFor({ timeout: 15000 });
    await page.locator('[data-testid="console-state"]', { hasText: 'Connected' }).waitFor({ timeout: 20000 });
    await page.locator('.xterm').click();
    const end = Date.now() + 120000;
    while (!(await rows.innerText()).includes('guest#')) {
      if (Date.now() > end) throw new Error(`no guest# prompt; terminal shows:\n${await rows.innerText()}`);
      await page.keyboard.press('Enter');
      await page.waitForTimeout(1000);
    }
    await page.keyboard.type('echo web-$((6*7))');
    await page.keyboard.press('Enter');
    await page.waitForFunction(() => (document.querySelector('.xterm-rows')?.textContent || '').includes('web-42'), null, {
      timeout: 15000,
    });
    await shot('console.png');
  });

  await step('5 YAML error shows the field path', async () => {
    await page.getByRole('tab', { name: 'YAML' }).click();
    const ta = page.locator('#yaml-text');
    await ta.waitFor({ timeout: 15000 });
    const text = await ta.inputValue();
    const changed = text.replace(/^(\s*)runStrategy: .*$/m, '$1runStrategy: Sometimes');
    if (changed === text) throw new Error('no runStrategy line in the YAML');
    await ta.fill(changed);
    await page.getByRole('button', { name: 'Save' }).click();
    await page.locator('.error .causes', { hasText: 'spec.runStrategy' }).waitFor({ timeout: 15000 });
    const marked = await page.locator('.editor .gutter .bad').count();
    if (marked < 1) throw new Error('no line is marked in the gutter');
    // The editor selects the line of the first field the server named.
    const selected = await page
      .waitForFunction(() => {
        const el = document.querySelector('#yaml-text');
        const v = el.value;
        const start = v.lastIndexOf('\n', el.selectionStart - 1) + 1;
        const end = v.indexOf('\n', el.selectionStart);
        const line = v.slice(start, end < 0 ? v.length : end);
        return /^\s*runStrategy:/.test(line) && line;
      }, null, { timeout: 5000 })
      .then((h) => h.jsonValue())
      .catch(() => null);
    if (!selected) throw new Error('the selection is not on the runStrategy: line');
    console.log(`  error shown at spec.runStrategy; ${marked} line(s) marked; selected "${selected.trim()}"`);
    await shot('yaml-error.png');
  });

  const stopFromList = async () => {
    await page.goto(`${base}${nsHash}/vms`);
    const stop = page.getByRole('button', { name: `Stop ${VM}`, exact: true });
    await stop.waitFor();
    await enabled(`button[aria-label="Stop ${VM}"]`);
    await stop.click();
    await waitStatus('Stopped', 120000);
  };

  await step('6 stop web-vm', stopFromList);

  await step('6b start web-vm again, then stop it', async () => {
    const start = page.getByRole('button', { name: `Start ${VM}`, exact: true });
    await enabled(`button[aria-label="Start ${VM}"]`);
    await start.click();
    await waitStatus('Running', 180000);
    await stopFromList();
  });

  await step('7 view user sees web-vm but may not act', async () => {
    await page.getByRole('button', { name: 'Log out' }).click();
    await page.locator('#token').waitFor();
    const user = await login(VIEW_TOKEN);
    const want = `system:serviceaccount:${NAMESPACE}:viewer`;
    if (user !== want) throw new Error(`shown user is "${user}", want "${want}"`);
    console.log(`  logged in as ${user}`);
    await page.goto(`${base}${nsHash}/vms`);
    await row().waitFor({ timeout: 30000 });
    const start = page.getByRole('button', { name: `Start ${VM}`, exact: true });
    await page.waitForFunction(
      (n) => /may not/.test(document.querySelector(`button[aria-label="Start ${n}"]`)?.title || ''),
      VM,
      { timeout: 15000 },
    );
    if ((await start.getAttribute('aria-disabled')) !== 'true') throw new Error('Start is not aria-disabled for the view user');
    // Still focusable, but a click does nothing (force: skip Playwright's
    // own wait for an enabled button).
    await start.click({ force: true });
    await page.waitForTimeout(2000);
    const status = (await rowStatus().innerText()).trim();
    if (status !== 'Stopped') throw new Error(`clicking the disabled Start changed the status to ${status}`);
    console.log(`  Start disabled: ${await start.getAttribute('title')}`);
    await row().getByRole('link', { name: VM }).click();
    const consoleTab = page.getByRole('tab', { name: 'Console' });
    await consoleTab.waitFor();
    await page.waitForFunction(() => /may not/.test(document.querySelector('#tab-console')?.title || ''), null, { timeout: 15000 });
    if ((await consoleTab.getAttribute('aria-disabled')) !== 'true')
      throw new Error('the Console tab is not aria-disabled for the view user');
    await consoleTab.click({ force: true });
    await page.waitForTimeout(500);
    if (page.url().endsWith('/console') || (await page.locator('[data-testid="console-state"]').count()))
      throw new Error('clicking the disabled Console tab opened the console');
    console.log(`  Console tab disabled: ${await consoleTab.getAttribute('title')}`);
    await shot('view-user.png');
  });

  current = 'no errors in the page';
  if (pageErrors.length) throw new Error(`uncaught errors in the page:\n${pageErrors.join('\n')}`);
  console.log('all steps passed');
  await browser.close();
  process.exit(0);
} catch (e) {
  console.error(`FAILED at step "${current}": ${e?.stack || e}`);
  try {
    await shot('failure.png');
  } catch {
    /* page gone */
  }
  await browser.close();
  process.exit(1);
}
