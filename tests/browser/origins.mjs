// A page of another origin against callwire, in Debian's Chromium driven by playwright-core:
// the page (served by the test on a second local port) opens a websocket in each dialect to
// callwire and fetches its REST API; then callwire's own dashboard is opened beside it.
//
//   node origins.mjs <foreign page url> <callwire url>
//
// Prints one JSON summary line: what the foreign page got, and whether the dashboard went
// live. Exits non-zero only when the browser could not be driven.
import { launch } from './launch.mjs';

const [foreignUrl, callwireUrl] = process.argv.slice(2);
if (!foreignUrl || !callwireUrl) {
  console.error('usage: node origins.mjs <foreign page url> <callwire url>');
  process.exit(2);
}
const summary = { foreign_page: foreignUrl, callwire: callwireUrl };
let browser;
try {
  browser = await launch();
  const context = await browser.newContext();

  const foreign = await context.newPage();
  await foreign.goto(foreignUrl, { waitUntil: 'load' });
  await foreign.waitForFunction(() => window.results && window.results.done, null, { timeout: 15_000 });
  summary.foreign = await foreign.evaluate(() => window.results);
  summary.foreign_origin = await foreign.evaluate(() => location.origin);

  const dashboard = await context.newPage();
  await dashboard.goto(callwireUrl, { waitUntil: 'load' });
  await dashboard.waitForFunction(() => document.getElementById('ws-state').textContent === 'live', null, { timeout: 15_000 });
  await dashboard.waitForSelector('#calls tbody tr[data-id]', { timeout: 15_000 });
  summary.dashboard_live = true;
  summary.dashboard_calls = await dashboard.$$eval('#calls tbody tr[data-id]', (trs) => trs.length);
  summary.ok = true;
} catch (err) {
  summary.ok = false;
  summary.error = String(err && err.message || err).split('\n')[0];
} finally {
  if (browser) await browser.close();
}
console.log(JSON.stringify(summary));
process.exit(summary.ok ? 0 : 1);
