// Drives wpool's dashboard in a real Chromium (Debian's /usr/bin/chromium,
// through playwright-core: no browser download) against a running
// `wpool serve --token ...`, and checks what a person would see.
//
//   node tests/browser/dashboard.mjs --url http://127.0.0.1:PORT --token T \
//     --echo HASH --sleep HASH --exit-with HASH --progress HASH [--screenshots DIR]
//
// Every option may also come from the environment: WPOOL_URL, WPOOL_TOKEN,
// WPOOL_ECHO, WPOOL_SLEEP, WPOOL_EXIT_WITH, WPOOL_PROGRESS, WPOOL_SCREENSHOTS.
// The modules are the test programs `echo` (output = input), `sleep`
// (sleeps for the milliseconds given, an hour for no input), `exit_with`
// (exits with the code given) and `progress` (reports 4 of 4, then sleeps
// for the milliseconds given). Exits 0 when every check passed, 1 with the failed check.

import { mkdirSync } from 'node:fs';
import { join } from 'node:path';
import { chromium } from 'playwright-core';

function options() {
  const opts = {
    url: process.env.WPOOL_URL,
    token: process.env.WPOOL_TOKEN,
    echo: process.env.WPOOL_ECHO,
    sleep: process.env.WPOOL_SLEEP,
    'exit-with': process.env.WPOOL_EXIT_WITH,
    progress: process.env.WPOOL_PROGRESS,
    screenshots: process.env.WPOOL_SCREENSHOTS || 'target/dashboard-screenshots',
    chromium: process.env.WPOOL_CHROMIUM || '/usr/bin/chromium',
  };
  const args = process.argv.slice(2);
  for (let i = 0; i < args.length; i++) {
    const m = /^--([a-z-]+)(?:=(.*))?$/.exec(args[i]);
    if (!m || !(m[1] in opts)) throw new Error(`unknown argument ${args[i]}`);
    opts[m[1]] = m[2] ?? args[++i];
  }
  for (const required of ['url', 'token', 'echo', 'sleep', 'exit-with', 'progress']) {
    if (!opts[required]) throw new Error(`--${required} is required`);
  }
  opts.url = opts.url.replace(/\/$/, '');
  return opts;
}

const opts = options();
const WAIT = 30_000;
mkdirSync(opts.screenshots, { recursive: true });

// The whole run is bounded: a hung browser fails the test, not CI's clock.
const deadline = setTimeout(() => {
  console.error('dashboard test: FAILED: took more than 3 minutes');
  process.exit(1);
}, 180_000);

let step = 'start';
const passed = [];
function check(condition, what) {
  if (!condition) throw new Error(`check failed: ${what}`);
  passed.push(what);
  console.log(`  ok: ${what}`);
}

/** The API, from the test's side (to submit work and read what the page did). */
async function api(method, path, body) {
  const headers = { Authorization: `Bearer ${opts.token}` };
  if (body !== undefined) headers['Content-Type'] = 'application/json';
  const res = await fetch(opts.url + path, {
    method, headers, body: body === undefined ? undefined : JSON.stringify(body),
  });
  const text = await res.text();
  let json = null;
  try { json = JSON.parse(text); } catch { /* not JSON */ }
  return { status: res.status, body: json, text };
}

async function submit(module, input, labels = {}) {
  const answer = await api('POST', '/v1/tasks', { module, input_base64: Buffer.from(input).toString('base64'), labels });
  if (answer.status !== 201) throw new Error(`submit: ${answer.status} ${answer.text}`);
  return answer.body.task.id;
}

async function waitApiState(id, state) {
  const end = Date.now() + WAIT;
  for (;;) {
    const { body } = await api('GET', `/v1/tasks/${id}`);
    if (body && body.task && body.task.state === state) return body;
    if (Date.now() > end) throw new Error(`task ${id} never ${state} (last: ${JSON.stringify(body)})`);
    await new Promise((r) => setTimeout(r, 50));
  }
}

let shot = 0;
async function screenshot(page, name) {
  shot++;
  const path = join(opts.screenshots, `${String(shot).padStart(2, '0')}-${name}.png`);
  await page.screenshot({ path, fullPage: false });
  console.log(`  screenshot: ${path}`);
}

/** Console errors and uncaught exceptions of a page; `allowed` filters the
 *  ones a step expects (the 401s of the token steps). */
function watchErrors(page) {
  const errors = [];
  page.on('console', (msg) => {
    if (msg.type() === 'error') errors.push(`console: ${msg.text()} (${JSON.stringify(msg.location())})`);
  });
  page.on('pageerror', (err) => errors.push(`uncaught: ${err.message}`));
  return errors;
}

