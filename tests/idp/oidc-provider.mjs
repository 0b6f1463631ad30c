// oidc-provider on 127.0.0.1:<port> (argv[2]) for tests/tests/oidc.rs:
// client_credentials access tokens (opaque: no resource indicator asks for
// a JWT), introspection for the confidential client `xgate`, revocation.
// argv[3], if given, is the issuer it names (a provider behind another
// discovery document). Prints "ready" once listening.
import Provider from 'oidc-provider';

const port = Number(process.argv[2]);
const provider = new Provider(process.argv[3] ?? `http://127.0.0.1:${port}`, {
  clients: [
    {
      // The gateway: calls introspection with client_secret_basic.
      client_id: 'xgate',
      client_secret: 'xgate-introspection-secret',
      grant_types: [],
      response_types: [],
      redirect_uris: [],
      token_endpoint_auth_method: 'client_secret_basic',
    },
    {
      // A service calling the API with its own token.
      client_id: 'billing',
      client_secret: 'billing-client-secret',
      grant_types: ['client_credentials'],
      response_types: [],
      redirect_uris: [],
      scope: 'orders:read',
    },
  ],
  scopes: ['orders:read'],
  ttl: { ClientCredentials: 600 },
  features: {
    clientCredentials: { enabled: true },
    introspection: {
      enabled: true,
      // Confidential clients may introspect any token (the default, said
      // explicitly so the provider does not warn about it).
      allowedPolicy: async (ctx, client, token) =>
        client.clientAuthMethod !== 'none' || token.clientId === ctx.oidc.client.clientId,
    },
    revocation: { enabled: true },
    devInteractions: { enabled: false },
  },
});
provider.listen(port, '127.0.0.1', () => console.log('ready'));
