// Drives the built playground in headless Chromium and fails on the first
// check that does not hold. ci/test runs it through docs/test/run.
//
//   node playground.mjs URL HARNESS SCENARIOS_DIR SCREENSHOT
//
// URL is the served site's root; HARNESS the vmem-harness binary, whose
// native runs are the reference.
import { execFileSync } from 'node:child_process';
import { mkdtempSync, rmSync, writeFileSync, readFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { chromium } from 'playwright-core';

const [url, harness, scenarios, screenshot] = process.argv.slice(2);
if (!screenshot) {
  console.error('usage: node playground.mjs URL HARNESS SCENARIOS_DIR SCREENSHOT');
  process.exit(2);
}

function check(ok, what) {
  if (!ok) throw new Error('check failed: ' + what);
  console.log('ok: ' + what);
}

function native(file) {
  return execFileSync(harness, ['run', file, '--engine', 'native'], { encoding: 'utf8' });
}

const records = (jsonl) => jsonl.split('\n').filter((l) => l).map((l) => JSON.parse(l));

// The segments the page drew for one arena, as a walk would list them.
async function drawn(page, arena) {
  return page.$$eval(`svg[data-arena="${arena}"] rect[data-type]`, (rects) =>
    rects.map((r) => {
      const seg = { start: r.dataset.start, size: r.dataset.size, type: r.dataset.type };
      if (r.dataset.type === 'span') seg.imported = r.dataset.imported === 'true';
      return seg;
    }));
}

async function runExample(page, name) {
  await page.selectOption('#pg-example', name);
  await page.waitForFunction((n) => document.getElementById('pg-editor').value.length > 0 &&
    location.hash.startsWith('#s='), name);
  await page.click('#pg-run');
  await page.waitForFunction(() => document.getElementById('playground').dataset.state === 'ran');
}

const profile = mkdtempSync(join(tmpdir(), 'vmem-chromium-'));
const consoleErrors = [];
let context;
try {
  context = await chromium.launchPersistentContext(profile, {
    executablePath: '/usr/bin/chromium',
    headless: true,
    viewport: { width: 1280, height: 900 },
    args: ['--headless', '--no-sandbox', '--disable-gpu', '--disable-background-networking',
      '--disable-component-update', '--no-first-run', '--disable-sync'],
  });
  const page = context.pages()[0] || await context.newPage();
  page.on('console', (m) => { if (m.type() === 'error') consoleErrors.push(m.text()); });
  page.on('pageerror', (e) => consoleErrors.push(String(e)));

  await page.goto(url + 'playground.html');
  await page.waitForSelector('#playground[data-ready="true"]', { timeout: 30000 });
  check(await page.$eval('#pg-status', (s) => !s.classList.contains('pg-failed')),
    'the playground loaded the module and an example');

  // 1. The VMM layout: same bytes as native, every walk drawn as walked.
  const vmmFile = join(scenarios, 'vmm-guest-physical.vmem');
  const vmmText = readFileSync(vmmFile, 'utf8');
  const vmmNative = native(vmmFile);
  await runExample(page, 'basic.vmem');
  await runExample(page, 'vmm-guest-physical.vmem');
  check(await page.$eval('#pg-editor', (e) => e.value) === vmmText, 'the editor holds vmm-guest-physical.vmem');
  check(await page.$eval('#pg-output', (e) => e.textContent) === vmmNative,
    'the page\'s JSON Lines are the native run\'s bytes');
  const sourceLines = vmmText.split('\n');
  const walks = records(vmmNative).filter((r) => r.cmd === 'walk');
  check(walks.length === 4, 'the native run walks four arenas');
  for (const walk of walks) {
    const arena = sourceLines[walk.line - 1].trim().split(/\s+/)[1];
    const got = await drawn(page, arena);
    check(JSON.stringify(got) === JSON.stringify(walk.segments),
      `arena ${arena}: the ${got.length} drawn spans and segments match the native walk`);
  }
  const arenas = await page.$$eval('svg[data-arena]', (s) => s.map((e) => e.dataset.arena));
  check(JSON.stringify(arenas) === JSON.stringify(['ram', 'mmio32', 'mmio64', 'irq']),
    'every arena is drawn: ' + arenas.join(', '));
  check(await page.$eval('svg[data-arena="mmio32"] rect[data-start="0xfee00000"]',
    (r) => r.dataset.handle) === 'lapic', 'the LAPIC segment is labelled with its handle');
  check(await page.$eval('svg[data-arena="irq"] rect[data-start="0x5"]',
    (r) => r.dataset.type === 'free' && r.querySelector('title').textContent.includes('size 0x1')),
    'a segment carries its details for hover');
  const statRows = await page.$$eval('#pg-stats tbody tr', (rows) => rows.map((r) => r.dataset.name));
  check(JSON.stringify(statRows) === JSON.stringify(arenas), 'the stats table has a row per arena');
  await page.screenshot({ path: screenshot, fullPage: true });
  console.log('screenshot: ' + screenshot);

  // 2. Step: line k's answer is native line k's, and the drawing follows.
  const stepScript = [
    '# step through',
    'arena a quantum=4K base=0x10000 size=64K',
    'x = alloc a 8K',
    '',
    'y = xalloc a 4K align=32K',
    'free a x',
    'walk a',
  ].join('\n');
  const stepFile = join(profile, 'step.vmem');
  writeFileSync(stepFile, stepScript + '\n');
  const stepNative = records(native(stepFile));
  await page.fill('#pg-editor', stepScript);
  const expectedLines = [2, 3, 5, 6, 7];
  for (const k of expectedLines) {
    await page.click('#pg-step');
    await page.waitForFunction((line) =>
      document.getElementById('pg-current').dataset.line === String(line), k);
    const shown = await page.$eval('#pg-current', (e) => e.textContent.split('\n')[1]);
    const want = stepNative.find((r) => r.line === k);
    check(shown === JSON.stringify(want), `step to line ${k} shows ${shown}`);
  }
  const afterSteps = await drawn(page, 'a');
  check(JSON.stringify(afterSteps) === JSON.stringify(stepNative.find((r) => r.cmd === 'walk').segments),
    'after the last step the drawing matches the native walk');
  await page.click('#pg-step');
  await page.waitForFunction(() => document.getElementById('pg-current').dataset.line === '2');
  check(true, 'a step past the end starts again at the first command');

  // 3. A bad line shows its error, in the gutter and in the list.
  await page.fill('#pg-editor', 'arena a quantum=4K base=0 size=1M\nalloc a 0\nfrobnicate a\nalloc a 4K\n');
  await page.click('#pg-run');
  await page.waitForSelector('#pg-errors li[data-line="3"]');
  const parseError = await page.$eval('#pg-errors li[data-line="3"]', (e) => e.textContent);
  check(parseError.includes('Parse'), 'line 3 is listed with its error: ' + parseError);
  check((await page.$eval('#pg-errors li[data-line="2"]', (e) => e.textContent)).includes('ZeroSize'),
    'line 2 is listed as ZeroSize');
  const mark = await page.$eval('#pg-gutter div[data-line="3"]', (e) => ({ cls: e.className, title: e.title }));
  check(mark.cls.includes('pg-gutter-error') && mark.title.startsWith('Parse'),
    'the gutter marks line 3 with its message');
  check(await page.$$eval('#pg-gutter .pg-gutter-error', (e) => e.length) === 2, 'only the two bad lines are marked');

  // 4. The URL carries the scenario.
  const shared = page.url();
  const reopened = await context.newPage();
  reopened.on('console', (m) => { if (m.type() === 'error') consoleErrors.push(m.text()); });
  reopened.on('pageerror', (e) => consoleErrors.push(String(e)));
  await reopened.goto(shared);
  await reopened.waitForSelector('#playground[data-ready="true"]');
  check((await reopened.$eval('#pg-editor', (e) => e.value)).includes('frobnicate a'),
    'opening the page\'s address restores its scenario');

  check(consoleErrors.length === 0, 'no console errors' +
    (consoleErrors.length ? ': ' + consoleErrors.join(' | ') : ''));
} finally {
  if (context) await context.close();
  rmSync(profile, { recursive: true, force: true });
}