const browser = await chromium.launch({ executablePath: opts.chromium, args: ['--no-sandbox'] });
let failed = null;
try {
  // -------------------------------------------------------------- with the token stored
  const context = await browser.newContext({ viewport: { width: 1280, height: 800 } });
  await context.addInitScript((token) => {
    if (!localStorage.getItem('wpool.token')) localStorage.setItem('wpool.token', token);
  }, opts.token);
  const page = await context.newPage();
  page.setDefaultTimeout(WAIT);
  const errors = watchErrors(page);

  step = 'the modules are named';
  for (const name of ['echo', 'sleep', 'exit-with', 'progress']) {
    const named = await api('PUT', `/v1/modules/${opts[name]}/settings`, { name: name.replace('-', '_') });
    if (named.status !== 200) throw new Error(`module settings: ${named.status} ${named.text}`);
  }

  step = 'the page loads';
  const response = await page.goto(`${opts.url}/`);
  check(response.status() === 200, 'GET / answers 200');
  check(/default-src 'none'/.test(response.headers()['content-security-policy'] || ''), 'the page carries a Content-Security-Policy');
  await page.waitForFunction(() => /^\d+$/.test(document.getElementById('w-total').textContent));
  await page.locator('#live[data-state="live"]').waitFor();
  check(await page.locator('#token-panel').isHidden(), 'no token form with a stored token');
  check((await page.locator('#counts .count').count()) === 7, 'a count per state');
  await page.locator('#modules tbody tr').first().waitFor();
  check((await page.locator('#modules tbody tr').count()) >= 3, 'the modules are listed');
  check(errors.length === 0, `no console error on load (${errors.join('; ')})`);
  await screenshot(page, 'loaded');

  step = 'a submitted task appears and succeeds';
  const echoId = await submit(opts.echo, '{"hello": "dashboard"}', { suite: 'browser' });
  const echoRow = page.locator(`#tasks tr[data-id="${echoId}"]`);
  await echoRow.waitFor();
  await page.locator(`#tasks tr[data-id="${echoId}"][data-state="succeeded"]`).waitFor();
  check(true, 'a task submitted through the API appears in the list and turns succeeded');
  check((await echoRow.locator('.label').innerText()) === 'suite=browser', 'the row shows its labels');
  check((await echoRow.locator('td').nth(3).innerText()) === 'echo', "the row names the task's module");
  await page.waitForFunction(() => Number(document.querySelector('#counts .count[data-state="succeeded"] .n').textContent) >= 1);
  check(true, 'the succeeded count went up');
  await screenshot(page, 'succeeded');

  await echoRow.click();
  await page.locator('#t-state[data-state="succeeded"]').waitFor();
  await page.waitForFunction(() => document.getElementById('t-output').textContent.includes('"hello": "dashboard"'));
  check(true, 'the task page shows the output');
  await page.waitForFunction(() => document.getElementById('t-input').textContent.includes('"hello": "dashboard"'));
  check(true, 'the task page shows the input');
  await page.locator('#t-history tbody tr').first().waitFor();
  check((await page.locator('#t-history tbody tr').count()) === 1, 'one attempt is listed');
  check(await page.locator('#t-cancel').isHidden(), 'no cancel button on a final task');
  await screenshot(page, 'task-succeeded');

  step = 'binary input and output are shown in hex';
  const binaryId = await submit(opts.echo, Buffer.from(Array.from({ length: 256 }, (_, i) => i)));
  await waitApiState(binaryId, 'succeeded');
  await page.goto(`${opts.url}/#/tasks/${binaryId}`);
  for (const which of ['input', 'output']) {
    await page.waitForFunction((w) => document.getElementById(`t-${w}-note`).textContent.includes('binary'), which);
    check((await page.locator(`#t-${which}`).innerText()).startsWith('000000  00 01 02 03'), `binary ${which} is shown as a hex dump`);
  }

  step = 'a running task is cancelled from the page';
  await page.goto(`${opts.url}/#/`);
  const sleepId = await submit(opts.sleep, '', { suite: 'browser' });
  await page.locator(`#tasks tr[data-id="${sleepId}"][data-state="running"]`).waitFor();
  check(true, 'a sleeping task shows running in the list');
  await page.locator(`#tasks tr[data-id="${sleepId}"]`).click();
  await page.locator('#t-state[data-state="running"]').waitFor();
  await page.locator('#t-cancel').click();
  await page.locator('#confirm[open]').waitFor();
  check((await page.locator('#confirm-text').innerText()).includes('killed'), 'cancelling a running task asks first, saying it is killed');
  await screenshot(page, 'cancel-confirm');
  await page.locator('#confirm-yes').click();
  await page.locator('#t-state[data-state="cancelled"]').waitFor();
  check(true, 'the task page shows cancelled');
  check((await api('GET', `/v1/tasks/${sleepId}`)).body.task.state === 'cancelled', 'the server has the task cancelled');
  await screenshot(page, 'cancelled');

  step = 'a failed task is retried from the page';
  const failId = await submit(opts['exit-with'], '3', { suite: 'browser' });
  await waitApiState(failId, 'failed');
  await page.goto(`${opts.url}/#/tasks/${failId}`);
  await page.locator('#t-state[data-state="failed"]').waitFor();
  await page.locator('#t-history tbody tr').first().waitFor();
  check((await page.locator('#t-history tbody tr').first().innerText()).includes('exit'), 'the attempt shows its exit outcome');
  check((await page.locator('#t-log').innerText()).includes('about to exit with 3'), 'the log tail is shown');
  await screenshot(page, 'failed');
  // What an operator would fix before retrying: exit code 3 means success.
  const fixed = await api('PUT', `/v1/modules/${opts['exit-with']}/settings`, { name: 'exit_with', success_codes: [3] });
  if (fixed.status !== 200) throw new Error(`module settings: ${fixed.status} ${fixed.text}`);
  await page.locator('#t-retry').click();
  await page.waitForFunction((old) => /^#\/tasks\/\w+$/.test(location.hash) && !location.hash.endsWith(old), failId);
  const retryId = (await page.evaluate(() => location.hash)).split('/').pop();
  check(retryId !== failId, 'the retry is a new task');
  await page.locator('#t-state[data-state="succeeded"]').waitFor();
  check(true, 'the retry succeeds');
  check(await page.locator('#t-retried').isVisible(), 'the retry names the task it copies');
  await screenshot(page, 'retried');

  step = 'a final task is deleted from the page';
  await page.goto(`${opts.url}/#/tasks/${failId}`);
  await page.locator('#t-state[data-state="failed"]').waitFor();
  await page.locator('#t-delete').click();
  await page.locator('#confirm[open]').waitFor();
  await page.locator('#confirm-yes').click();
  await page.waitForFunction(() => location.hash === '#/');
  check((await api('GET', `/v1/tasks/${failId}`)).status === 404, 'the deleted task is gone from the server');
  await page.locator(`#tasks tr[data-id="${retryId}"]`).waitFor();
  check((await page.locator(`#tasks tr[data-id="${failId}"]`).count()) === 0, 'and from the list');

  step = 'the list is filtered by state and label';
  await page.locator('#f-label').fill('suite=nowhere');
  await page.locator('#filters button[type="submit"]').click();
  await page.locator('#tasks-empty').waitFor();
  check((await page.locator('#tasks tbody tr').count()) === 0, 'a label no task has lists nothing');
  await page.locator('#f-label').fill('suite=browser');
  await page.locator('#f-state').selectOption('cancelled');
  await page.locator('#filters button[type="submit"]').click();
  await page.waitForFunction(() => {
    const rows = [...document.querySelectorAll('#tasks tbody tr')];
    return rows.length > 0 && rows.every((r) => r.dataset.state === 'cancelled');
  });
  check(true, 'state and label filters list only the matching tasks');
  await page.locator('#f-clear').click();
  await page.locator(`#tasks tr[data-id="${echoId}"]`).waitFor();

  step = 'the queue is paused and resumed; live progress';
  await page.locator('#pause').waitFor();
  await page.locator('#pause').click();
  await page.locator('#paused-note').waitFor();
  check((await api('GET', '/v1/stats')).body.paused === true, 'pausing from the page pauses the queue');
  const progressId = await submit(opts.progress, '3000', { suite: 'browser' });
  await page.goto(`${opts.url}/#/tasks/${progressId}`);
  await page.locator('#t-state[data-state="queued"]').waitFor();
  check(true, 'a task submitted while paused stays queued');
  await screenshot(page, 'paused');
  await page.locator('#pause:has-text("Resume")').click();
  await page.locator('#paused-note').waitFor({ state: 'hidden' });
  check((await api('GET', '/v1/stats')).body.paused === false, 'resuming from the page resumes it');
  await page.locator('#t-state[data-state="running"]').waitFor();
  await page.waitForFunction(() => !document.getElementById('t-progress-row').hidden
    && document.getElementById('t-progress-text').textContent.startsWith('4 / 4'));
  check(true, 'a running task shows its progress, live');
  await screenshot(page, 'progress');
  await page.locator('#t-state[data-state="succeeded"]').waitFor();
  check(await page.locator('#t-progress-row').isHidden(), 'the progress bar goes once the task is final');
  await page.goto(`${opts.url}/#/`);

  step = 'the workers are set';
  const workers = (await api('GET', '/v1/stats')).body.workers;
  await page.locator('#workers-input').fill('1');
  await page.locator('#workers-form button').click();
  await page.waitForFunction(() => document.getElementById('w-total').textContent === '1');
  check((await api('GET', '/v1/stats')).body.workers === 1, 'the worker count is set from the page');
  await page.locator('#workers-input').fill(String(workers));
  await page.locator('#workers-form button').click();
  await page.waitForFunction((n) => document.getElementById('w-total').textContent === String(n), workers);

  step = 'an action the server refuses shows its message';
  await page.locator('#workers-input').fill('100000');
  await page.locator('#workers-form button').click();
  await page.locator('#banner').waitFor();
  const refusal = await page.locator('#banner-text').innerText();
  check(refusal.startsWith('Set workers:') && refusal.length > 'Set workers: '.length + 10, `the server's error message is shown (${refusal})`);
  await page.locator('#banner-close').click();
  await page.locator('#workers-input').press('Escape');
  check((await page.locator('#workers-input').inputValue()) === String(workers), 'Escape gives the field back the live count');
  // The 4xx answer above is the one console error this step expects.
  errors.splice(0, errors.length, ...errors.filter((e) => !/status of 4\d\d/.test(e)));

  step = 'the charts are drawn';
  await page.waitForTimeout(4500);
  const drawn = await page.evaluate(() => {
    const c = document.getElementById('chart-queue');
    const data = c.getContext('2d').getImageData(0, 0, c.width, c.height).data;
    let painted = 0;
    for (let i = 3; i < data.length; i += 4) if (data[i] > 0) painted++;
    return painted;
  });
  check(drawn > 100, 'the queue-depth chart is drawn');
  await screenshot(page, 'overview');

  step = 'a phone-width screen';
  await page.setViewportSize({ width: 390, height: 844 });
  await page.waitForTimeout(300);
  const widths = await page.evaluate(() => {
    const wrap = document.querySelector('#tasks').parentElement;
    return { doc: document.documentElement.scrollWidth, wrap: wrap.clientWidth, table: wrap.scrollWidth };
  });
  check(widths.doc <= 392, `the page does not scroll sideways at 390 px (${widths.doc})`);
  check(widths.table > widths.wrap, 'the task table scrolls within its box');
  await screenshot(page, 'phone');
  await page.setViewportSize({ width: 1280, height: 800 });

  step = 'dark mode';
  await page.emulateMedia({ colorScheme: 'dark' });
  await page.waitForTimeout(300);
  const background = await page.evaluate(() => getComputedStyle(document.body).backgroundColor);
  const [r, g, b] = background.match(/\d+/g).map(Number);
  check(r + g + b < 150, `dark mode has a dark background (${background})`);
  await screenshot(page, 'dark');
  await page.emulateMedia({ colorScheme: 'light' });

  check(errors.length === 0, `no console error in any step (${errors.join('; ')})`);
  await context.close();

  // -------------------------------------------------------------- the token, asked for
  step = 'the page asks for the token';
  const fresh = await browser.newContext({ viewport: { width: 1280, height: 800 } });
  const anon = await fresh.newPage();
  anon.setDefaultTimeout(WAIT);
  const anonErrors = watchErrors(anon);
  await anon.goto(`${opts.url}/`);
  await anon.locator('#token-panel').waitFor();
  check((await anon.locator('#token-why').innerText()).includes('needs a token'), 'without a token the page asks for one');
  await anon.locator('#token-input').fill('not-the-token');
  await anon.locator('#token-form button').click();
  await anon.waitForFunction(() => document.getElementById('token-why').textContent.includes('refused'));
  const refused = await anon.locator('#token-why').innerText();
  check(/server refused the token/.test(refused), `a wrong token is said to be refused (${refused})`);
  check(await anon.locator('#token-panel').isVisible(), 'and the form stays for another try');
  await screenshot(anon, 'token-refused');
  await anon.locator('#token-input').fill(opts.token);
  await anon.locator('#token-form button').click();
  await anon.locator('#token-panel').waitFor({ state: 'hidden' });
  await anon.waitForFunction(() => /^\d+$/.test(document.getElementById('w-total').textContent));
  await anon.locator('#live[data-state="live"]').waitFor();
  check(await anon.evaluate((t) => localStorage.getItem('wpool.token') === t, opts.token), 'the right token is kept in localStorage');
  await anon.reload();
  await anon.waitForFunction(() => /^\d+$/.test(document.getElementById('w-total').textContent));
  check(await anon.locator('#token-panel').isHidden(), 'and not asked for again after a reload');
  const unexpected = anonErrors.filter((e) => !/status of 401/.test(e));
  check(unexpected.length === 0, `no console error but the expected 401s (${unexpected.join('; ')})`);
  await fresh.close();
} catch (e) {
  failed = e;
} finally {
  await browser.close();
  clearTimeout(deadline);
}

if (failed) {
  console.error(`dashboard test: FAILED at step '${step}': ${failed.message}`);
  process.exit(1);
}
console.log(`dashboard test: ${passed.length} passed, 0 failed`);
