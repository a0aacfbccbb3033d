// Headless-browser check of the admin dashboard, driven by
// host/tests/dashboard.rs (which installs nothing: see that file).
//
//   node dashboard.mjs <admin-base-url> <screenshot.png>
//
// Opens the page in Debian's Chromium at 1280x800, checks that it starts
// with the history the proxy kept (the caller sent traffic before), waits
// until it is live and traffic is flowing (total RPS and a backend's request
// count both change), prints `READY`, then waits for a new entry in the
// reload log (the caller triggers a reload and kills a backend after READY),
// for the strategy shown to match /status, and for a backend shown down
// with a reason and a since-time; reads the routes, listeners, bytes and
// retries shown and whether the page scrolls sideways (at 1280 and 1024 px);
// saves a full-page screenshot and prints one JSON line with what it saw.
// Exit 0 on success; on any failed expectation a JSON line with ok:false and
// the reason, exit 1. Hard limit: 60 s.
//
// Optional environment: SWITCHYARD_CHROMIUM (default /usr/bin/chromium),
// SWITCHYARD_THEME (dark, the default, or light), SWITCHYARD_MIN_LIVE_MS
// (how long the page must have been live before READY) and
// SWITCHYARD_SHOT_DELAY_MS (pause before the screenshot, so the chart has
// history in it).

import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { chromium } from 'playwright-core';

const CHROMIUM = process.env.SWITCHYARD_CHROMIUM || '/usr/bin/chromium';
const TOTAL_MS = 60_000;
const READY_MS = 20_000;
const RELOAD_MS = 15_000;
// Optional: how long the page must have been live before READY, and how
// long to wait before the screenshot (history in the chart makes it show
// something); the caller sets them, both bounded by the 40 s limit.
const MIN_LIVE_MS = Math.min(Number(process.env.SWITCHYARD_MIN_LIVE_MS) || 0, 12_000);
const SHOT_DELAY_MS = Math.min(Number(process.env.SWITCHYARD_SHOT_DELAY_MS) || 2_500, 10_000);

const [base, shot] = process.argv.slice(2);
const started = Date.now();
const observed = { url: base, rpsSamples: [], requestSamples: [], limitedSamples: [] };
let browser = null;
let profile = null;

function report(obj) {
  process.stdout.write(JSON.stringify(obj) + '\n');
}

async function cleanup() {
  if (browser) await browser.close().catch(() => {});
  browser = null;
  if (profile) fs.rmSync(profile, { recursive: true, force: true });
  profile = null;
}

async function fail(reason) {
  report({ ok: false, reason, ...observed, elapsedMs: Date.now() - started });
  await cleanup();
  process.exit(1);
}

const hard = setTimeout(() => {
  fail(`hard timeout: ${TOTAL_MS / 1000} s`);
}, TOTAL_MS);

function left(limit) {
  return Math.max(0, Math.min(limit, TOTAL_MS - 1500 - (Date.now() - started)));
}

/// Polls `fn` every 100 ms until it returns a truthy value.
async function until(what, limitMs, fn) {
  const end = Date.now() + left(limitMs);
  for (;;) {
    const v = await fn();
    if (v) return v;
    if (Date.now() > end) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 100));
  }
}

