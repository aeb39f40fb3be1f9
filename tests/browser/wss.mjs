// A page served over https:// opening a wss:// Blackhole socket to callwire, in Debian's
// Chromium driven by playwright-core. Chromium trusts the test's CA by its public key hash
// (`--ignore-certificate-errors-spki-list`, which accepts a chain holding a certificate with
// that key): the page's server and callwire both present their certificate with the CA's.
//
//   node wss.mjs <https page url> <CA SPKI sha256, base64>
//
// Prints one JSON summary line: the page's origin, and what its socket got. Exits non-zero
// only when the browser could not be driven.
import { launch } from './launch.mjs';

const [pageUrl, spki] = process.argv.slice(2);
if (!pageUrl || !spki) {
  console.error('usage: node wss.mjs <https page url> <CA SPKI hash>');
  process.exit(2);
}
const summary = { page: pageUrl };
let browser;
try {
  browser = await launch([`--ignore-certificate-errors-spki-list=${spki}`]);
  const page = await (await browser.newContext()).newPage();
  await page.goto(pageUrl, { waitUntil: 'load' });
  summary.origin = await page.evaluate(() => location.origin);
  await page.waitForFunction(() => window.results && window.results.done, null, { timeout: 20_000 });
  summary.results = await page.evaluate(() => window.results);
  summary.ok = true;
} catch (err) {
  summary.ok = false;
  summary.error = String(err && err.message || err).split('\n')[0];
} finally {
  if (browser) await browser.close();
}
console.log(JSON.stringify(summary));
process.exit(summary.ok ? 0 : 1);
