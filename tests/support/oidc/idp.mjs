// A real OpenID provider for Portcullis's login tests: panva's certified `oidc-provider`
// (pinned in package-lock.json), on 127.0.0.1 with a port the OS picks.
//
//   node tests/support/oidc/idp.mjs      prints "READY http://127.0.0.1:PORT" when it serves
//
// The test harness drives it like a browser: the provider's own authorization, token,
// end-session and back-channel logout code runs unchanged. Only the interaction pages
// (login form, consent) are ours, as every deployment's are: a plain HTML login form
// (users below, password "pw") and consent granted for the requested scopes.
// Clients are registered after start (the gateway's port is known only then) through
// POST /__test/clients, which stores client metadata through the provider's own adapter
// and validates it with the provider's own client schema.
//
// Environment: IDP_ID_TOKEN_TTL (seconds, default 3600; access tokens too).
import http from 'node:http';
import crypto from 'node:crypto';
import { Provider } from 'oidc-provider';

const accounts = {
  alice: { email: 'alice@example.com', email_verified: true, name: 'Alice Example', groups: ['sales', 'staff'] },
  bob: { email: 'bob@example.com', email_verified: true, name: 'Bob Example', groups: ['staff'] },
  // Member of so many groups that the claims do not fit a 4 KiB cookie.
  carol: {
    email: 'carol@example.com',
    email_verified: true,
    name: 'Carol Example',
    groups: Array.from({ length: 200 }, (_, i) => `department-${i}-distribution-list`),
  },
};
const PASSWORD = 'pw';

const server = http.createServer();
await new Promise((resolve) => server.listen(0, '127.0.0.1', resolve));
const issuer = `http://127.0.0.1:${server.address().port}`;

const { privateKey } = crypto.generateKeyPairSync('rsa', { modulusLength: 2048 });
const signingKey = { ...privateKey.export({ format: 'jwk' }), kid: 'idp-1', use: 'sig', alg: 'RS256' };
const ttl = Number(process.env.IDP_ID_TOKEN_TTL || 3600);

const provider = new Provider(issuer, {
  clients: [],
  jwks: { keys: [signingKey] },
  cookies: { keys: [crypto.randomBytes(32).toString('base64url')] },
  findAccount: async (ctx, sub) => accounts[sub] && {
    accountId: sub,
    claims: async () => ({ sub, ...accounts[sub] }),
  },
  claims: {
    openid: ['sub'],
    email: ['email', 'email_verified'],
    profile: ['name'],
    groups: ['groups'],
  },
  // The gateway takes the identity from the ID token (it does not call userinfo).
  conformIdTokenClaims: false,
  // Scopes a service client may ask for with client_credentials (the others come from
  // `claims`).
  scopes: ['openid', 'offline_access', 'crm.read', 'crm.write'],
  features: {
    devInteractions: { enabled: false },
    backchannelLogout: { enabled: true },
    rpInitiatedLogout: { enabled: true },
    // Opaque access tokens, for the gateway's RFC 7662 introspection: services get them
    // with client_credentials, the gateway asks /token/introspection, revocation ends them.
    clientCredentials: { enabled: true },
    introspection: { enabled: true, allowedPolicy: async () => true },
    revocation: { enabled: true },
  },
  interactions: { url: (ctx, interaction) => `/interaction/${interaction.uid}` },
  pkce: { required: () => true },
  responseTypes: ['code'],
  issueRefreshToken: async (ctx, client) => client.grantTypeAllowed('refresh_token'),
  ttl: {
    IdToken: ttl,
    AccessToken: ttl,
    AuthorizationCode: 60,
    RefreshToken: 86400,
    Grant: 86400,
    Session: 86400,
    Interaction: 600,
  },
  // The provider refuses outgoing requests to special-use addresses (SSRF protection);
  // here every party is on loopback, so back-channel logout must be allowed to reach it.
  fetch: (url, options) => {
    const { dispatcher, ...rest } = options;
    return globalThis.fetch(url, rest);
  },
  renderError: async (ctx, out) => {
    ctx.type = 'json';
    ctx.body = out;
  },
});
provider.on('backchannel.error', (ctx, err, client) => {
  console.error(`backchannel logout to ${client.clientId} failed: ${err.message} ${err.cause ?? ""}`);
});
provider.on('server_error', (ctx, err) => console.error('server_error', err));
// Successful token-endpoint grants by type, for the tests (GET /__test/stats).
const stats = {};
provider.on('grant.success', (ctx) => {
  const type = ctx.oidc.params.grant_type;
  stats[type] = (stats[type] || 0) + 1;
});

