// The cross-site request test in a real browser (Debian's headless Chromium, driven with
// playwright-core): log in through the test OpenID provider, then send state-changing
// requests to a session route from the gateway's own origin and from a page of another
// origin, the way an attacker's page would.
//
//   node csrf.mjs GATEWAY EVIL      e.g. http://127.0.0.1:41000 http://127.0.0.1:41001
//
// GATEWAY/app/... is a session route; EVIL/ serves a page that, loaded, runs
// fetch(GATEWAY/app/evil-fetch, {method: "POST", credentials: "include"}) and then
// submits a form POST to GATEWAY/app/evil-form. Prints one JSON object with what the
// browser saw.
import { chromium } from 'playwright-core';

const [gateway, evil] = process.argv.slice(2);
const executablePath = process.env.CHROMIUM || '/usr/bin/chromium';
const browser = await chromium.launch({
  executablePath,
  args: [
    '--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run',
    '--disable-background-networking', '--disable-component-update', '--disable-sync',
  ],
});
const result = {};
try {
  const context = await browser.newContext();
  const page = await context.newPage();

  // Log in: the session route sends the browser to the IdP's login form.
  await page.goto(`${gateway}/app/home`);
  await page.fill('input[name=login]', 'alice');
  await page.fill('input[name=password]', 'pw');
  await Promise.all([page.waitForURL(`${gateway}/app/home`), page.click('button')]);
  result.login = JSON.parse(await page.textContent('body')).path;
  result.cookies = (await context.cookies(gateway)).map((c) => `${c.name}:${c.sameSite}`);

  // From the gateway's own origin: a fetch and a form.
  result.sameOriginFetch = await page.evaluate(async () => {
    const response = await fetch('/app/own-fetch', { method: 'POST', credentials: 'include', body: 'x=1' });
    return response.status;
  });
  await Promise.all([
    page.waitForURL(`${gateway}/app/own-form`),
    page.evaluate(() => {
      const form = document.createElement('form');
      form.method = 'POST';
      form.action = '/app/own-form';
      const input = document.createElement('input');
      input.name = 'amount';
      input.value = '100';
      form.appendChild(input);
      document.body.appendChild(form);
      form.submit();
    }),
  ]);
  result.sameOriginForm = JSON.parse(await page.textContent('body')).path;

  // From another origin: its page submits a form and sends a fetch by itself.
  const evilPage = await context.newPage();
  await Promise.all([
    evilPage.waitForURL(`${gateway}/app/evil-form`),
    evilPage.goto(`${evil}/`),
  ]);
  result.crossOriginForm = JSON.parse(await evilPage.textContent('body'));
} catch (err) {
  result.error = String(err.stack || err);
} finally {
  await browser.close();
}
process.stdout.write(`${JSON.stringify(result)}\n`);
