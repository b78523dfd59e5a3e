// A real OpenID provider for popsync's OAuth2 tests (oidc-provider 9.x).
// Started by tests/support/oidc.rs: PORT, ACCESS_TTL (seconds) and
// REFRESH_TTL from the environment; prints "listening PORT" when ready.
// Users log in on the provider's own development pages (any name, any
// password); the test drives those pages over plain HTTP on loopback.
import Provider from 'oidc-provider';

const port = Number(process.env.PORT);
const issuer = `http://127.0.0.1:${port}`;
const accessTtl = Number(process.env.ACCESS_TTL || 30);
const refreshTtl = Number(process.env.REFRESH_TTL || 3600);

const provider = new Provider(issuer, {
  clients: [
    {
      // What a user registers for popsync: a public native client.
      client_id: 'popsync-test',
      application_type: 'native',
      token_endpoint_auth_method: 'none',
      grant_types: ['authorization_code', 'refresh_token', 'urn:ietf:params:oauth:grant-type:device_code'],
      response_types: ['code'],
      redirect_uris: ['http://127.0.0.1/'],
    },
    {
      // Dovecot's oauth2 passdb introspects tokens as this client.
      client_id: 'dovecot',
      client_secret: 'dovecot-introspection-secret',
      grant_types: [],
      response_types: [],
      redirect_uris: [],
    },
  ],
  scopes: ['openid', 'offline_access', 'pop'],
  features: {
    devInteractions: { enabled: true },
    deviceFlow: { enabled: true },
    introspection: { enabled: true },
    revocation: { enabled: true },
  },
  pkce: { required: () => true },
  // Every grant asked for offline_access gets a refresh token, rotated on use.
  issueRefreshToken: async (ctx, client, code) =>
    client.grantTypeAllowed('refresh_token') && code.scopes.has('offline_access'),
  rotateRefreshToken: true,
  ttl: {
    AccessToken: accessTtl,
    RefreshToken: refreshTtl,
    DeviceCode: 600,
    AuthorizationCode: 60,
    Grant: refreshTtl,
    Interaction: 600,
    Session: 3600,
  },
  cookies: { keys: ['popsync-test-cookie-key'] },
});

// The tests count grants (one refresh for two concurrent syncs) and see
// refusals: one line per event on stdout, never a token.
provider.on('grant.success', (ctx) => {
  console.log(`grant.success ${ctx.oidc.params.grant_type}`);
});
provider.on('grant.error', (ctx, error) => {
  console.log(`grant.error ${ctx.oidc.params?.grant_type} ${error.error}`);
});
provider.on('grant.revoked', () => {
  console.log('grant.revoked');
});

provider.listen(port, '127.0.0.1', () => {
  console.log(`listening ${port}`);
});
