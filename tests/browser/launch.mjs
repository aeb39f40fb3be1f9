// How the browser tests start Debian's Chromium (or $CHROMIUM) through playwright-core:
// headless, and quiet on the network (nothing but the pages the tests open).
import { chromium } from 'playwright-core';

// `extraArgs`: more Chromium switches (tests/tls.rs trusts its CA with one).
export function launch(extraArgs = []) {
  // Playwright starts it with a new, empty --user-data-dir of its own each time.
  return chromium.launch({
    executablePath: process.env.CHROMIUM || '/usr/bin/chromium',
    headless: true,
    args: [
      '--headless', '--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run',
      '--disable-background-networking', '--disable-component-update', '--disable-sync',
      ...extraArgs,
    ],
  });
}