async function main() {
  if (!base || !shot) {
    report({ ok: false, reason: 'usage: node dashboard.mjs <admin-base-url> <screenshot.png>' });
    process.exit(2);
  }
  if (!fs.existsSync(CHROMIUM)) await fail(`${CHROMIUM} not found (apt-get install chromium)`);

  profile = fs.mkdtempSync(path.join(os.tmpdir(), 'switchyard-chromium-'));
  browser = await chromium.launchPersistentContext(profile, {
    executablePath: CHROMIUM,
    headless: true,
    // Closed network: no background connections, or Chromium's own traffic
    // gets refused and slows everything down.
    args: [
      '--headless',
      '--no-sandbox',
      '--disable-gpu',
      '--disable-quic',
      '--no-first-run',
      '--disable-background-networking',
      '--disable-component-update',
      '--disable-sync',
    ],
    viewport: { width: 1280, height: 800 },
    deviceScaleFactor: 1,
    colorScheme: process.env.SWITCHYARD_THEME === 'light' ? 'light' : 'dark',
  });
  const page = browser.pages()[0] || (await browser.newPage());
  const consoleErrors = [];
  page.on('console', (m) => { if (m.type() === 'error') consoleErrors.push(m.text()); });
  page.on('pageerror', (e) => consoleErrors.push(String(e)));

  const resp = await page.goto(base, { waitUntil: 'domcontentloaded', timeout: left(10_000) });
  if (!resp || !resp.ok()) await fail(`GET ${base} answered ${resp ? resp.status() : 'nothing'}`);
  observed.title = await page.title();
  if (observed.title !== 'Switchyard') await fail(`page title is ${JSON.stringify(observed.title)}`);

  const text = (id) => page.locator(`[data-testid="${id}"]`).first().textContent({ timeout: 1000 });
  const snapshot = () =>
    page.evaluate(() => {
      const q = (sel, root) => (root || document).querySelector(sel);
      const rows = [...document.querySelectorAll('[data-testid="backend-row"]')].map((r) => ({
        id: r.dataset.backendId,
        requests: q('[data-testid="backend-requests"]', r).textContent,
        rps: q('[data-testid="backend-rps"]', r).textContent,
        health: q('[data-testid="backend-health"]', r).textContent,
        since: q('[data-testid="backend-since"]', r).textContent,
        reason: q('[data-testid="backend-down-reason"]', r).textContent,
        retried: q('[data-testid="backend-retried"]', r).textContent,
        bytesIn: q('[data-testid="backend-bytes-received"]', r).textContent,
        bytesOut: q('[data-testid="backend-bytes-sent"]', r).textContent,
      }));
      const entries = [...document.querySelectorAll('[data-testid="reload-entry"]')].map((e) => ({
        key: e.dataset.key,
        result: e.dataset.result,
        kind: e.dataset.kind,
        target: e.querySelector('.target').textContent,
        detail: e.querySelector('.detail').textContent,
      }));
      const strategy = q('[data-testid="strategy"]');
      const admission = q('[data-testid="upstream-admission"]');
      return {
        // The first upstream's refusals per second (shown only with rules).
        admission: admission
          ? { shown: !admission.hidden, limited: q('[data-testid="upstream-limited"]').textContent.trim() }
          : null,
        admissionPlugin: q('[data-testid="admission-plugin"]') && !q('[data-testid="admission-plugin"]').hidden
          ? q('[data-testid="admission-plugin-name"]').textContent.trim()
          : null,
        state: q('[data-testid="connection-state"]').textContent.trim(),
        totalRps: q('[data-testid="total-rps"]').textContent.trim(),
        rows,
        entries,
        strategy: q('[data-testid="strategy-name"]') ? q('[data-testid="strategy-name"]').textContent.trim() : null,
        algorithm: q('[data-testid="strategy-algorithm"]') ? q('[data-testid="strategy-algorithm"]').textContent.trim() : null,
        hash: strategy ? strategy.dataset.hash : null,
        reloadLog: !!q('[data-testid="reload-log"]'),
        // The live split bar and the shadow's: segments, legend names, shares.
        splits: Object.fromEntries(['traffic-split', 'shadow-split'].map((id) => {
          const bar = q(`[data-testid="${id}"]`);
          const list = bar ? bar.nextElementSibling : null;
          const texts = (sel) => (list ? [...list.querySelectorAll(sel)].map((n) => n.textContent) : []);
          return [id, { segments: bar ? bar.children.length : 0, names: texts('.name'), shares: texts('.p') }];
        })),
      };
    });

  // 1. Live, with the history the proxy kept before the page was opened.
  await until('connection-state "live"', 10_000, async () => (await text('connection-state')).trim() === 'live');
  const liveAt = Date.now();
  await until('the history to load', 5_000, async () =>
    page.evaluate(() => document.body.dataset.history === 'loaded'));
  observed.historyPoints = await page.evaluate(() => Number(document.body.dataset.historyPoints || 0));
  observed.historySecondsAfterLive = (Date.now() - liveAt) / 1000;
  let s = await snapshot();
  if (!s.reloadLog) await fail('no reload-log on the page');
  if (s.rows.length === 0) await fail('no backend-row on the page');
  observed.backends = s.rows.map((r) => r.id);
  const firstRps = s.totalRps;
  const firstRequests = Object.fromEntries(s.rows.map((r) => [r.id, r.requests]));
  observed.rpsSamples.push(firstRps);

  // 2. Traffic flowing: total RPS changes and is non-zero, and a backend's
  // request count changes.
  let rpsMoved = false, requestsMoved = false;
  await until('total RPS and backend requests to change', READY_MS + MIN_LIVE_MS, async () => {
    s = await snapshot();
    if (s.state !== 'live') return false;
    if (observed.rpsSamples[observed.rpsSamples.length - 1] !== s.totalRps) observed.rpsSamples.push(s.totalRps);
    if (s.totalRps !== firstRps && s.totalRps !== '0' && s.totalRps !== '—') rpsMoved = true;
    observed.admissionPlugin = s.admissionPlugin;
    if (s.admission) {
      observed.admissionShown = s.admission.shown;
      const last = observed.limitedSamples[observed.limitedSamples.length - 1];
      if (last !== s.admission.limited) observed.limitedSamples.push(s.admission.limited);
    }
    for (const r of s.rows) {
      if (!requestsMoved && firstRequests[r.id] !== undefined && firstRequests[r.id] !== r.requests) {
        requestsMoved = true;
        observed.requestSamples.push({ id: r.id, from: firstRequests[r.id], to: r.requests });
      }
    }
    return rpsMoved && requestsMoved && Date.now() - liveAt >= MIN_LIVE_MS;
  });
  observed.healthBefore = Object.fromEntries(s.rows.map((r) => [r.id, r.health]));
  observed.splits = s.splits;
  observed.strategyBefore = s.strategy;
  observed.algorithmBefore = s.algorithm;
  observed.hashBefore = s.hash;
  const known = new Set(s.entries.map((e) => e.key));
  observed.reloadsBefore = s.entries.length;
  process.stdout.write('READY\n');

  // 3. A new reload entry (the caller reloads now).
  const fresh = await until('a new reload-entry', RELOAD_MS, async () => {
    s = await snapshot();
    const n = s.entries.filter((e) => !known.has(e.key));
    return n.length ? n : null;
  });
  // A half-copied plugin may be rejected before the complete file loads:
  // give an "ok" entry and the fresh status after it a moment to arrive.
  const expected = async () => {
    const st = await page.evaluate(async () => (await fetch('status', { cache: 'no-store' })).json());
    return st.upstreams && st.upstreams[0] ? st.upstreams[0].strategy : null;
  };
  let want = null;
  try {
    await until('the reload to settle', 5_000, async () => {
      s = await snapshot();
      want = await expected();
      const ok = s.entries.some((e) => !known.has(e.key) && e.result === 'ok');
      return ok && want && s.strategy === want.name && s.hash === want.hash;
    });
  } catch {
    // Judged below with what is there.
  }
  s = await snapshot();
  observed.newReloads = s.entries.filter((e) => !known.has(e.key)).map(({ kind, target, result, detail }) => ({ kind, target, result, detail }));
  observed.reloads = observed.newReloads.length;
  observed.strategy = s.strategy;
  observed.hash = s.hash;
  observed.hashChanged = !!(observed.hashBefore && s.hash && observed.hashBefore !== s.hash);
  observed.state = s.state;
  observed.rpsSamples.push(s.totalRps);
  if (!fresh.length) await fail('no new reload entry');
  if (!s.strategy || s.strategy === '—') await fail('no strategy name shown');
  if (want && s.strategy !== want.name) await fail(`strategy shown ${JSON.stringify(s.strategy)}, /status says ${JSON.stringify(want.name)}`);
  if (want && s.hash !== want.hash) await fail(`strategy hash shown ${s.hash}, /status says ${want.hash}`);
  // The test strategy declares no name: the page says so, as /status does.
  observed.algorithm = s.algorithm;
  if (want && s.algorithm !== (want.algorithm || 'not declared')) await fail(`algorithm shown ${JSON.stringify(s.algorithm)}, /status says ${JSON.stringify(want.algorithm)}`);
  if (s.state !== 'live') await fail(`connection-state is ${JSON.stringify(s.state)} after the reload`);
  if (consoleErrors.length) await fail(`console errors: ${consoleErrors.slice(0, 3).join(' | ')}`);

  // 4. The backend the caller killed after READY: down, why, since when.
  const downRow = await until('a backend shown down with a reason', 20_000, async () => {
    s = await snapshot();
    return s.rows.find((r) => r.health === 'down' && r.reason.trim() && r.since.includes('down since')) || null;
  });
  observed.down = downRow;
  observed.retried = s.rows.map((r) => r.retried);
  observed.bytesIn = s.rows.map((r) => r.bytesIn);
  observed.bytesOut = s.rows.map((r) => r.bytesOut);
  observed.upSince = s.rows.filter((r) => r.health === 'up').map((r) => r.since);
  // Routes and listeners, and the latency chart's legend.
  Object.assign(observed, await page.evaluate(() => ({
    routes: [...document.querySelectorAll('[data-testid="route-row"]')].map((r) => r.textContent),
    listeners: [...document.querySelectorAll('[data-testid="listener"]')].map((l) => l.textContent),
    latencyLegend: [...document.querySelectorAll('[data-testid="latency-legend"] > span')].map((l) => l.textContent),
  })));
  // No sideways scroll, and the backend table's last column inside its box.
  const layout = () => page.evaluate(() => {
    const d = document.documentElement;
    const wrap = document.querySelector('.table-wrap');
    const p99 = document.querySelector('table.backends th:last-child');
    return {
      scrollWidth: d.scrollWidth,
      clientWidth: d.clientWidth,
      tableFits: !!wrap && !!p99 && p99.getBoundingClientRect().right <= wrap.getBoundingClientRect().right + 0.5,
      tableWidth: wrap ? wrap.scrollWidth : 0,
      tableBox: wrap ? wrap.clientWidth : 0,
    };
  });
  // The total line is the user's choice (off by default: next to a few
  // backends it flattens them), and so is a log scale.
  const legend = () => page.evaluate(() =>
    [...document.querySelectorAll('[data-testid="rps-legend"] > span > span')].map((n) => n.textContent));
  observed.legendBefore = await legend();
  await page.locator('[data-testid="show-total"]').first().check();
  await page.locator('[data-testid="log-scale"]').first().check();
  await page.waitForTimeout(200);
  observed.legendWithTotal = await legend();
  observed.layout1280 = await layout();
  await page.setViewportSize({ width: 1024, height: 768 });
  await page.waitForTimeout(300);
  observed.layout1024 = await layout();
  await page.setViewportSize({ width: 1280, height: 800 });
  await page.waitForTimeout(300);
  if (consoleErrors.length) await fail(`console errors: ${consoleErrors.slice(0, 3).join(' | ')}`);

  // 5. Screenshot: let the line chart grow for a few seconds if time allows,
  // and leave the mouse off the page.
  await page.mouse.move(0, 0);
  const settle = Math.min(SHOT_DELAY_MS, left(10_000) - 3000);
  if (settle > 0) await page.waitForTimeout(settle);
  fs.mkdirSync(path.dirname(path.resolve(shot)), { recursive: true });
  await page.screenshot({ path: shot, fullPage: true, timeout: left(8_000) });
  observed.screenshot = path.resolve(shot);

  clearTimeout(hard);
  report({ ok: true, ...observed, elapsedMs: Date.now() - started });
  await cleanup();
  process.exit(0);
}

if (process.argv[1] === fileURLToPath(import.meta.url)) {
  main().catch((e) => fail(e && e.message ? e.message : String(e)));
}