const escape = (s) => String(s).replace(/[&<>"']/g, (c) => `&#${c.charCodeAt(0)};`);

function readBody(req) {
  return new Promise((resolve, reject) => {
    let data = '';
    req.setEncoding('utf8');
    req.on('data', (chunk) => { data += chunk; if (data.length > 1 << 20) req.destroy(); });
    req.on('end', () => resolve(data));
    req.on('error', reject);
  });
}

function send(res, status, type, body) {
  res.writeHead(status, { 'content-type': type, 'cache-control': 'no-store' });
  res.end(body);
}

function loginForm(uid, error) {
  return `<!doctype html><title>Sign in</title>
<form method="post" action="/interaction/${escape(uid)}/login">
${error ? `<p class="error">${escape(error)}</p>` : ''}
<input name="login" autofocus><input name="password" type="password"><button>Sign in</button>
</form>`;
}

async function finish(req, res, details, accountId) {
  const grant = details.grantId
    ? await provider.Grant.find(details.grantId)
    : new provider.Grant({ accountId, clientId: details.params.client_id });
  grant.addOIDCScope(details.params.scope);
  const missing = details.prompt.details?.missingOIDCClaims;
  if (missing) grant.addOIDCClaims(missing);
  const grantId = await grant.save();
  const result = { consent: { grantId } };
  if (details.prompt.name === 'login') result.login = { accountId };
  await provider.interactionFinished(req, res, result, { mergeWithLastSubmission: false });
}

async function interaction(req, res, uid, action) {
  const details = await provider.interactionDetails(req, res);
  if (details.uid !== uid) return send(res, 400, 'text/plain', 'interaction mismatch');
  if (req.method === 'GET' && !action) {
    if (details.prompt.name === 'login') return send(res, 200, 'text/html', loginForm(uid));
    // Already signed in at the IdP: consent for the requested scopes, no page.
    return finish(req, res, details, details.session.accountId);
  }
  if (req.method === 'POST' && action === 'login') {
    const form = new URLSearchParams(await readBody(req));
    const login = form.get('login');
    if (!accounts[login] || form.get('password') !== PASSWORD) {
      return send(res, 200, 'text/html', loginForm(uid, 'Invalid login or password'));
    }
    return finish(req, res, details, login);
  }
  return send(res, 404, 'text/plain', 'not found');
}

async function registerClient(req, res) {
  const metadata = JSON.parse(await readBody(req));
  await provider.Client.adapter.upsert(metadata.client_id, metadata);
  try {
    await provider.Client.find(metadata.client_id);
  } catch (err) {
    await provider.Client.adapter.destroy(metadata.client_id);
    return send(res, 400, 'application/json', JSON.stringify({ error: err.message, detail: err.error_description }));
  }
  return send(res, 201, 'application/json', JSON.stringify({ client_id: metadata.client_id }));
}

const callback = provider.callback();
server.on('request', async (req, res) => {
  try {
    const url = new URL(req.url, issuer);
    const match = url.pathname.match(/^\/interaction\/([^/]+)(?:\/(login))?$/);
    if (match) return await interaction(req, res, match[1], match[2]);
    if (url.pathname === '/__test/clients' && req.method === 'POST') return await registerClient(req, res);
    if (url.pathname === '/__test/stats') return send(res, 200, 'application/json', JSON.stringify(stats));
    return callback(req, res);
  } catch (err) {
    console.error(err);
    if (!res.headersSent) send(res, 500, 'text/plain', String(err.message));
  }
});

process.stdout.write(`READY ${issuer}\n`);
