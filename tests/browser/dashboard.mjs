// The dashboard's browser test: Debian's Chromium, driven by playwright-core, opens callwire's
// dashboard against a running `callwire --demo` and checks what a person would see.
//
//   node dashboard.mjs <url> <outdir> [name:secret]
//
// With a credential, the page must first ask for it (the server runs with --auth) and is
// signed in through its own form. Prints one JSON summary line; exits non-zero on failure.
import { mkdirSync } from 'node:fs';
import { join } from 'node:path';
import { launch } from './launch.mjs';

const [url, outdir, credential] = process.argv.slice(2);
if (!url || !outdir) {
  console.error('usage: node dashboard.mjs <url> <outdir> [name:secret]');
  process.exit(2);
}
const origin = new URL(url).origin;
const wsOrigin = origin.replace(/^http/, 'ws');
const shot = join(outdir, credential ? 'dashboard-signin.png' : 'dashboard.png');
mkdirSync(outdir, { recursive: true });

const summary = { url, screenshot: shot, requests: 0, foreign: [], console_errors: [] };
const step = (name) => { summary.step = name; };
let browser;
try {
  step('launch');
  browser = await launch();
  // A phone: 390 x 844 CSS pixels (375 wide works too; the page has no fixed widths).
  const context = await browser.newContext({
    viewport: { width: 390, height: 844 }, deviceScaleFactor: 2, isMobile: true, hasTouch: true,
  });
  const page = await context.newPage();
  page.on('request', (request) => {
    summary.requests += 1;
    const u = request.url();
    if (!u.startsWith(origin + '/')) summary.foreign.push(u);
    if (credential && u.includes(credential.split(':')[1])) summary.foreign.push('secret in URL: ' + u);
  });
  page.on('websocket', (ws) => {
    if (!ws.url().startsWith(wsOrigin + '/')) summary.foreign.push(ws.url());
  });
  page.on('console', (m) => {
    // A 401 is how the page learns it must sign in; anything else is a fault.
    if (m.type() === 'error' && !(credential && /401/.test(m.text()))) summary.console_errors.push(m.text());
  });
  page.on('pageerror', (e) => summary.console_errors.push(String(e)));

  step('open');
  const response = await page.goto(url, { waitUntil: 'load' });
  summary.csp = response.headers()['content-security-policy'];
  summary.title = await page.title();

  if (credential) {
    step('sign in');
    const colon = credential.indexOf(':');
    await page.locator('#signin').waitFor({ state: 'visible', timeout: 10_000 });
    await page.screenshot({ path: shot.replace(/\.png$/, '-form.png') });
    await page.fill('#si-name', credential.slice(0, colon));
    await page.fill('#si-secret', credential.slice(colon + 1));
    await page.click('#signin button[type=submit]');
    await page.locator('#signin').waitFor({ state: 'hidden', timeout: 5_000 });
    summary.signed_in = true;
  }

  step('source status');
  await page.waitForFunction(() => document.getElementById('src-state').textContent === 'connected', null, { timeout: 10_000 });
  summary.source = await page.textContent('#src-kind');

  step('event socket live');
  await page.waitForFunction(() => document.getElementById('ws-state').textContent === 'live', null, { timeout: 10_000 });

  step('live calls appear');
  const rows = '#calls tbody tr[data-id]';
  await page.waitForSelector(rows, { timeout: 15_000 });
  const firstIds = await page.$$eval(rows, (trs) => trs.map((tr) => tr.dataset.id));
  summary.calls_seen = firstIds.length;

  step('feed moves');
  const total = () => page.$eval('#feed', (ol) => Number(ol.dataset.total));
  const feed1 = await total();
  const lines1 = await page.$$eval('#feed li', (lis) => lis.length);
  await page.waitForFunction((n) => Number(document.getElementById('feed').dataset.total) > n, feed1, { timeout: 10_000 });
  summary.feed = { first: feed1, lines_first: lines1, second: await total(), lines_second: await page.$$eval('#feed li', (lis) => lis.length) };

  step('durations tick');
  const duration = () => page.$eval('#calls .dur', (d) => d.firstChild.textContent);
  const d1 = await duration();
  await page.waitForFunction((d) => {
    const dur = document.querySelector('#calls .dur');
    return dur && dur.firstChild.textContent !== d;
  }, d1, { timeout: 5_000 });

  step('a call ends');
  const ended = await page.waitForFunction((ids) => {
    const now = new Set([...document.querySelectorAll('#calls tbody tr[data-id]')].map((tr) => tr.dataset.id));
    return ids.find((id) => !now.has(id)) || null;
  }, firstIds, { timeout: 45_000, polling: 250 });
  summary.call_ended = await ended.jsonValue();

  step('extensions');
  summary.extension_chips = await page.$$eval('#exts li', (lis) => lis.length);
  if (!summary.extension_chips) throw new Error('no extension chips');

  step('screenshot');
  await page.waitForTimeout(1_600); // let the "new row" highlight fade
  await page.screenshot({ path: shot, fullPage: true });
  summary.calls_now = await page.$$eval(rows, (trs) => trs.length);
  // The same page on a laptop screen, for people reading the README.
  await page.setViewportSize({ width: 1280, height: 800 });
  await page.waitForTimeout(300);
  summary.screenshot_wide = shot.replace(/\.png$/, '-wide.png');
  await page.screenshot({ path: summary.screenshot_wide });

  if (summary.foreign.length) throw new Error('requests outside the origin: ' + summary.foreign.join(', '));
  if (summary.console_errors.length) throw new Error('console errors: ' + summary.console_errors.join(' | '));
  summary.ok = true;
  delete summary.step;
} catch (err) {
  summary.ok = false;
  summary.error = String(err && err.message || err).split('\n')[0];
  try {
    const pages = browser ? browser.contexts().flatMap((c) => c.pages()) : [];
    if (pages[0]) await pages[0].screenshot({ path: shot.replace(/\.png$/, '-failed.png') });
  } catch (_) { /* nothing more to show */ }
} finally {
  if (browser) await browser.close();
}
console.log(JSON.stringify(summary));
process.exit(summary.ok ? 0 : 1);
